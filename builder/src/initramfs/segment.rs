//! Splitting the root tree into archives that change independently.
//!
//! The kernel unpacks an initramfs made of several compressed newc archives
//! one after another into the same root, so the tree can be written as one
//! archive per part. The parts follow what users change between builds
//! and what compresses together:
//! - the bundles' skeleton: `containers/` down to each `rootfs` (or volume
//!   `lower`) directory, with every `config.json` and `runtime.json`, so a
//!   changed service setting touches only this small archive;
//! - the content of every image, init and containers alike, in one
//!   archive: the same libc or busybox in several images is found again
//!   inside zstd's window, as in a single archive;
//! - the kernel's modules, which share nothing with the rest and compress
//!   beside it on another core;
//! - `etc`, where `files` entries usually go, and the loose top-level files.
//!
//! Archives are written skeleton first, then content, then the others in
//! the order they first appear, so every parent directory comes first.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

use super::newc::{write_entries, Bodies};
use crate::assemble::{Kind, NodeId, Tree};

/// The directory holding the bundles.
const CONTAINERS: &[u8] = b"containers";
/// `containers/SECTION/NAME/rootfs` (or `containers/volumes/NAME/lower`).
const PLACEMENT_DEPTH: usize = 4;
/// The label of the bundles' skeleton: written first.
const SKELETON: &[u8] = CONTAINERS;
/// The label of all image content (not a path: it has a NUL).
const CONTENT: &[u8] = b"\0content";
/// Where kernel modules live, merged `/usr` or not.
const MODULES: [&[u8]; 2] = [b"lib/modules", b"usr/lib/modules"];
/// The top-level directory that keeps its own archive.
const ETC: &[u8] = b"etc";

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
    let mut rank: Vec<u8> = Vec::new(); // per group: where its archive goes
    let mut entry_group = Vec::with_capacity(walk.len());
    let mut inode_group: HashMap<usize, usize> = HashMap::new();
    for (path, id) in &walk {
        let label = group_label(path, matches!(tree.node(*id).kind, Kind::Dir(_)));
        let g = *group_of.entry(label.to_vec()).or_insert_with(|| {
            parent.push(parent.len());
            rank.push(match label {
                SKELETON => 0,
                CONTENT => 1,
                _ => 2,
            });
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
    // Archives by rank, then in order of their first entry. A group joined
    // to another by a hard link goes where the earliest-ranked of them goes.
    let mut first_seen: Vec<usize> = Vec::new();
    let mut root_rank: HashMap<usize, u8> = HashMap::new();
    for &g in &entry_group {
        let root = find(&mut parent, g);
        let r = root_rank.entry(root).or_insert(u8::MAX);
        if *r == u8::MAX {
            first_seen.push(root);
        }
        *r = (*r).min(rank[g]);
    }
    first_seen.sort_by_key(|root| root_rank[root]); // stable: keeps first appearance
    let order: HashMap<usize, usize> = first_seen
        .iter()
        .enumerate()
        .map(|(a, &r)| (r, a))
        .collect();
    let mut out: Vec<Entries> = vec![Vec::new(); first_seen.len()];
    let mut archive_of_path: HashMap<&[u8], usize> = HashMap::new();
    for ((path, id), g) in walk.iter().zip(entry_group) {
        let a = order[&find(&mut parent, g)];
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
    let top = path.iter().position(|b| *b == b'/');
    if path == CONTAINERS || (path.starts_with(CONTAINERS) && top == Some(CONTAINERS.len())) {
        // Strictly below a placement directory: an image's content.
        let slashes = path.iter().filter(|b| **b == b'/').count();
        return if slashes >= PLACEMENT_DEPTH {
            CONTENT
        } else {
            SKELETON
        };
    }
    if let Some(m) = MODULES
        .iter()
        .find(|m| path.starts_with(m) && path.get(m.len()).is_none_or(|b| *b == b'/'))
    {
        return m;
    }
    match top {
        Some(i) if &path[..i] == ETC => ETC,
        None if path == ETC => ETC,
        None if !is_dir => b"",
        _ => CONTENT,
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
