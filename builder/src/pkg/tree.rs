//! An in-memory root filesystem: what the single image layer will contain.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::assemble::Meta;

/// What a path is: the builder's one [`assemble::Kind`](crate::assemble::Kind),
/// with nothing in a directory (paths are the keys) and the bytes in a file.
/// Device nodes and FIFOs come only from a base image (`from:` an OCI image).
pub type Kind = crate::assemble::Kind<(), Vec<u8>>;

/// One filesystem entry: the builder's one [`assemble::Node`](crate::assemble::Node)
/// over [`Kind`]. Owners are numeric: names are normalised away.
pub type Node = crate::assemble::Node<(), Vec<u8>>;

impl Node {
    pub fn dir(mode: u32) -> Node {
        Node {
            kind: Kind::Dir(()),
            meta: Meta::root(mode),
        }
    }
    pub fn file(data: Vec<u8>, mode: u32) -> Node {
        Node {
            kind: Kind::File(data),
            meta: Meta::root(mode),
        }
    }
    pub fn symlink(target: &str) -> Node {
        Node {
            kind: Kind::Symlink(target.as_bytes().to_vec()),
            meta: Meta::root(0o777),
        }
    }
}

/// Top-level directories Debian's merged-/usr layout turns into symlinks.
pub const MERGED_USR_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Normalises an archive path: no `./`, no leading or trailing `/`; and,
/// with merged /usr, `bin/x` becomes `usr/bin/x`. `None` for the root.
pub fn normalise(path: &str, merged_usr: bool) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return None;
    }
    let joined = parts.join("/");
    if merged_usr && MERGED_USR_DIRS.contains(&parts[0]) {
        return Some(format!("usr/{joined}"));
    }
    Some(joined)
}

/// Path patterns: `usr/share/doc` matches that path and everything below.
#[derive(Debug, Clone)]
pub struct Patterns(GlobSet);

impl Patterns {
    pub fn new(patterns: &[String]) -> Result<Patterns, globset::Error> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let p = p.trim_matches('/');
            b.add(Glob::new(p)?);
            b.add(Glob::new(&format!("{p}/**"))?);
        }
        Ok(Patterns(b.build()?))
    }

    pub fn matches(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

/// The filesystem being assembled, sorted by path.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub entries: BTreeMap<String, Node>,
}

impl Tree {
    /// Inserts (or replaces) an entry, creating missing parent directories.
    pub fn insert(&mut self, path: String, node: Node) {
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(p.to_string())
                .or_insert_with(|| Node::dir(0o755));
            parent = p;
        }
        // A directory shipped twice keeps the first owner/mode; anything else is replaced.
        if node.kind == Kind::Dir(()) {
            if let Some(existing) = self.entries.get(&path) {
                if existing.kind == Kind::Dir(()) {
                    return;
                }
            }
        }
        self.entries.insert(path, node);
    }

    /// Drops `path` and everything below it.
    pub fn remove_all(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.entries
            .retain(|k, _| k != path && !k.starts_with(&prefix));
    }

    /// Total bytes of file contents.
    pub fn content_size(&self) -> u64 {
        self.entries
            .values()
            .map(|n| match &n.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match &self.entries.get(path)?.kind {
            Kind::File(d) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_merges_usr() {
        assert_eq!(normalise("./bin/sh", true).as_deref(), Some("usr/bin/sh"));
        assert_eq!(normalise("./bin/sh", false).as_deref(), Some("bin/sh"));
        assert_eq!(
            normalise("./usr/lib/x/", true).as_deref(),
            Some("usr/lib/x")
        );
        assert_eq!(normalise("./", true), None);
    }

    #[test]
    fn patterns_cover_subtrees() {
        let p = Patterns::new(&[
            "usr/share/doc".into(),
            "usr/share/locale/*/LC_MESSAGES".into(),
        ])
        .unwrap();
        assert!(p.matches("usr/share/doc"));
        assert!(p.matches("usr/share/doc/libc6/copyright"));
        assert!(p.matches("usr/share/locale/de/LC_MESSAGES/x.mo"));
        assert!(!p.matches("usr/share/docs"));
    }

    #[test]
    fn insert_creates_parents() {
        let mut t = Tree::default();
        t.insert("a/b/c".into(), Node::file(b"x".to_vec(), 0o644));
        assert_eq!(t.entries.keys().collect::<Vec<_>>(), ["a", "a/b", "a/b/c"]);
        t.remove_all("a/b");
        assert_eq!(t.entries.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn insert_keeps_a_directory_s_first_owner_and_replaces_anything_else() {
        let mut t = Tree::default();
        let mut owned = Node::dir(0o700);
        owned.meta.uid = 7;
        t.insert("d".into(), owned.clone());
        t.insert("d".into(), Node::dir(0o755));
        assert_eq!(t.entries["d"], owned);
        t.insert("l".into(), Node::symlink("d"));
        t.insert("l".into(), Node::symlink("e"));
        assert_eq!(t.entries["l"].kind, Kind::Symlink(b"e".to_vec()));
        t.insert("l".into(), Node::dir(0o755));
        assert_eq!(t.entries["l"].kind, Kind::Dir(()));
        // Paths are keys: a path below a symlink is stored as it is, never written through it.
        t.insert("s".into(), Node::symlink("d"));
        t.insert("s/f".into(), Node::file(b"x".to_vec(), 0o644));
        assert_eq!(t.entries["s"].kind, Kind::Symlink(b"d".to_vec()));
        assert_eq!(t.file("s/f"), Some(&b"x"[..]));
        assert_eq!(t.file("d/f"), None);
    }
}
