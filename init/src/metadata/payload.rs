//! User data as LinuxKit's metadata package understands it: a JSON object
//! naming files and directories is written out as a tree, e.g.
//!
//! ```json
//! {"ssh": {"entries": {"authorized_keys": {"perm": "0600", "content": "ssh-ed25519 ..."}}},
//!  "hostname": {"content": "web1"}}
//! ```
//!
//! The raw bytes are always kept as `userdata` too, so anything else
//! (cloud-config, a script) reaches the services that want it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::write::{self, WriteError};

/// Where the raw user data goes, relative to the config directory.
pub const USERDATA: &str = "userdata";

/// One name in the tree: a directory when it has `entries`, else a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Node {
    perm: Option<String>,
    content: Option<String>,
    entries: Option<BTreeMap<String, Node>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("user data entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("user data entry {path:?}: perm {perm:?} is not an octal mode such as \"0644\"")]
    Perm { path: String, perm: String },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What [`apply`] did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Written as a tree: the files, relative to the config directory.
    Tree(Vec<String>),
    /// Not LinuxKit-shaped JSON: only `userdata` was written.
    Raw,
}

/// Writes `data` to `dir/userdata` and, when it is a LinuxKit-shaped JSON
/// object, its tree under `dir`. A tree with a bad name or permission is
/// rejected whole before anything of it is written.
pub fn apply(dir: &Path, data: &[u8]) -> Result<Applied, PayloadError> {
    write::file(&dir.join(USERDATA), data, 0o644)?;
    let Ok(tree) = serde_json::from_slice::<BTreeMap<String, Node>>(data) else {
        return Ok(Applied::Raw);
    };
    let mut plan = Vec::new();
    flatten(&tree, "", &mut plan)?;
    let mut files = Vec::new();
    for item in plan {
        match item {
            Item::Dir { path, mode } => write::dir(&dir.join(&path), mode)?,
            Item::File {
                path,
                mode,
                content,
            } => {
                write::file(&dir.join(&path), content.as_bytes(), mode)?;
                files.push(path.to_string_lossy().into_owned());
            }
        }
    }
    Ok(Applied::Tree(files))
}

enum Item<'a> {
    Dir {
        path: PathBuf,
        mode: u32,
    },
    File {
        path: PathBuf,
        mode: u32,
        content: &'a str,
    },
}

/// Checks every name and permission and lists what to write, parents first.
fn flatten<'a>(
    tree: &'a BTreeMap<String, Node>,
    prefix: &str,
    out: &mut Vec<Item<'a>>,
) -> Result<(), PayloadError> {
    for (name, node) in tree {
        let shown = format!("{prefix}{name}");
        let bad = |reason: &str| PayloadError::Entry {
            path: shown.clone(),
            reason: reason.to_string(),
        };
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(bad(
                "names must be single path components (no `/`, `.`, `..` or empty names)",
            ));
        }
        let path = Path::new(prefix).join(name);
        match (&node.entries, &node.content) {
            (Some(entries), None) => {
                let mode = perm(&shown, node.perm.as_deref(), 0o755)?;
                out.push(Item::Dir { path, mode });
                flatten(entries, &format!("{shown}/"), out)?;
            }
            (None, Some(content)) => {
                let mode = perm(&shown, node.perm.as_deref(), 0o644)?;
                out.push(Item::File {
                    path,
                    mode,
                    content,
                });
            }
            (Some(_), Some(_)) => return Err(bad("has both `entries` and `content`")),
            (None, None) => return Err(bad("needs `content` (a file) or `entries` (a directory)")),
        }
    }
    Ok(())
}

/// An octal permission string such as `"0600"` (of the entry at `path`).
fn perm(path: &str, s: Option<&str>, default: u32) -> Result<u32, PayloadError> {
    let Some(s) = s else { return Ok(default) };
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| PayloadError::Perm {
            path: path.to_string(),
            perm: s.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn linuxkit_tree_is_written_with_modes() {
        let d = tempfile::tempdir().unwrap();
        let data = br#"{"ssh": {"perm": "0700", "entries": {"authorized_keys": {"perm": "0600", "content": "ssh-ed25519 AAA k\n"}}},
                        "hostname": {"content": "web1"}}"#;
        let got = apply(d.path(), data).unwrap();
        assert_eq!(
            got,
            Applied::Tree(vec!["hostname".into(), "ssh/authorized_keys".into()])
        );
        let keys = d.path().join("ssh/authorized_keys");
        assert_eq!(std::fs::read(&keys).unwrap(), b"ssh-ed25519 AAA k\n");
        assert_eq!(mode(&keys), 0o600);
        assert_eq!(mode(&d.path().join("ssh")), 0o700);
        assert_eq!(std::fs::read(d.path().join("hostname")).unwrap(), b"web1");
        assert_eq!(mode(&d.path().join("hostname")), 0o644);
        assert_eq!(std::fs::read(d.path().join(USERDATA)).unwrap(), data);
    }

    #[test]
    fn anything_else_is_kept_raw() {
        let d = tempfile::tempdir().unwrap();
        for data in [
            &b"#cloud-config\nhostname: x\n"[..],
            b"[1, 2]",
            b"{\"a\": 1}",
        ] {
            assert_eq!(apply(d.path(), data).unwrap(), Applied::Raw);
            assert_eq!(std::fs::read(d.path().join(USERDATA)).unwrap(), data);
        }
        assert!(!d.path().join("a").exists());
    }

    #[test]
    fn escaping_names_are_rejected_before_anything_is_written() {
        let d = tempfile::tempdir().unwrap();
        for (json, shown) in [
            (
                r#"{"a": {"content": "x"}, "b": {"entries": {"..": {"content": "x"}}}}"#,
                "b/..",
            ),
            (r#"{"/etc": {"content": "x"}}"#, "/etc"),
            (r#"{"x/y": {"content": "x"}}"#, "x/y"),
            (r#"{"": {"content": "x"}}"#, ""),
        ] {
            let e = apply(d.path(), json.as_bytes()).unwrap_err();
            assert!(
                e.to_string().contains(&format!("{shown:?}")),
                "{e} names {shown}"
            );
        }
        assert!(!d.path().join("a").exists());
    }

    #[test]
    fn bad_permissions_and_shapes_name_the_entry() {
        let d = tempfile::tempdir().unwrap();
        let e = apply(d.path(), br#"{"k": {"perm": "rw", "content": ""}}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "user data entry \"k\": perm \"rw\" is not an octal mode such as \"0644\""
        );
        let e = apply(d.path(), br#"{"k": {"perm": "0600"}}"#).unwrap_err();
        assert!(e.to_string().contains("needs `content`"), "{e}");
    }
}
