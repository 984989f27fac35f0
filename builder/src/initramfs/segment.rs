//! Splitting the root tree into archives that change independently.
//!
//! The kernel unpacks an initramfs made of several compressed newc archives
//! one after another into the same root, so the tree can be written as one
//! archive per part: each image placed under `containers/` (every placement
//! of it, since hard links cannot cross archives), each top-level directory,
//! and the loose top-level entries. A changed service's settings or a
//! changed `files` entry then touch one small archive, and the others come
//! out of the segment cache unchanged.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

use super::newc::{write_entries, Bodies};
use crate::assemble::{Kind, NodeId, Tree};

/// The directory whose deeper entries are grouped per placed image.
const CONTAINERS: &[u8] = b"containers";
/// `containers/SECTION/NAME/rootfs` (or `containers/volumes/NAME/lower`).
const PLACEMENT_DEPTH: usize = 4;

/// One archive's entries, in walk order.
pub type Entries = Vec<(Vec<u8>, NodeId)>;

/// Splits `tree` into archives whose concatenation unpacks to the same tree
/// as one archive of it: every parent comes in the same or an earlier
/// archive, every link of a hard-linked file in the same one. If the tree
/// defeats the rules (a hard link joining parts out of order), it is one
/// archive.
pub fn split(tree: &Tree) -> Vec<Entries> {
    let walk = tree.walk();
    let mut group_of: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new(); // union-find over groups
    let mut entry_group = Vec::with_capacity(walk.len());
    let mut inode_group: HashMap<usize, usize> = HashMap::new();
    for (path, id) in &walk {
        let label = group_label(path, matches!(tree.node(*id).kind, Kind::Dir(_)));
        let g = *group_of.entry(label.to_vec()).or_insert_with(|| {
            parent.push(parent.len());
            parent.len() - 1
        });
        if let Kind::File(ino) = tree.node(*id).kind {
            match inode_group.get(&ino) {
                Some(&other) => union(&mut parent, other, g),
                None => {
                    inode_group.insert(ino, g);
                }
            }
        }
        entry_group.push(g);
    }
    // Archives in order of their first entry.
    let mut order: HashMap<usize, usize> = HashMap::new();
    let mut out: Vec<Entries> = Vec::new();
    let mut archive_of_path: HashMap<&[u8], usize> = HashMap::new();
    for ((path, id), g) in walk.iter().zip(entry_group) {
        let root = find(&mut parent, g);
        let next = out.len();
        let a = *order.entry(root).or_insert(next);
        if a == out.len() {
            out.push(Vec::new());
        }
        if let Some(dir) = parent_dir(path) {
            match archive_of_path.get(dir) {
                Some(&pa) if pa <= a => {}
                _ => return vec![walk],
            }
        }
        archive_of_path.insert(path, a);
        out[a].push((path.clone(), *id));
    }
    out
}

/// The part an entry belongs to, by its path alone.
fn group_label(path: &[u8], is_dir: bool) -> &[u8] {
    let mut slashes = path.iter().enumerate().filter(|(_, b)| **b == b'/');
    let first = path.iter().position(|b| *b == b'/');
    if path.starts_with(CONTAINERS) && first == Some(CONTAINERS.len()) {
        // Strictly below a placement directory: that placement's image.
        if let Some((i, _)) = slashes.nth(PLACEMENT_DEPTH - 1) {
            return &path[..i];
        }
        return CONTAINERS;
    }
    match first {
        Some(i) => &path[..i],
        None if is_dir => path,
        None => b"",
    }
}

fn parent_dir(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|b| *b == b'/').map(|i| &path[..i])
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    // The older group stays the root, so order follows first appearance.
    let (lo, hi) = (ra.min(rb), ra.max(rb));
    parent[hi] = lo;
}

/// An archive's cache key and uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    pub key: [u8; 32],
    pub len: u64,
}

/// Hashes everything an archive's compressed bytes depend on: the
/// compressor's settings and the archive with each file's data replaced by
/// its content hash.
pub fn recipe(
    tree: &Tree,
    entries: &[(Vec<u8>, NodeId)],
    mtime: u32,
    settings: &str,
) -> std::io::Result<Recipe> {
    let mut h = HashWriter(Sha256::new());
    h.0.update(b"osk-segment-1\0");
    h.0.update(settings.as_bytes());
    h.0.update(b"\0");
    let (h, len) = write_entries(tree, entries, Bodies::Recipe, h, mtime)?;
    Ok(Recipe {
        key: h.0.finalize().into(),
        len,
    })
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
