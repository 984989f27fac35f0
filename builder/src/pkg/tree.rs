//! How a package fills its root filesystem, the builder's one tree holding file bytes:
//! normalised paths, merged /usr, path patterns and dpkg's rules for entries given twice.

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::assemble::{Kind as ArenaKind, Meta, PathError};

/// What a package puts at a path: the builder's one [`assemble::Kind`](crate::assemble::Kind),
/// with nothing in a directory and the bytes in a file. Device nodes and
/// FIFOs come only from a base image (`from:` an OCI image).
pub type Kind = crate::assemble::Kind<(), Vec<u8>>;

/// One entry a package puts in its [`Tree`]: the builder's one
/// [`assemble::Node`](crate::assemble::Node) over [`Kind`]. Owners are
/// numeric: names are normalised away.
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

/// A regular file of a package's tree: its bytes, owner and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes {
    pub data: Vec<u8>,
    pub meta: Meta,
}

/// A package's root filesystem, what its single layer will contain: the
/// builder's one [`assemble::Tree`](crate::assemble::Tree), its files holding
/// their bytes.
pub type Tree = crate::assemble::Tree<Bytes>;

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

/// How a package fills its tree: paths are normalised text (see
/// [`normalise`]), `""` the root.
impl Tree {
    /// Puts `node` at `path`, creating missing parent directories (root,
    /// 0755). A directory shipped twice keeps the first owner and mode;
    /// anything else replaces what was there (a replaced directory goes with
    /// its contents). A path through a symlink is refused: dpkg would write
    /// through it, but the layer would then hold a path below a symlink,
    /// which `osk build` refuses to unpack; with merged /usr, [`normalise`]
    /// has already moved `bin/`, `lib/` ... under `usr/`.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), PathError> {
        let p = path.as_bytes();
        let parents = Meta::root(0o755);
        match node.kind {
            Kind::Dir(()) => {
                if self.is_dir(path) {
                    return Ok(());
                }
                self.add_dir(p, node.meta, parents).map(|_| ())
            }
            Kind::File(data) => {
                let meta = node.meta;
                self.add_inode(p, Bytes { data, meta }, meta, parents)
            }
            Kind::Symlink(t) => self.add_leaf(p, arena(node.meta, ArenaKind::Symlink(t)), parents),
            Kind::Char(a, b) => self.add_leaf(p, arena(node.meta, ArenaKind::Char(a, b)), parents),
            Kind::Block(a, b) => {
                self.add_leaf(p, arena(node.meta, ArenaKind::Block(a, b)), parents)
            }
            Kind::Fifo => self.add_leaf(p, arena(node.meta, ArenaKind::Fifo), parents),
        }
    }

    /// Whether `path` is a directory (not a symlink to one).
    pub fn is_dir(&self, path: &str) -> bool {
        self.lookup(path.as_bytes())
            .is_some_and(|id| matches!(self.node(id).kind, ArenaKind::Dir(_)))
    }

    /// The bytes of the regular file at `path`.
    pub fn bytes(&self, path: &str) -> Option<&[u8]> {
        self.file(path.as_bytes()).map(|b| b.data.as_slice())
    }

    /// Total bytes of file contents; a hard-linked file counts once per link,
    /// as the layer holds it.
    pub fn content_size(&self) -> u64 {
        self.walk()
            .iter()
            .map(|(_, id)| match self.node(*id).kind {
                ArenaKind::File(ino) => self.inode(ino).data.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

fn arena(meta: Meta, kind: ArenaKind) -> crate::assemble::Node {
    crate::assemble::Node { meta, kind }
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

    fn paths(t: &Tree) -> Vec<String> {
        t.walk_by_path()
            .into_iter()
            .map(|(p, _)| String::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn insert_creates_parents_and_a_replaced_directory_goes_with_its_contents() {
        let mut t = Tree::default();
        t.insert("a/b/c", Node::file(b"x".to_vec(), 0o644)).unwrap();
        assert_eq!(paths(&t), ["a", "a/b", "a/b/c"]);
        t.insert("a/b", Node::symlink("elsewhere")).unwrap();
        assert_eq!(paths(&t), ["a", "a/b"]);
    }

    #[test]
    fn insert_keeps_a_directory_s_first_owner_and_replaces_anything_else() {
        let mut t = Tree::default();
        let mut owned = Node::dir(0o700);
        owned.meta.uid = 7;
        t.insert("d", owned.clone()).unwrap();
        t.insert("d", Node::dir(0o755)).unwrap();
        let d = t.node(t.lookup(b"d").unwrap());
        assert_eq!(d.meta, owned.meta);
        t.insert("l", Node::symlink("d")).unwrap();
        t.insert("l", Node::symlink("e")).unwrap();
        let kind = |t: &Tree, p: &str| t.node(t.lookup(p.as_bytes()).unwrap()).kind.clone();
        assert_eq!(kind(&t, "l"), ArenaKind::Symlink(b"e".to_vec()));
        t.insert("l", Node::dir(0o755)).unwrap();
        assert!(t.is_dir("l"));
        t.insert("f", Node::file(b"1".to_vec(), 0o644)).unwrap();
        t.insert("f", Node::file(b"22".to_vec(), 0o600)).unwrap();
        assert_eq!(t.bytes("f"), Some(&b"22"[..]));
        assert_eq!(t.content_size(), 2);
    }

    #[test]
    fn a_path_below_a_symlink_is_refused_naming_the_link() {
        let mut t = Tree::default();
        t.insert("d", Node::dir(0o755)).unwrap();
        t.insert("s", Node::symlink("d")).unwrap();
        let err = t
            .insert("s/sub/f", Node::file(b"x".to_vec(), 0o644))
            .unwrap_err();
        assert_eq!(
            err,
            PathError::ThroughSymlink {
                path: "s".into(),
                target: "d".into()
            }
        );
        assert!(
            err.to_string().contains("goes through s, a symlink to d"),
            "{err}"
        );
        // Nothing was written, through the link or beside it.
        assert_eq!(paths(&t), ["d", "s"]);
        assert_eq!(t.bytes("d/sub/f"), None);
        let err = t.insert("s/x", Node::dir(0o755)).unwrap_err();
        assert!(matches!(err, PathError::ThroughSymlink { .. }), "{err}");
    }
}
