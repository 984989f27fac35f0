//! Finding the metadata medium: every block device the kernel lists in
//! `/sys/class/block`, opened through `/dev` and recognised by its ISO 9660
//! volume label. Nothing is mounted.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::iso::Iso;

/// What a labelled volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `CIDATA`: LinuxKit's `config` / cloud-init NoCloud's `user-data` (`osk run --data`).
    NoCloud,
    /// `config-2`: an OpenStack config drive.
    ConfigDrive,
}

impl Kind {
    /// The kind a volume label names (labels compare case-insensitively, as cloud-init's do).
    pub fn from_label(label: &str) -> Option<Kind> {
        if label.eq_ignore_ascii_case("cidata") {
            Some(Kind::NoCloud)
        } else if label.eq_ignore_ascii_case("config-2") {
            Some(Kind::ConfigDrive)
        } else {
            None
        }
    }
}

/// Device names never worth opening: memory and loop devices hold no metadata.
fn skipped(name: &str) -> bool {
    ["loop", "ram", "zram", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `/dev` paths of the block devices listed under `sys_block`, sorted by name.
pub fn candidates(sys_block: &Path, dev: &Path) -> Vec<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !skipped(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.into_iter().map(|n| dev.join(n)).collect()
}

/// The first candidate carrying a metadata label, opened.
pub fn find(sys_block: &Path, dev: &Path) -> Option<(PathBuf, File, Kind)> {
    for path in candidates(sys_block, dev) {
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                // An empty CD-ROM drive says "no medium"; not worth a warning.
                tracing::debug!("{}: {e}", path.display());
                continue;
            }
        };
        let kind = match Iso::open(&file) {
            Ok(iso) => Kind::from_label(&iso.label),
            Err(e) => {
                tracing::debug!("{}: {e}", path.display());
                None
            }
        };
        if let Some(kind) = kind {
            return Some((path, file, kind));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::testiso::IsoBuilder;
    use super::*;

    #[test]
    fn finds_the_labelled_volume_among_others() {
        let d = tempfile::tempdir().unwrap();
        let (sys, dev) = (d.path().join("sys"), d.path().join("dev"));
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let img = IsoBuilder::new("CIDATA").file("CONFIG.;1", b"x").build();
        let other = IsoBuilder::new("INSTALLER").build();
        for (name, bytes) in [
            ("vda", vec![0u8; 1 << 16]),
            ("vdb", other),
            ("vdc", img.clone()),
            ("loop0", img),
        ] {
            std::fs::create_dir(sys.join(name)).unwrap();
            std::fs::write(dev.join(name), bytes).unwrap();
        }
        // Listed by the kernel but without a node: skipped.
        std::fs::create_dir(sys.join("sr0")).unwrap();
        assert_eq!(
            candidates(&sys, &dev),
            ["sr0", "vda", "vdb", "vdc"].map(|n| dev.join(n))
        );
        let (path, _, kind) = find(&sys, &dev).unwrap();
        assert_eq!((path, kind), (dev.join("vdc"), Kind::NoCloud));
    }

    #[test]
    fn labels() {
        assert_eq!(Kind::from_label("cidata"), Some(Kind::NoCloud));
        assert_eq!(Kind::from_label("CONFIG-2"), Some(Kind::ConfigDrive));
        assert_eq!(Kind::from_label("CIDATA2"), None);
    }
}
