//! The manifest's `files` section, with LinuxKit's semantics: default mode
//! 0600 (0700 for a directory), missing parents created with the entry's
//! mode plus search bits, `~/` in `source` is the build user's home.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::BuildError;
use crate::assemble::{Kind, Meta, Node, Spool, Tree};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileWhat {
    Directory,
    Symlink(String),
    /// Inline `contents`, or generated `metadata` (the glue renders it).
    Contents(Vec<u8>),
    /// A host file (already resolved against the manifest's directory, see [`expand_source`]).
    Source(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    pub path: String,
    pub what: FileWhat,
    /// Permission bits; None means LinuxKit's default.
    pub mode: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// A missing `source` is skipped instead of failing the build.
    pub optional: bool,
}

/// Parses LinuxKit's octal mode string (`"0644"`).
pub fn parse_mode(s: &str) -> Result<u32, ModeError> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ModeError(s.into()))
}

/// A mode that is not an octal permission; carries the text.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("mode {0:?} is not an octal permission like \"0644\"")]
pub struct ModeError(pub String);

/// Resolves a `source`: `~/x` is in the home directory, a relative path is
/// relative to the manifest's directory.
pub fn expand_source(source: &str, manifest_dir: &Path) -> PathBuf {
    if let Some(rest) = source.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = Path::new(source);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        manifest_dir.join(p)
    }
}

/// Mode for parent directories: each class that can read or write may also search.
fn dir_mode(mode: u32) -> u32 {
    let mut m = mode;
    for (class, x) in [(0o700, 0o100), (0o070, 0o010), (0o007, 0o001)] {
        if mode & class != 0 {
            m |= x;
        }
    }
    m
}

pub(super) fn apply(root: &mut Tree, spool: &Spool, files: &[FilePlan]) -> Result<(), BuildError> {
    for (index, f) in files.iter().enumerate() {
        let err = |reason: String| BuildError::File {
            index,
            path: f.path.clone(),
            reason,
        };
        let path = f.path.trim_start_matches('/');
        if path.is_empty() {
            return Err(err("path is empty or the root directory".into()));
        }
        let default = if f.what == FileWhat::Directory {
            0o700
        } else {
            0o600
        };
        let mode = f.mode.unwrap_or(default);
        let meta = Meta {
            mode,
            uid: f.uid,
            gid: f.gid,
        };
        let parent = Meta {
            mode: dir_mode(mode),
            ..meta
        };
        match &f.what {
            FileWhat::Directory => root
                .add_dir(path.as_bytes(), meta, parent)
                .map(|_| ())
                .map_err(|e| err(e.to_string()))?,
            FileWhat::Symlink(target) => root
                .add_leaf(
                    path.as_bytes(),
                    Node {
                        meta: Meta {
                            mode: 0o777,
                            ..meta
                        },
                        kind: Kind::Symlink(target.as_bytes().to_vec()),
                    },
                    parent,
                )
                .map_err(|e| err(e.to_string()))?,
            FileWhat::Contents(bytes) => {
                let sha = spool
                    .put_bytes(bytes)
                    .map_err(|e| err(format!("spool: {e}")))?;
                root.add_file(path.as_bytes(), sha, bytes.len() as u64, meta, parent)
                    .map_err(|e| err(e.to_string()))?
            }
            FileWhat::Source(src) => {
                let file = match File::open(src) {
                    Ok(file) => file,
                    Err(e) if f.optional => {
                        tracing::debug!("files[{index}]: skipping optional {}: {e}", src.display());
                        continue;
                    }
                    Err(e) => return Err(err(format!("source {}: {e}", src.display()))),
                };
                let md = file
                    .metadata()
                    .map_err(|e| err(format!("source {}: {e}", src.display())))?;
                if !md.is_file() {
                    return Err(err(format!(
                        "source {} is not a regular file",
                        src.display()
                    )));
                }
                let sha = spool
                    .put_reader(&mut BufReader::new(file), md.len())
                    .map_err(|e| err(format!("source {}: {e}", src.display())))?;
                root.add_file(path.as_bytes(), sha, md.len(), meta, parent)
                    .map_err(|e| err(e.to_string()))?
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("17777").is_err());
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o644), 0o755);
        assert_eq!(dir_mode(0o640), 0o750);
    }

    #[test]
    fn sources() {
        let dir = Path::new("/m");
        assert_eq!(expand_source("a/b", dir), PathBuf::from("/m/a/b"));
        assert_eq!(expand_source("/abs", dir), PathBuf::from("/abs"));
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(expand_source("~/x", dir), PathBuf::from(home).join("x"));
        }
    }
}
