//! The in-memory filesystem tree: the one tree type of the builder.
//!
//! Nothing here touches the host: a tree is an arena of nodes whose regular
//! files point into a table of inodes. For an output the inodes are spool
//! hashes ([`FileInode`]); a package's tree holds the bytes themselves
//! (`pkg::tree`). Hard links share an inode; grafting one image tree at
//! several places keeps sharing them, which is how an image used by several
//! containers is stored once in the output.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::layer::{EntryKind, LayerEntry};
use super::spool::Sha;
use super::AssembleError;

pub type NodeId = usize;
pub type InodeId = usize;

const ROOT: NodeId = 0;
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Ownership and permission bits (including setuid/setgid/sticky).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    pub const fn root(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// What a path is, in every file tree the builder assembles. `D` is what a
/// directory holds and `F` what a regular file holds: the arena keeps the
/// children and an inode; pkg's entries, before they are put in a tree, hold
/// nothing and the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<D = BTreeMap<Vec<u8>, NodeId>, F = InodeId> {
    Dir(D),
    /// A regular file; in the arena its metadata lives in the inode, shared by hard links.
    File(F),
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One entry of a file tree; see [`Kind`] for `D` and `F`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<D = BTreeMap<Vec<u8>, NodeId>, F = InodeId> {
    pub meta: Meta,
    pub kind: Kind<D, F>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInode {
    pub sha: Sha,
    pub size: u64,
    pub meta: Meta,
}

/// A file tree whose regular files point into a table of inodes `I`.
#[derive(Debug, Clone)]
pub struct Tree<I = FileInode> {
    nodes: Vec<Node>,
    inodes: Vec<I>,
}

impl<I> Default for Tree<I> {
    fn default() -> Self {
        Tree {
            nodes: vec![Node {
                meta: Meta::root(0o755),
                kind: Kind::Dir(BTreeMap::new()),
            }],
            inodes: Vec::new(),
        }
    }
}

/// Why a path cannot be written in a tree; the caller names the path itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("has a `..` component that could leave the image root")]
    DotDot,
    #[error("is the root directory")]
    Root,
    #[error("goes through {path}, a symlink to {target}; refusing to write through a symlink")]
    ThroughSymlink { path: String, target: String },
    #[error("goes through {path}, which is not a directory")]
    NotADirectory { path: String },
}

/// Splits a path into components: a leading `/` and `.` components are
/// dropped (OCI normalisation), `..` anywhere is refused.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, PathError> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }
}

impl<I> Tree<I> {
    pub fn root(&self) -> NodeId {
        ROOT
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub fn inode(&self, id: InodeId) -> &I {
        &self.inodes[id]
    }

    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn children(&self, dir: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes[dir].kind {
            Kind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[dir].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("callers only pass directories"),
        }
    }

    /// Takes `path` (with everything below it) out of the tree; false if it
    /// was not there. Parents are not followed through symlinks.
    pub fn remove(&mut self, path: &[u8]) -> bool {
        let Ok(comps) = components(path) else {
            return false;
        };
        let Some((name, parents)) = comps.split_last() else {
            return false;
        };
        let mut cur = ROOT;
        for c in parents {
            match self.children(cur).and_then(|m| m.get(*c)) {
                Some(id) => cur = *id,
                None => return false,
            }
        }
        match &mut self.nodes[cur].kind {
            Kind::Dir(c) => c.remove(*name).is_some(),
            _ => false,
        }
    }

    /// Looks `path` up without following any symlink.
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let comps = components(path).ok()?;
        let mut cur = ROOT;
        for c in comps {
            cur = *self.children(cur)?.get(c)?;
        }
        Some(cur)
    }

    /// The regular file at `path`, if there is one.
    pub fn file(&self, path: &[u8]) -> Option<&I> {
        match self.nodes[self.lookup(path)?].kind {
            Kind::File(ino) => Some(&self.inodes[ino]),
            _ => None,
        }
    }

    /// Walks to the directory `dirs`, creating missing ones with `meta`.
    /// A symlink or a non-directory on the way is an error: we never write through them.
    fn ensure_dirs(&mut self, dirs: &[&[u8]], meta: Meta) -> Result<NodeId, PathError> {
        let mut cur = ROOT;
        for (i, c) in dirs.iter().enumerate() {
            let next = self.children(cur).and_then(|m| m.get(*c)).copied();
            cur = match next {
                Some(id) => match &self.nodes[id].kind {
                    Kind::Dir(_) => id,
                    Kind::Symlink(t) => {
                        return Err(PathError::ThroughSymlink {
                            path: lossy(&dirs[..=i].join(&b'/')),
                            target: lossy(t),
                        })
                    }
                    _ => {
                        return Err(PathError::NotADirectory {
                            path: lossy(&dirs[..=i].join(&b'/')),
                        })
                    }
                },
                None => {
                    let id = self.push(Node {
                        meta,
                        kind: Kind::Dir(BTreeMap::new()),
                    });
                    self.children_mut(cur).insert(c.to_vec(), id);
                    id
                }
            };
        }
        Ok(cur)
    }

    /// The same tree with every reachable inode turned into `f(inode)`, once
    /// each: hard links keep sharing theirs, and the files lower layers
    /// replaced are not visited.
    pub fn map_inodes<J, E>(&self, mut f: impl FnMut(&I) -> Result<J, E>) -> Result<Tree<J>, E> {
        let mut nodes = self.nodes.clone();
        let mut inodes = Vec::new();
        let mut mapped: HashMap<InodeId, InodeId> = HashMap::new();
        for (_, id) in self.walk() {
            if let Kind::File(ino) = &mut nodes[id].kind {
                *ino = match mapped.get(ino) {
                    Some(&new) => new,
                    None => {
                        inodes.push(f(&self.inodes[*ino])?);
                        mapped.insert(*ino, inodes.len() - 1);
                        inodes.len() - 1
                    }
                };
            }
        }
        Ok(Tree { nodes, inodes })
    }

    /// Every node but the root in path-string order (`a`, `a-b`, `a/c`),
    /// the order of a sorted tar.
    pub fn walk_by_path(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut all = self.walk();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

impl Tree {
    /// Applies one layer with OCI semantics: whiteouts, opaque directories,
    /// hard links within the tree. `image` names the image in errors.
    pub fn apply_layer(
        &mut self,
        entries: &[LayerEntry],
        image: &str,
        whiteouts: bool,
    ) -> Result<(), AssembleError> {
        // Nodes this layer created: an opaque marker hides only lower layers' entries.
        let mut fresh: HashSet<NodeId> = HashSet::new();
        for e in entries {
            let hostile = |reason: String| AssembleError::Hostile {
                image: image.to_string(),
                path: lossy(&e.path),
                reason,
            };
            let comps = components(&e.path).map_err(|r| hostile(r.to_string()))?;
            let Some((name, parents)) = comps.split_last() else {
                match e.kind {
                    EntryKind::Dir => self.nodes[ROOT].meta = meta_of(e),
                    _ => return Err(hostile("replaces the image root".into())),
                }
                continue;
            };
            if whiteouts && name.starts_with(WHITEOUT) {
                let parent = self
                    .ensure_dirs(parents, Meta::root(0o755))
                    .map_err(|e| hostile(e.to_string()))?;
                if *name == OPAQUE {
                    let children = self.children_mut(parent);
                    children.retain(|_, id| fresh.contains(id));
                } else {
                    self.children_mut(parent).remove(&name[WHITEOUT.len()..]);
                }
                continue;
            }
            let parent = self
                .ensure_dirs(parents, Meta::root(0o755))
                .map_err(|e| hostile(e.to_string()))?;
            let existing = self.children(parent).and_then(|m| m.get(*name)).copied();
            let node = match &e.kind {
                EntryKind::Dir => {
                    if let Some(id) = existing {
                        if let Kind::Dir(_) = self.nodes[id].kind {
                            self.nodes[id].meta = meta_of(e);
                            fresh.insert(id);
                            continue;
                        }
                    }
                    Node {
                        meta: meta_of(e),
                        kind: Kind::Dir(BTreeMap::new()),
                    }
                }
                EntryKind::File { sha, size } => {
                    self.inodes.push(FileInode {
                        sha: *sha,
                        size: *size,
                        meta: meta_of(e),
                    });
                    Node {
                        meta: meta_of(e),
                        kind: Kind::File(self.inodes.len() - 1),
                    }
                }
                EntryKind::Hardlink(target) => {
                    let tcomps = components(target).map_err(|r| {
                        hostile(format!("is a hard link to {} which {r}", lossy(target)))
                    })?;
                    let mut cur = ROOT;
                    for (i, c) in tcomps.iter().enumerate() {
                        let step = match &self.nodes[cur].kind {
                            Kind::Dir(m) => m.get(*c).copied(),
                            Kind::Symlink(_) => {
                                return Err(hostile(format!(
                                    "is a hard link to {} through the symlink {}",
                                    lossy(target),
                                    lossy(&tcomps[..i].join(&b'/'))
                                )))
                            }
                            _ => None,
                        };
                        cur = step.ok_or_else(|| {
                            hostile(format!(
                                "is a hard link to {}, which does not exist in the image",
                                lossy(target)
                            ))
                        })?;
                    }
                    match &self.nodes[cur].kind {
                        Kind::Dir(_) => {
                            return Err(hostile(format!(
                                "is a hard link to the directory {}",
                                lossy(target)
                            )))
                        }
                        _ => self.nodes[cur].clone(),
                    }
                }
                EntryKind::Symlink(t) => Node {
                    meta: meta_of(e),
                    kind: Kind::Symlink(t.clone()),
                },
                EntryKind::Char(a, b) => Node {
                    meta: meta_of(e),
                    kind: Kind::Char(*a, *b),
                },
                EntryKind::Block(a, b) => Node {
                    meta: meta_of(e),
                    kind: Kind::Block(*a, *b),
                },
                EntryKind::Fifo => Node {
                    meta: meta_of(e),
                    kind: Kind::Fifo,
                },
            };
            let id = self.push(node);
            fresh.insert(id);
            self.children_mut(parent).insert(name.to_vec(), id);
        }
        Ok(())
    }

    /// Adds a regular file whose content is in the spool.
    pub fn add_file(
        &mut self,
        path: &[u8],
        sha: Sha,
        size: u64,
        meta: Meta,
        parent_meta: Meta,
    ) -> Result<(), PathError> {
        self.add_inode(path, FileInode { sha, size, meta }, meta, parent_meta)
    }
}

impl<I> Tree<I> {
    /// Adds a directory (and missing parents with `parent_meta`); an existing directory gets `meta`.
    pub fn add_dir(
        &mut self,
        path: &[u8],
        meta: Meta,
        parent_meta: Meta,
    ) -> Result<NodeId, PathError> {
        let comps = components(path)?;
        let Some((name, parents)) = comps.split_last() else {
            self.nodes[ROOT].meta = meta;
            return Ok(ROOT);
        };
        let parent = self.ensure_dirs(parents, parent_meta)?;
        if let Some(&id) = self.children(parent).and_then(|m| m.get(*name)) {
            if let Kind::Dir(_) = self.nodes[id].kind {
                self.nodes[id].meta = meta;
                return Ok(id);
            }
        }
        let id = self.push(Node {
            meta,
            kind: Kind::Dir(BTreeMap::new()),
        });
        self.children_mut(parent).insert(name.to_vec(), id);
        Ok(id)
    }

    /// Puts a non-directory node at `path`, replacing whatever was there.
    pub fn add_leaf(
        &mut self,
        path: &[u8],
        node: Node,
        parent_meta: Meta,
    ) -> Result<(), PathError> {
        let comps = components(path)?;
        let (name, parents) = comps.split_last().ok_or(PathError::Root)?;
        let parent = self.ensure_dirs(parents, parent_meta)?;
        let id = self.push(node);
        self.children_mut(parent).insert(name.to_vec(), id);
        Ok(())
    }

    /// Adds a regular file whose content and metadata are `inode`.
    pub fn add_inode(
        &mut self,
        path: &[u8],
        inode: I,
        meta: Meta,
        parent_meta: Meta,
    ) -> Result<(), PathError> {
        self.inodes.push(inode);
        let kind = Kind::File(self.inodes.len() - 1);
        self.add_leaf(path, Node { meta, kind }, parent_meta)
    }

    /// Adds `node` at `path` only if nothing is there (LinuxKit's "touch" list).
    pub fn add_if_missing(&mut self, path: &[u8], node: Node) -> Result<(), PathError> {
        if self.lookup(path).is_some() {
            return Ok(());
        }
        match node.kind {
            Kind::Dir(_) => self.add_dir(path, node.meta, Meta::root(0o755)).map(|_| ()),
            Kind::File(_) => unreachable!("use add_file"),
            _ => self.add_leaf(path, node, Meta::root(0o755)),
        }
    }
}

impl<I: Clone> Tree<I> {
    /// Copies `src` into this tree at the directory `at` (created if missing).
    /// Files keep sharing inodes through `inodes` (one map per source tree):
    /// grafting the same source twice makes hard links, not copies.
    /// Returns a description of each conflict it resolved by keeping a directory.
    pub fn graft(
        &mut self,
        src: &Tree<I>,
        at: &[u8],
        inodes: &mut HashMap<InodeId, InodeId>,
    ) -> Result<Vec<String>, PathError> {
        let comps = components(at)?;
        let dst_root = self.ensure_dirs(&comps, Meta::root(0o755))?;
        if dst_root != ROOT {
            self.nodes[dst_root].meta = src.nodes[ROOT].meta;
        }
        let mut kept = Vec::new();
        // Explicit stack: hostile layers may nest directories very deep.
        let mut stack: Vec<(NodeId, NodeId, Vec<u8>)> = vec![(ROOT, dst_root, at.to_vec())];
        while let Some((s, d, path)) = stack.pop() {
            let Kind::Dir(children) = &src.nodes[s].kind else {
                continue;
            };
            for (name, &sid) in children {
                let snode = &src.nodes[sid];
                let existing = self.children(d).and_then(|m| m.get(name)).copied();
                let child_path = join(&path, name);
                match (&snode.kind, existing.map(|id| &self.nodes[id].kind)) {
                    (Kind::Dir(_), Some(Kind::Dir(_))) => {
                        let id = existing.expect("matched Some");
                        self.nodes[id].meta = snode.meta;
                        stack.push((sid, id, child_path));
                    }
                    (_, Some(Kind::Dir(m))) if !m.is_empty() => {
                        // The kernel's unpacker cannot replace a non-empty directory either.
                        kept.push(lossy(&child_path));
                    }
                    (Kind::Dir(_), _) => {
                        let id = self.push(Node {
                            meta: snode.meta,
                            kind: Kind::Dir(BTreeMap::new()),
                        });
                        self.children_mut(d).insert(name.clone(), id);
                        stack.push((sid, id, child_path));
                    }
                    (kind, _) => {
                        let kind = match kind {
                            Kind::File(ino) => {
                                let next = self.inodes.len();
                                let mapped = *inodes.entry(*ino).or_insert(next);
                                if mapped == next {
                                    self.inodes.push(src.inodes[*ino].clone());
                                }
                                Kind::File(mapped)
                            }
                            other => other.clone(),
                        };
                        let id = self.push(Node {
                            meta: snode.meta,
                            kind,
                        });
                        self.children_mut(d).insert(name.clone(), id);
                    }
                }
            }
        }
        Ok(kept)
    }
}

impl<I> Tree<I> {
    /// Every node but the root, parents before children, siblings sorted by name.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = Vec::new();
        let mut stack: Vec<(Vec<u8>, NodeId)> = Vec::new();
        let push_children = |stack: &mut Vec<(Vec<u8>, NodeId)>, prefix: &[u8], dir: &Node| {
            if let Kind::Dir(children) = &dir.kind {
                for (name, &id) in children.iter().rev() {
                    stack.push((join(prefix, name), id));
                }
            }
        };
        push_children(&mut stack, b"", &self.nodes[ROOT]);
        while let Some((path, id)) = stack.pop() {
            push_children(&mut stack, &path, &self.nodes[id]);
            out.push((path, id));
        }
        out
    }
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(prefix.len() + 1 + name.len());
    p.extend_from_slice(prefix);
    if !prefix.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn meta_of(e: &LayerEntry) -> Meta {
    Meta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn remove_takes_a_subtree_and_only_what_is_there() {
        let mut t: Tree<u8> = Tree::default();
        t.add_inode(b"a/b/c", 1, Meta::root(0o644), Meta::root(0o755))
            .unwrap();
        t.add_inode(b"a/d", 2, Meta::root(0o644), Meta::root(0o755))
            .unwrap();
        assert!(t.remove(b"a/b"));
        assert!(t.lookup(b"a/b/c").is_none() && t.lookup(b"a/b").is_none());
        assert!(t.lookup(b"a/d").is_some());
        assert!(!t.remove(b"a/b"));
        assert!(!t.remove(b"x/y"));
        assert!(!t.remove(b""));
    }
    use super::*;

    fn names<I>(t: &Tree<I>, order: Vec<(Vec<u8>, NodeId)>) -> Vec<String> {
        let _ = t;
        order
            .into_iter()
            .map(|(p, _)| String::from_utf8(p).unwrap())
            .collect()
    }

    #[test]
    fn walk_is_a_tree_walk_and_walk_by_path_is_tar_order() {
        let mut t: Tree<u32> = Tree::default();
        let m = Meta::root(0o644);
        for p in ["a/c", "a-b", "a/d"] {
            t.add_inode(p.as_bytes(), 0, m, Meta::root(0o755)).unwrap();
        }
        assert_eq!(names(&t, t.walk()), ["a", "a/c", "a/d", "a-b"]);
        assert_eq!(names(&t, t.walk_by_path()), ["a", "a-b", "a/c", "a/d"]);
    }

    #[test]
    fn map_inodes_visits_each_reachable_inode_once() {
        let parents = Meta::root(0o755);
        let m = Meta::root(0o644);
        let mut src: Tree<u32> = Tree::default();
        src.add_inode(b"f", 1, m, parents).unwrap();
        // Replaced: inode 2 is no longer reachable.
        src.add_inode(b"g", 2, m, parents).unwrap();
        src.add_inode(b"g", 3, m, parents).unwrap();
        // Grafted twice with one map: x/f and y/f are hard links.
        let mut t: Tree<u32> = Tree::default();
        let mut shared = HashMap::new();
        t.graft(&src, b"x", &mut shared).unwrap();
        t.graft(&src, b"y", &mut shared).unwrap();
        let mut seen = Vec::new();
        let mapped = t
            .map_inodes(|i| {
                seen.push(*i);
                Ok::<_, ()>(format!("inode {i}"))
            })
            .unwrap();
        assert_eq!(seen, [1, 3]);
        assert_eq!(mapped.file(b"y/g").map(String::as_str), Some("inode 3"));
        let ino = |p: &[u8]| match mapped.node(mapped.lookup(p).unwrap()).kind {
            Kind::File(i) => i,
            _ => panic!("not a file"),
        };
        assert_eq!(ino(b"x/f"), ino(b"y/f"), "hard links still share");
        // An error from `f` stops the mapping.
        assert_eq!(
            t.map_inodes(|_| Err::<u8, _>("unreadable")).unwrap_err(),
            "unreadable"
        );
    }
}
