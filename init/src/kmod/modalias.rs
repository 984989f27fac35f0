//! Drivers for the devices that are there: every device in sysfs publishes a
//! `modalias` (`pci:v00001AF4d00001000...`), every driver module lists the
//! patterns it serves in its `alias=` fields. Loading the matches, then
//! looking again (a bus driver makes new devices appear), is what udev's
//! coldplug does at boot; osk-init does it without udev.

use std::collections::BTreeSet;
use std::path::Path;

use crate::kmod::modules::{load, load_order, Index, Kmod, LoadReport};

/// fnmatch(3) without flags, as modprobe matches aliases: `*`, `?` and
/// bracket classes (`[0-9]`, `[!a]`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi + 1, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // An unclosed `[` is literal.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class starting at `p[start] == '['`. Returns
/// whether it matched and the index after `]`, or `None` if unclosed.
fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            matched |= (p[i]..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    None
}

/// Every module whose aliases match `alias`, by name.
pub fn modules_for(index: &Index, alias: &str) -> Vec<String> {
    index
        .iter()
        .filter(|(_, m)| m.aliases.iter().any(|a| glob_match(a, alias)))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The `modalias` of every device below `devices` (`/sys/devices`).
/// Symlinks are not followed: sysfs links back up the tree everywhere.
pub fn scan(devices: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![devices.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name() == "modalias" {
                if let Ok(s) = std::fs::read_to_string(e.path()) {
                    let s = s.trim();
                    if !s.is_empty() {
                        out.insert(s.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The device source coldplug asks after every load: the first look walks
/// sysfs (`walk`), later ones take only what the kernel announced since
/// (`added`), walking again if that failed (events were lost). Without
/// `added` (no uevent socket), every look walks.
pub fn walk_once(
    mut walk: impl FnMut() -> BTreeSet<String>,
    mut added: Option<impl FnMut() -> std::io::Result<BTreeSet<String>>>,
) -> impl FnMut() -> BTreeSet<String> {
    let mut walked = false;
    move || {
        if let (true, Some(added)) = (walked, added.as_mut()) {
            match added() {
                Ok(new) => return new,
                Err(e) => tracing::debug!("uevents lost ({e}); walking sysfs"),
            }
        }
        walked = true;
        walk()
    }
}

/// Loads the drivers of the devices `scan_devices` reports until no new one
/// matches. Each driver (after its dependencies) loads on its own thread,
/// so one that waits for its hardware (a disk controller probing its ports)
/// holds up nothing else; whenever one finishes, the devices are scanned
/// again, since a bus driver makes new devices appear (PCI → virtio → the
/// NIC). Two threads sharing a dependency are safe: the kernel makes the
/// second loader wait for the first and answers EEXIST. `tried` carries the
/// names already attempted across calls.
pub fn coldplug(
    kmod: &dyn Kmod,
    index: &Index,
    mut scan_devices: impl FnMut() -> BTreeSet<String>,
    tried: &mut BTreeSet<String>,
) -> LoadReport {
    let mut report = LoadReport::default();
    std::thread::scope(|s| {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut running = 0usize;
        // A sysfs walk is thousands of directory reads on a large machine:
        // scan again only after a load added a module, and take every
        // answer already waiting before doing so.
        let mut rescan = true;
        loop {
            let aliases = if rescan {
                scan_devices()
            } else {
                BTreeSet::new()
            };
            for alias in aliases {
                for m in modules_for(index, &alias) {
                    if tried.contains(&m) || kmod.is_loaded(&m) {
                        continue;
                    }
                    tried.insert(m.clone());
                    let chain = load_order(index, Some(std::slice::from_ref(&m))).0;
                    let tx = done_tx.clone();
                    running += 1;
                    s.spawn(move || {
                        // Always answer: the loop below counts the answers.
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            load(kmod, index, &chain)
                        }))
                        .unwrap_or_else(|_| LoadReport {
                            failed: vec![(m, "panicked while loading".into())],
                            ..Default::default()
                        });
                        let _ = tx.send(r);
                    });
                }
            }
            if running == 0 {
                break;
            }
            let Ok(first) = done_rx.recv() else { break };
            rescan = false;
            for r in std::iter::once(first).chain(done_rx.try_iter()) {
                running -= 1;
                rescan |= !r.loaded.is_empty();
                report.merge(r);
            }
        }
    });
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kmod::modules::tests::FakeKmod;
    use crate::kmod::modules::Module;
    use std::path::PathBuf;

    #[test]
    fn globs_match_as_fnmatch_does() {
        for (p, t) in [
            (
                "pci:v00001AF4d*sv*sd*bc*sc*i*",
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
            ),
            ("virtio:d00000001v*", "virtio:d00000001v00001AF4"),
            ("acpi*:LNXPWRBN:*", "acpi:LNXPWRBN:"),
            ("scsi:t-0x05*", "scsi:t-0x05"),
            ("fs-ext4", "fs-ext4"),
            ("a?c", "abc"),
            ("[0-9]x", "7x"),
            ("[!a]x", "bx"),
            ("*", ""),
            ("a*b*c", "aXbYbZc"),
        ] {
            assert!(glob_match(p, t), "{p} should match {t}");
        }
        for (p, t) in [
            ("pci:v00001AF4d*", "pci:v00008086d00002922"),
            ("virtio:d00000001v*", "virtio:d00000002v00001AF4"),
            ("fs-ext4", "fs-ext3"),
            ("a?c", "ac"),
            ("[0-9]x", "ax"),
            ("[!a]x", "ax"),
            ("a*b", "aXbY"),
        ] {
            assert!(!glob_match(p, t), "{p} should not match {t}");
        }
    }

    fn module(aliases: &[&str], depends: &[&str]) -> Module {
        Module {
            path: PathBuf::from("/m/x.ko"),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn index() -> Index {
        let mut i = Index::new();
        for (name, aliases, deps) in [
            ("virtio_pci", &["pci:v00001AF4d*"][..], &["virtio"][..]),
            ("virtio", &[][..], &[][..]),
            ("virtio_net", &["virtio:d00000001v*"][..], &["virtio"][..]),
            ("virtio_blk", &["virtio:d00000002v*"][..], &["virtio"][..]),
            ("ext4", &["fs-ext4"][..], &[][..]),
        ] {
            let mut m = module(aliases, deps);
            m.path = PathBuf::from(format!("/m/{name}.ko"));
            i.insert(name.to_string(), m);
        }
        i
    }

    #[test]
    fn drivers_load_until_no_new_device_appears() {
        let index = index();
        let kmod = FakeKmod::default();
        // Devices the bus driver makes appear once it is loaded.
        let scan = || {
            let mut s = BTreeSet::from(["pci:v00001AF4d00001000sv1".to_string()]);
            if kmod.is_loaded("virtio_pci") {
                s.insert("virtio:d00000001v00001AF4".into());
            }
            s
        };
        let mut tried = BTreeSet::new();
        let r = coldplug(&kmod, &index, scan, &mut tried);
        assert_eq!(
            kmod.calls(),
            [
                "insmod virtio.ko",
                "insmod virtio_pci.ko",
                "insmod virtio_net.ko"
            ]
        );
        assert_eq!(r.loaded.len(), 3);
        assert!(r.present.contains(&"virtio".to_string()));
        // Nothing matched a filesystem: ext4 waits for the kernel to ask.
        assert!(!tried.contains("ext4"));
    }

    #[test]
    fn a_failing_driver_is_tried_once() {
        let index = index();
        let mut kmod = FakeKmod::default();
        kmod.failing.insert("virtio_blk.ko".into());
        kmod.live.lock().unwrap().insert("virtio".into());
        let scans = std::cell::Cell::new(0);
        let scan = || {
            scans.set(scans.get() + 1);
            BTreeSet::from(["virtio:d00000002v00001AF4".to_string()])
        };
        let mut tried = BTreeSet::new();
        let r = coldplug(&kmod, &index, scan, &mut tried);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(kmod.calls(), ["insmod virtio_blk.ko"]);
        // Nothing was added, so sysfs was not walked again.
        assert_eq!(scans.get(), 1);
    }

    #[test]
    fn independent_drivers_load_in_parallel_chains() {
        let index = index();
        let kmod = FakeKmod::default();
        let scan = || {
            BTreeSet::from([
                "virtio:d00000001v00001AF4".to_string(),
                "virtio:d00000002v00001AF4".to_string(),
            ])
        };
        let r = coldplug(&kmod, &index, scan, &mut BTreeSet::new());
        let calls = kmod.calls();
        // Each chain loads virtio before its driver; only one load of it
        // gets through (the other sees it live or gets EEXIST).
        let pos = |c: &str| calls.iter().position(|x| x == c).unwrap();
        assert!(pos("insmod virtio.ko") < pos("insmod virtio_net.ko"));
        assert!(pos("insmod virtio.ko") < pos("insmod virtio_blk.ko"));
        assert!(r.loaded.contains(&"virtio_net".to_string()));
        assert!(r.loaded.contains(&"virtio_blk".to_string()));
    }

    #[test]
    fn sysfs_is_walked_once_then_announcements_are_read() {
        let walks = std::cell::Cell::new(0);
        let walk = || {
            walks.set(walks.get() + 1);
            BTreeSet::from(["pci:a".to_string()])
        };
        let mut queue = vec![
            Ok(BTreeSet::from(["virtio:b".to_string()])),
            Err(std::io::Error::from_raw_os_error(libc::ENOBUFS)),
            Ok(BTreeSet::new()),
        ]
        .into_iter();
        let mut look = walk_once(walk, Some(move || queue.next().unwrap()));
        assert_eq!(look(), BTreeSet::from(["pci:a".to_string()]));
        assert_eq!(look(), BTreeSet::from(["virtio:b".to_string()]));
        // Lost events: everything there is, from a walk.
        assert_eq!(look(), BTreeSet::from(["pci:a".to_string()]));
        assert_eq!(look(), BTreeSet::new());
        drop(look);
        assert_eq!(walks.get(), 2);
    }

    #[test]
    fn without_announcements_every_look_walks() {
        let walks = std::cell::Cell::new(0);
        let none: Option<fn() -> std::io::Result<BTreeSet<String>>> = None;
        let mut look = walk_once(
            || {
                walks.set(walks.get() + 1);
                BTreeSet::new()
            },
            none,
        );
        look();
        look();
        drop(look);
        assert_eq!(walks.get(), 2);
    }

    #[test]
    fn scan_reads_modalias_files_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("pci0000:00/0000:00:02.0");
        std::fs::create_dir_all(dev.join("virtio0")).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v00001AF4d00001000\n").unwrap();
        std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::fs::write(dev.join("virtio0/empty"), "").unwrap();
        std::os::unix::fs::symlink(dir.path(), dev.join("virtio0/subsystem")).unwrap();
        let got = scan(dir.path());
        assert_eq!(
            got,
            BTreeSet::from([
                "pci:v00001AF4d00001000".to_string(),
                "virtio:d00000001v00001AF4".to_string()
            ])
        );
    }
}
