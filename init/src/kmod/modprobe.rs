//! The kernel's modprobe helper. When the kernel needs a module nobody
//! loaded (a filesystem at mount(2), a netfilter table, a link type, a
//! crypto algorithm) it runs `/proc/sys/kernel/modprobe -q -- NAME` and
//! waits. osk-init installs its own binary there under the name `modprobe`,
//! so modules load on demand with no kmod in the image: NAME is a module
//! name or an alias (`fs-ext4`, `rtnl-link-veth`), resolved from the
//! modules' `.modinfo`.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::kmod::modalias::modules_for;
use crate::kmod::modules::{self, Index, Kmod};
use crate::paths;
use crate::sys::RealKmod;

/// The helper's path: a link to the init binary named `modprobe`.
const KERNEL_KNOB: &str = "/proc/sys/kernel/modprobe";

/// Links [`paths::MODPROBE_LINK`] to `init_exe` and tells the kernel to run it.
pub fn install(init_exe: &Path) -> io::Result<()> {
    crate::sys::replace_symlink(init_exe, Path::new(paths::MODPROBE_LINK))?;
    std::fs::write(KERNEL_KNOB, format!("{}\n", paths::MODPROBE_LINK))
}

/// A command line the helper does not understand.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown option {0} (osk's modprobe knows -q -v -a -b)")]
    UnknownOption(String),
    #[error("usage: modprobe [-q] [-v] [-a] [--] NAME [PARAM=VALUE...]")]
    NoName,
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub quiet: bool,
    pub verbose: bool,
    /// Module names or aliases.
    pub names: Vec<String>,
    /// Parameters for the (single) named module.
    pub params: Vec<String>,
}

/// `modprobe [-q] [-v] [-a] [--] NAME [PARAM=VALUE...]`; with `-a` every
/// argument is a name. The kernel calls `modprobe -q -- NAME`.
pub fn parse_args(args: &[String]) -> Result<Args, ArgsError> {
    let (mut quiet, mut verbose, mut all) = (false, false, false);
    let mut rest = Vec::new();
    let mut options_done = false;
    for a in args {
        if options_done || !a.starts_with('-') || a == "-" {
            rest.push(a.clone());
            continue;
        }
        match a.as_str() {
            "--" => options_done = true,
            "-q" | "--quiet" => quiet = true,
            "-v" | "--verbose" => verbose = true,
            "-a" | "--all" => all = true,
            "-b" | "--use-blacklist" => {}
            _ if a.len() > 2 && !a.starts_with("--") => {
                for c in a[1..].chars() {
                    match c {
                        'q' => quiet = true,
                        'v' => verbose = true,
                        'a' => all = true,
                        'b' => {}
                        _ => return Err(ArgsError::UnknownOption(format!("-{c}"))),
                    }
                }
            }
            _ => return Err(ArgsError::UnknownOption(a.clone())),
        }
    }
    if rest.is_empty() {
        return Err(ArgsError::NoName);
    }
    let (names, params) = if all {
        (rest, Vec::new())
    } else {
        let params = rest.split_off(1);
        (rest, params)
    };
    Ok(Args {
        quiet,
        verbose,
        names,
        params,
    })
}

/// Module names built into the kernel, from `modules.builtin`.
pub fn builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(modules::normalize)
        .collect()
}

/// What NAME means: itself if a module has that name, else every module
/// with a matching alias. Empty when nothing serves it.
pub fn resolve(index: &Index, name: &str) -> Vec<String> {
    let n = modules::normalize(name);
    if index.contains_key(&n) {
        return vec![n];
    }
    modules_for(index, name)
}

/// Resolves and loads every name; the named modules get `params`. Returns
/// the messages for the log and whether everything is now loaded.
pub fn probe(
    kmod: &dyn Kmod,
    index: &Index,
    builtin: &BTreeSet<String>,
    args: &Args,
) -> (Vec<String>, bool) {
    let mut msgs = Vec::new();
    let mut ok = true;
    let params = args.params.join(" ");
    for name in &args.names {
        if builtin.contains(&modules::normalize(name)) {
            continue;
        }
        let targets = resolve(index, name);
        if targets.is_empty() {
            if !args.quiet {
                msgs.push(format!("module {name} not found"));
            }
            ok = false;
            continue;
        }
        let (order, _) = modules::load_order(index, Some(&targets));
        for m in order {
            if kmod.is_loaded(&m) {
                continue;
            }
            let p = if targets.contains(&m) {
                params.as_str()
            } else {
                ""
            };
            match kmod.finit_module(&index[&m].path, p) {
                Ok(()) => {
                    if args.verbose {
                        msgs.push(format!("insmod {}", index[&m].path.display()));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    msgs.push(format!("loading {m} for {name}: {e}"));
                    ok = false;
                }
            }
        }
    }
    (msgs, ok)
}

/// `/lib/modules/$(uname -r)`.
pub fn release_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

/// The helper's entry point (`argv[0]` is `modprobe`); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("modprobe: {e}");
            return 1;
        }
    };
    let dir = release_dir();
    let index = modules::load_index(&dir, Path::new(paths::MODULES_INDEX));
    let builtin =
        builtin(&std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default());
    let (msgs, ok) = probe(&RealKmod, &index, &builtin, &args);
    // The kernel's requests have no terminal: failures go to the kernel log.
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .ok();
    for m in msgs {
        eprintln!("modprobe: {m}");
        if let Some(k) = kmsg.as_mut() {
            let _ = k.write_all(format!("<4>osk modprobe: {m}\n").as_bytes());
        }
    }
    if ok {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmod::modules::tests::FakeKmod;
    use crate::kmod::modules::Module;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_what_the_kernel_and_people_pass() {
        let a = parse_args(&s(&["-q", "--", "fs-ext4"])).unwrap();
        assert!(a.quiet && !a.verbose);
        assert_eq!(a.names, ["fs-ext4"]);
        let a = parse_args(&s(&["-v", "loop", "max_loop=8"])).unwrap();
        assert_eq!((a.names, a.params), (s(&["loop"]), s(&["max_loop=8"])));
        let a = parse_args(&s(&["-qa", "veth", "bridge"])).unwrap();
        assert_eq!(a.names, ["veth", "bridge"]);
        let a = parse_args(&s(&["--", "-odd"])).unwrap();
        assert_eq!(a.names, ["-odd"]);
        assert!(parse_args(&s(&["-r", "x"]))
            .unwrap_err()
            .to_string()
            .contains("-r"));
        assert!(parse_args(&s(&["-q"]))
            .unwrap_err()
            .to_string()
            .contains("usage"));
    }

    fn index() -> Index {
        let mut i = Index::new();
        for (name, aliases, deps) in [
            ("ext4", &["fs-ext4", "fs-ext3"][..], &["jbd2"][..]),
            ("jbd2", &[][..], &[][..]),
            ("veth", &["rtnl-link-veth"][..], &[][..]),
        ] {
            i.insert(
                name.into(),
                Module {
                    path: format!("/m/{name}.ko").into(),
                    depends: s(deps),
                    aliases: s(aliases),
                    ..Default::default()
                },
            );
        }
        i
    }

    #[test]
    fn an_alias_loads_its_module_after_its_dependencies() {
        let kmod = FakeKmod::default();
        let args = parse_args(&s(&["-q", "--", "fs-ext4"])).unwrap();
        let (msgs, ok) = probe(&kmod, &index(), &BTreeSet::new(), &args);
        assert!(ok, "{msgs:?}");
        assert_eq!(kmod.calls(), ["insmod jbd2.ko", "insmod ext4.ko"]);
        // Asked again: nothing to do.
        let (_, ok) = probe(&kmod, &index(), &BTreeSet::new(), &args);
        assert!(ok);
        assert_eq!(kmod.calls().len(), 2);
    }

    #[test]
    fn parameters_go_to_the_named_module_only() {
        let kmod = FakeKmod::default();
        let args = parse_args(&s(&["ext4", "a=1", "b=2"])).unwrap();
        let (_, ok) = probe(&kmod, &index(), &BTreeSet::new(), &args);
        assert!(ok);
        assert_eq!(kmod.calls(), ["insmod jbd2.ko", "insmod ext4.ko a=1 b=2"]);
    }

    #[test]
    fn unknown_names_fail_and_builtins_succeed() {
        let kmod = FakeKmod::default();
        let quiet = parse_args(&s(&["-q", "--", "net-pf-99"])).unwrap();
        let (msgs, ok) = probe(&kmod, &index(), &BTreeSet::new(), &quiet);
        assert!(!ok && msgs.is_empty());
        let loud = parse_args(&s(&["nosuch"])).unwrap();
        let (msgs, ok) = probe(&kmod, &index(), &BTreeSet::new(), &loud);
        assert!(!ok);
        assert_eq!(msgs, ["module nosuch not found"]);
        let b = builtin("kernel/fs/overlayfs/overlay.ko\nkernel/drivers/virtio/virtio-mmio.ko\n");
        let args = parse_args(&s(&["overlay", "virtio_mmio"])).unwrap();
        assert!(b.contains("virtio_mmio"));
        let args_all = Args {
            names: s(&["overlay", "virtio-mmio"]),
            ..args
        };
        let (_, ok) = probe(&kmod, &index(), &b, &args_all);
        assert!(ok);
        assert!(kmod.calls().is_empty());
    }

    #[test]
    fn a_failed_load_is_reported_with_the_name_asked_for() {
        let mut kmod = FakeKmod::default();
        kmod.failing.insert("veth.ko".into());
        let args = parse_args(&s(&["-q", "--", "rtnl-link-veth"])).unwrap();
        let (msgs, ok) = probe(&kmod, &index(), &BTreeSet::new(), &args);
        assert!(!ok);
        assert_eq!(msgs.len(), 1);
        assert!(
            msgs[0].contains("veth") && msgs[0].contains("rtnl-link-veth"),
            "{msgs:?}"
        );
    }
}
