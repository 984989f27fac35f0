//! Kernel modules: find the `.ko` files, read their dependencies and aliases
//! from the `.modinfo` ELF section, order them dependencies-first and load
//! them with `finit_module(2)`. No kmod, no modules.dep needed.
//!
//! Which modules load when: the image's list at boot ([`parse_list`]), the
//! drivers of the devices present ([`crate::kmod::modalias`]), and anything the
//! kernel asks for later through its modprobe helper ([`crate::kmod::modprobe`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use osk_layout::modinfo;

/// Loading modules. `Sync`: independent modules load on parallel threads.
/// The real one is [`crate::sys::RealKmod`].
pub trait Kmod: Sync {
    /// finit_module(2) with the module's parameters (`""` for none).
    fn finit_module(&self, path: &Path, params: &str) -> io::Result<()>;
    /// The module is live in the kernel already.
    fn is_loaded(&self, name: &str) -> bool;
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {cause}")]
pub struct ModinfoError {
    path: PathBuf,
    cause: modinfo::Error,
}

pub use osk_layout::modinfo::{depends, normalize};

/// The `.modinfo` strings of the module at `path`, reading only the ELF
/// headers and that section.
pub fn read_modinfo(path: &Path) -> Result<Vec<String>, ModinfoError> {
    let err = |cause| ModinfoError {
        path: path.to_path_buf(),
        cause,
    };
    let f = File::open(path).map_err(|e| err(e.into()))?;
    modinfo::read(&mut |off, buf| f.read_exact_at(buf, off)).map_err(err)
}

/// The `softdep=pre:` modules of a modinfo: loaded first when present, as
/// modprobe does (libcrc32c needs crc32c this way).
pub fn softdeps_pre(modinfo: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for kv in modinfo.iter().filter_map(|kv| kv.strip_prefix("softdep=")) {
        let mut pre = false;
        for word in kv.split_whitespace() {
            match word {
                "pre:" => pre = true,
                "post:" => pre = false,
                w if pre => out.push(normalize(w)),
                _ => {}
            }
        }
    }
    out
}

/// The `alias=` patterns of a modinfo (device modaliases, `fs-ext4`...).
pub fn aliases(modinfo: &[String]) -> Vec<String> {
    modinfo
        .iter()
        .filter_map(|kv| kv.strip_prefix("alias="))
        .map(str::to_string)
        .collect()
}

/// One module file and what it needs first.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Module {
    pub path: PathBuf,
    pub depends: Vec<String>,
    /// Loaded before this one when they exist; never reported missing.
    pub softdeps: Vec<String>,
    /// Glob patterns (fnmatch) naming what this module serves.
    pub aliases: Vec<String>,
}

/// Every module found, by normalized name.
pub type Index = BTreeMap<String, Module>;

/// Indexes every `.ko` below `dir`. Unreadable modules are returned as errors
/// next to the index so the caller can log them.
pub fn index_dir(dir: &Path) -> (Index, Vec<ModinfoError>) {
    let mut index = Index::new();
    let mut errors = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                let name = normalize(&p.file_stem().unwrap_or_default().to_string_lossy());
                match read_modinfo(&p) {
                    Ok(info) => {
                        index.insert(
                            name,
                            Module {
                                path: p,
                                depends: depends(&info),
                                softdeps: softdeps_pre(&info),
                                aliases: aliases(&info),
                            },
                        );
                    }
                    Err(err) => errors.push(err),
                }
            }
        }
    }
    (index, errors)
}

/// Where PID 1 leaves its index for the modprobe helper, which the kernel
/// may start several times a boot (a DHCP client alone asks for two
/// modules twice): reading one file beats reading every module again.

#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    dir: PathBuf,
    modules: Index,
}

/// Writes `index` (of `dir`) to `path`, through a temporary name.
pub fn save_index(index: &Index, dir: &Path, path: &Path) -> io::Result<()> {
    let cached = Cached {
        dir: dir.to_path_buf(),
        modules: index.clone(),
    };
    let data = serde_json::to_vec(&cached).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

/// The index of `dir`: from `cache` if it was made for `dir`, else read
/// from the modules themselves.
pub fn load_index(dir: &Path, cache: &Path) -> Index {
    if let Ok(data) = std::fs::read(cache) {
        if let Ok(c) = serde_json::from_slice::<Cached>(&data) {
            if c.dir == dir {
                return c.modules;
            }
        }
    }
    index_dir(dir).0
}

/// The load order: `wanted` (every indexed module when `None`) plus their
/// dependencies, each after what it depends on, otherwise by name. Also
/// returns wanted or depended-on names that are not in the index.
pub fn load_order(index: &Index, wanted: Option<&[String]>) -> (Vec<String>, Vec<String>) {
    let roots: Vec<String> = match wanted {
        Some(w) => w.iter().map(|s| normalize(s)).collect(),
        None => index.keys().cloned().collect(),
    };
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut missing = BTreeSet::new();
    // Depth-first post-order; `visiting` breaks (invalid) dependency cycles.
    fn visit(
        name: &str,
        index: &Index,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        missing: &mut BTreeSet<String>,
    ) {
        if done.contains(name) || !visiting.insert(name.to_string()) {
            return;
        }
        match index.get(name) {
            Some(m) => {
                for d in m.softdeps.iter().filter(|d| index.contains_key(*d)) {
                    visit(d, index, done, visiting, order, missing);
                }
                for d in &m.depends {
                    visit(d, index, done, visiting, order, missing);
                }
                order.push(name.to_string());
            }
            None => {
                missing.insert(name.to_string());
            }
        }
        visiting.remove(name);
        done.insert(name.to_string());
    }
    let mut visiting = BTreeSet::new();
    for r in &roots {
        visit(r, index, &mut done, &mut visiting, &mut order, &mut missing);
    }
    (order, missing.into_iter().collect())
}

/// Parses the modules list file: one name per line, `#` comments.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(normalize)
        .collect()
}

/// Result of loading modules.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Already present (EEXIST).
    pub present: Vec<String>,
    pub failed: Vec<(String, String)>,
}

impl LoadReport {
    pub fn merge(&mut self, other: LoadReport) {
        self.loaded.extend(other.loaded);
        self.present.extend(other.present);
        self.failed.extend(other.failed);
    }
}

/// Loads `order` (names in `index`); a failing module is recorded and the
/// rest are still tried. Live modules are skipped: the kernel would verify
/// the whole file before it says EEXIST.
pub fn load(kmod: &dyn Kmod, index: &Index, order: &[String]) -> LoadReport {
    let mut r = LoadReport::default();
    for name in order {
        let Some(m) = index.get(name) else { continue };
        if kmod.is_loaded(name) {
            r.present.push(name.clone());
            continue;
        }
        match kmod.finit_module(&m.path, "") {
            Ok(()) => r.loaded.push(name.clone()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => r.present.push(name.clone()),
            Err(e) => r
                .failed
                .push((name.clone(), format!("{}: {e}", m.path.display()))),
        }
    }
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records loads; `failing` module files fail, `live` names are loaded.
    #[derive(Default)]
    pub(crate) struct FakeKmod {
        pub calls: Mutex<Vec<String>>,
        pub failing: BTreeSet<String>,
        pub live: Mutex<BTreeSet<String>>,
    }

    impl FakeKmod {
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Kmod for FakeKmod {
        fn finit_module(&self, path: &Path, params: &str) -> io::Result<()> {
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            let call = if params.is_empty() {
                format!("insmod {file}")
            } else {
                format!("insmod {file} {params}")
            };
            self.calls.lock().unwrap().push(call);
            if self.failing.contains(&file) {
                return Err(io::Error::from_raw_os_error(libc::ENOEXEC));
            }
            let name = normalize(file.trim_end_matches(".ko"));
            self.live.lock().unwrap().insert(name);
            Ok(())
        }
        fn is_loaded(&self, name: &str) -> bool {
            self.live.lock().unwrap().contains(name)
        }
    }

    fn idx(entries: &[(&str, &[&str])]) -> Index {
        entries
            .iter()
            .map(|(n, d)| {
                (
                    n.to_string(),
                    Module {
                        path: PathBuf::from(format!("/m/{n}.ko")),
                        depends: d.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    use osk_layout::modinfo::synthetic_module as fake_ko;

    #[test]
    fn reads_depends_from_elf_modinfo() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            sub.join("virtio_net.ko"),
            fake_ko(b"license=GPL\0depends=net_failover,virtio-ring\0name=virtio_net\0"),
        )
        .unwrap();
        std::fs::write(sub.join("broken.ko"), b"nope").unwrap();
        let (index, errors) = index_dir(dir.path());
        assert_eq!(index["virtio_net"].depends, ["net_failover", "virtio_ring"]);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn orders_dependencies_first_and_reports_missing() {
        let index = idx(&[
            ("virtio_net", &["net_failover", "virtio_ring"]),
            ("net_failover", &["failover"]),
            ("failover", &[]),
            ("virtio_ring", &[]),
            ("veth", &[]),
            ("odd", &["ghost"]),
        ]);
        let (order, missing) = load_order(&index, Some(&["virtio-net".into(), "odd".into()]));
        assert_eq!(
            order,
            [
                "failover",
                "net_failover",
                "virtio_ring",
                "virtio_net",
                "odd"
            ]
        );
        assert_eq!(missing, ["ghost"]);
        let (all, _) = load_order(&index, None);
        assert_eq!(all.len(), 6);
        let pos = |n: &str| all.iter().position(|x| x == n).unwrap();
        assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
    }

    #[test]
    fn cycles_do_not_loop_forever() {
        let index = idx(&[("a", &["b"]), ("b", &["a"])]);
        let (order, _) = load_order(&index, None);
        assert_eq!(order.len(), 2);
    }

    #[test]
    fn failing_module_is_reported_and_loading_goes_on() {
        let index = idx(&[("a", &[]), ("b", &["a"]), ("c", &[])]);
        let mut kmod = FakeKmod::default();
        kmod.failing.insert("a.ko".into());
        let r = load(&kmod, &index, &["a".into(), "b".into(), "c".into()]);
        assert_eq!(kmod.calls(), ["insmod a.ko", "insmod b.ko", "insmod c.ko"]);
        assert_eq!(r.loaded, ["b", "c"]);
        assert_eq!(r.failed.len(), 1);
        assert!(r.failed[0].1.contains("/m/a.ko"));
    }

    #[test]
    fn live_modules_are_not_loaded_again() {
        let index = idx(&[("a", &[]), ("b", &["a"])]);
        let kmod = FakeKmod::default();
        kmod.live.lock().unwrap().insert("a".into());
        let r = load(&kmod, &index, &["a".into(), "b".into()]);
        assert_eq!(kmod.calls(), ["insmod b.ko"]);
        assert_eq!(r.present, ["a"]);
    }

    #[test]
    fn the_cached_index_is_used_for_its_own_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mods, newer) = (dir.path().join("6.1.0-9"), dir.path().join("6.1.0-10"));
        for d in [&mods, &newer] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("real.ko"), fake_ko(b"depends=\0alias=fs-real\0")).unwrap();
        }
        let cache = dir.path().join("modules.json");
        let cached = idx(&[("cached", &["dep"])]);
        save_index(&cached, &mods, &cache).unwrap();
        assert_eq!(load_index(&mods, &cache), cached);
        // Another release: the cache does not apply.
        let other = load_index(&newer, &cache);
        assert!(other.contains_key("real"), "{other:?}");
        assert_eq!(other["real"].aliases, ["fs-real"]);
        // No cache: read the modules.
        std::fs::remove_file(&cache).unwrap();
        assert!(load_index(&mods, &cache).contains_key("real"));
    }

    #[test]
    fn softdeps_come_first_when_present() {
        let info: Vec<String> = [
            "softdep=pre: crc32c post: nothing",
            "alias=fs-ext4",
            "alias=pci:v00001AF4d*",
        ]
        .map(String::from)
        .into();
        assert_eq!(softdeps_pre(&info), ["crc32c"]);
        assert_eq!(aliases(&info), ["fs-ext4", "pci:v00001AF4d*"]);
        let mut index = idx(&[("libcrc32c", &[]), ("crc32c", &[])]);
        index.get_mut("libcrc32c").unwrap().softdeps = vec!["crc32c".into(), "absent".into()];
        let (order, missing) = load_order(&index, Some(&["libcrc32c".into()]));
        assert_eq!(order, ["crc32c", "libcrc32c"]);
        assert!(missing.is_empty());
    }

    #[test]
    fn list_file_ignores_comments_and_blanks() {
        assert_eq!(
            parse_list("# net\nvirtio-net\n\n veth # pairs\n"),
            ["virtio_net", "veth"]
        );
    }
}
