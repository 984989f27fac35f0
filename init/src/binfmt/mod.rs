//! `osk-binfmt`: registers foreign-architecture emulators (Debian's
//! qemu-user-static) with the kernel's binfmt_misc, as an onboot container.
//!
//! binfmt_misc is global (one set of handlers per kernel), so a handler
//! registered from this container serves every container; the `F` flag
//! makes the kernel open the interpreter at registration, from this
//! container's root. Registering is idempotent: a handler already there is
//! left as it is.
//!
//! Handlers live only as long as some binfmt_misc mount does: the kernel
//! drops them all with its last one. So the table is mounted on the host's
//! `/proc/sys/fs/binfmt_misc` (through a shared bind), which outlives this
//! container.

pub mod conf;

use std::io;
use std::path::{Path, PathBuf};

pub use conf::{ConfError, Handler};

/// Where the kernel's interface is usually mounted.
pub const DEFAULT_DIR: &str = "/proc/sys/fs/binfmt_misc";
/// Where Debian (and systemd) keep handler definitions.
pub const DEFAULT_CONF_DIR: &str = "/usr/lib/binfmt.d";

/// The calls that need privileges or the kernel's binfmt_misc.
pub trait BinfmtSys {
    /// Whether binfmt_misc is mounted at `dir`.
    fn is_mounted(&self, dir: &Path) -> bool;
    /// Mounts binfmt_misc at `dir` (the kernel loads the module on demand).
    fn mount(&self, dir: &Path) -> io::Result<()>;
    fn umount(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;
    /// Writes `line` to `dir/register`.
    fn register(&self, dir: &Path, line: &str) -> io::Result<()>;
}

/// What happened to one handler.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Registered,
    AlreadyRegistered,
    /// This machine runs these binaries itself.
    Native,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {dir}: {source}")]
    ReadConfDir { dir: PathBuf, source: io::Error },
    #[error("reading {file}: {source}")]
    ReadConf { file: PathBuf, source: io::Error },
    #[error(transparent)]
    Conf(#[from] ConfError),
    #[error("mounting binfmt_misc on {dir}: {source} (the container needs CAP_SYS_ADMIN, and the kernel binfmt_misc)")]
    Mount { dir: PathBuf, source: io::Error },
    #[error("{dir} does not exist: the kernel has no binfmt_misc loaded; give --scratch DIR to mount it there first, which loads it")]
    NoDir { dir: PathBuf },
    #[error("handler {name}: its interpreter {interpreter} is missing from this image")]
    MissingInterpreter { name: String, interpreter: PathBuf },
    #[error("registering handler {name} in {dir}/register: {source}")]
    Register {
        name: String,
        dir: PathBuf,
        source: io::Error,
    },
}

/// Every handler of `conf_dir/*.conf`, files in name order (as systemd reads them).
pub fn load(conf_dir: &Path) -> Result<Vec<Handler>, Error> {
    let entries = std::fs::read_dir(conf_dir).map_err(|source| Error::ReadConfDir {
        dir: conf_dir.into(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| Error::ReadConf {
            file: file.clone(),
            source,
        })?;
        out.extend(conf::parse(&text, &file)?);
    }
    Ok(out)
}

/// Mounts binfmt_misc at `dir` unless it is there already. `dir` under
/// `/proc/sys/fs` appears only once the module is loaded: a mount on
/// `scratch` first makes the kernel load it.
pub fn ensure_mounted(
    sys: &dyn BinfmtSys,
    dir: &Path,
    scratch: Option<&Path>,
) -> Result<(), Error> {
    if sys.is_mounted(dir) {
        return Ok(());
    }
    let mount = |d: &Path| {
        sys.mount(d).map_err(|source| Error::Mount {
            dir: d.into(),
            source,
        })
    };
    let mut loaded_on = None;
    if !sys.exists(dir) {
        let s = scratch.ok_or_else(|| Error::NoDir { dir: dir.into() })?;
        mount(s)?;
        loaded_on = Some(s);
    }
    mount(dir)?;
    if let Some(s) = loaded_on {
        // Only a helper: `dir` now holds the table.
        if let Err(e) = sys.umount(s) {
            tracing::warn!("unmounting {}: {e}", s.display());
        }
    }
    Ok(())
}

/// Registers `h` through `dir` unless it is native to `arch` (Rust's name:
/// `x86_64`, `aarch64`) or already registered.
pub fn register(
    sys: &dyn BinfmtSys,
    dir: &Path,
    h: &Handler,
    arch: &str,
) -> Result<Outcome, Error> {
    if h.is_native(arch) {
        return Ok(Outcome::Native);
    }
    if sys.exists(&dir.join(&h.name)) {
        return Ok(Outcome::AlreadyRegistered);
    }
    if !sys.exists(&h.interpreter) {
        return Err(Error::MissingInterpreter {
            name: h.name.clone(),
            interpreter: h.interpreter.clone(),
        });
    }
    match sys.register(dir, &h.register_line()) {
        Ok(()) => Ok(Outcome::Registered),
        // Registered by someone else since we looked.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(Outcome::AlreadyRegistered),
        Err(source) => Err(Error::Register {
            name: h.name.clone(),
            dir: dir.into(),
            source,
        }),
    }
}

/// Each handler's name and what became of it.
pub type Report = Vec<(String, Result<Outcome, Error>)>;

/// Mounts binfmt_misc if needed and registers every handler; one handler's
/// failure does not stop the others. Returns each handler's result.
pub fn register_all(
    sys: &dyn BinfmtSys,
    dir: &Path,
    scratch: Option<&Path>,
    handlers: &[Handler],
    arch: &str,
) -> Result<Report, Error> {
    ensure_mounted(sys, dir, scratch)?;
    Ok(handlers
        .iter()
        .map(|h| (h.name.clone(), register(sys, dir, h, arch)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    /// A binfmt_misc that records calls; registering adds the handler's file.
    #[derive(Default)]
    struct Fake {
        mounted: RefCell<bool>,
        files: RefCell<BTreeSet<PathBuf>>,
        calls: RefCell<Vec<String>>,
    }

    impl BinfmtSys for Fake {
        fn is_mounted(&self, _: &Path) -> bool {
            *self.mounted.borrow()
        }
        fn mount(&self, dir: &Path) -> io::Result<()> {
            if !self.files.borrow().contains(dir) {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            self.calls
                .borrow_mut()
                .push(format!("mount {}", dir.display()));
            // The first mount loads the module: the /proc entry appears.
            self.files.borrow_mut().insert(PathBuf::from(DIR));
            *self.mounted.borrow_mut() = true;
            Ok(())
        }
        fn umount(&self, dir: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("umount {}", dir.display()));
            Ok(())
        }
        fn exists(&self, path: &Path) -> bool {
            self.files.borrow().contains(path)
        }
        fn register(&self, dir: &Path, line: &str) -> io::Result<()> {
            self.calls.borrow_mut().push(format!("register {line}"));
            let name = line.split(':').nth(1).unwrap();
            self.files.borrow_mut().insert(dir.join(name));
            Ok(())
        }
    }

    const DIR: &str = "/host/proc/sys/fs/binfmt_misc";
    const SCRATCH: &str = "/binfmt_misc";

    fn handlers() -> Vec<Handler> {
        let text = [
            r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OP",
            r":qemu-x86_64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00:\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/x86_64-binfmt-P:POCF",
        ]
        .join("\n");
        conf::parse(&text, Path::new("t.conf")).unwrap()
    }

    /// binfmt_misc loaded: the /proc entry is there.
    fn with_interpreters() -> Fake {
        let f = Fake::default();
        f.files.borrow_mut().insert(PathBuf::from(DIR));
        for h in handlers() {
            f.files.borrow_mut().insert(h.interpreter);
        }
        f
    }

    #[test]
    fn mounts_then_registers_foreign_handlers_with_f_and_skips_the_native_one() {
        let f = with_interpreters();
        let out = register_all(&f, Path::new(DIR), None, &handlers(), "x86_64").unwrap();
        assert!(matches!(out[0], (ref n, Ok(Outcome::Registered)) if n == "qemu-aarch64"));
        assert!(matches!(out[1], (ref n, Ok(Outcome::Native)) if n == "qemu-x86_64"));
        let calls = f.calls.borrow();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0], format!("mount {DIR}"));
        assert!(calls[1].starts_with("register :qemu-aarch64:M::"));
        assert!(calls[1].ends_with("aarch64-binfmt-P:OPF"), "{}", calls[1]);
    }

    #[test]
    fn a_rerun_changes_nothing_and_does_not_fail() {
        let f = with_interpreters();
        register_all(&f, Path::new(DIR), None, &handlers(), "aarch64").unwrap();
        f.calls.borrow_mut().clear();
        let out = register_all(&f, Path::new(DIR), None, &handlers(), "aarch64").unwrap();
        assert!(matches!(out[0].1, Ok(Outcome::Native)));
        assert!(matches!(out[1].1, Ok(Outcome::AlreadyRegistered)));
        assert!(f.calls.borrow().is_empty(), "{:?}", f.calls.borrow());
    }

    #[test]
    fn a_missing_interpreter_is_named_and_the_others_still_register() {
        let f = Fake::default();
        f.files.borrow_mut().insert(PathBuf::from(DIR));
        let hs = handlers();
        f.files.borrow_mut().insert(hs[1].interpreter.clone());
        let out = register_all(&f, Path::new(DIR), None, &hs, "riscv64").unwrap();
        let e = out[0].1.as_ref().unwrap_err().to_string();
        assert!(
            e.contains("qemu-aarch64") && e.contains("aarch64-binfmt-P"),
            "{e}"
        );
        assert!(matches!(out[1].1, Ok(Outcome::Registered)));
    }

    #[test]
    fn without_the_module_a_scratch_mount_loads_it_first_and_goes_away() {
        let f = Fake::default();
        f.files.borrow_mut().insert(PathBuf::from(SCRATCH));
        ensure_mounted(&f, Path::new(DIR), Some(Path::new(SCRATCH))).unwrap();
        assert_eq!(
            *f.calls.borrow(),
            [
                format!("mount {SCRATCH}"),
                format!("mount {DIR}"),
                format!("umount {SCRATCH}")
            ]
        );
        let e = ensure_mounted(&Fake::default(), Path::new(DIR), None).unwrap_err();
        assert!(e.to_string().contains("--scratch"), "{e}");
    }

    #[test]
    fn load_reads_conf_files_in_name_order_and_ignores_others() {
        let d = tempfile::tempdir().unwrap();
        let line = |n: &str| format!(":{n}:M::\\x7fELF:\\xff\\xff\\xff\\xff:/usr/bin/{n}:F\n");
        std::fs::write(d.path().join("b.conf"), line("qemu-b")).unwrap();
        std::fs::write(d.path().join("a.conf"), line("qemu-a")).unwrap();
        std::fs::write(d.path().join("README"), "not a conf").unwrap();
        let names: Vec<String> = load(d.path())
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, ["qemu-a", "qemu-b"]);
        std::fs::write(d.path().join("c.conf"), "garbage\n").unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains("c.conf:1:"), "{e}");
    }
}
