//! Segmented initramfs: same tree as one archive, cache hits equal cold
//! builds, exact invalidation, healing, and thread-count independence.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::segmented::write_segments_on;
use super::*;
use crate::assemble::{Kind, Meta, Node, Spool, Tree};

fn file(t: &mut Tree, spool: &Spool, path: &str, data: &[u8], mode: u32) {
    let sha = spool.put_bytes(data).unwrap();
    t.add_file(
        path.as_bytes(),
        sha,
        data.len() as u64,
        Meta::root(mode),
        Meta::root(0o755),
    )
    .unwrap();
}

/// An image (with a hard link and a symlink), placed for two containers
/// and another image once, an init-like root and loose files.
fn system(spool: &Spool, svc_tool: &[u8], motd: &[u8], getty_config: &[u8]) -> Tree {
    let mut img = Tree::new();
    file(&mut img, spool, "bin/tool", svc_tool, 0o755);
    file(&mut img, spool, "etc/big", &vec![7u8; 300_000], 0o644);
    img.add_leaf(
        b"bin/sh",
        Node {
            meta: Meta::root(0o777),
            kind: Kind::Symlink(b"tool".to_vec()),
        },
        Meta::root(0o755),
    )
    .unwrap();
    let mut linked = Tree::new();
    file(&mut linked, spool, "lib/libc.so", b"libc", 0o644);
    let mut other = Tree::new();
    // A hard link inside one image: two paths, one inode.
    let mut inodes = HashMap::new();
    other.graft(&linked, b"", &mut inodes).unwrap();
    other.graft(&linked, b"usr", &mut inodes).unwrap();
    other
        .add_leaf(
            b"dev/null",
            Node {
                meta: Meta::root(0o666),
                kind: Kind::Char(1, 3),
            },
            Meta::root(0o755),
        )
        .unwrap();

    let mut root = Tree::new();
    file(&mut root, spool, "init", b"#!/bin/osk-init", 0o755);
    file(&mut root, spool, "usr/bin/containerd", b"containerd", 0o755);
    file(&mut root, spool, "lib/modules/6.1/virtio.ko", b"ko", 0o644);
    file(&mut root, spool, "etc/motd", motd, 0o644);
    let mut shared = HashMap::new();
    for (bundle, config) in [
        ("containers/onboot/000-setup", b"{}".as_slice()),
        ("containers/services/getty", getty_config),
        ("containers/services/sshd", b"{}".as_slice()),
    ] {
        file(
            &mut root,
            spool,
            &format!("{bundle}/config.json"),
            config,
            0o644,
        );
        root.graft(&img, format!("{bundle}/rootfs").as_bytes(), &mut shared)
            .unwrap();
    }
    root.graft(
        &other,
        b"containers/services/other/rootfs",
        &mut HashMap::new(),
    )
    .unwrap();
    root
}

fn segmented(tree: &Tree, spool: &Spool, cache: &SegmentCache, threads: usize) -> Vec<u8> {
    let mut f = tempfile::tempfile().unwrap();
    write_segments_on(tree, spool, cache, Compression::Zstd, 0, &mut f, threads).unwrap();
    read_all(f)
}

fn read_all(mut f: File) -> Vec<u8> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

fn keys(tree: &Tree) -> Vec<[u8; 32]> {
    let s = Compression::Zstd.settings();
    split(tree)
        .iter()
        .map(|p| recipe(tree, p, 0, &s).unwrap().key)
        .collect()
}

#[test]
fn segments_unpack_to_the_same_tree_as_one_archive() {
    let spool = Spool::temporary().unwrap();
    let tree = system(&spool, b"tool", b"hi", b"{}");
    let d = tempfile::tempdir().unwrap();
    let out = segmented(&tree, &spool, &SegmentCache::new(d.path()), 2);
    let one = write_newc(&tree, &spool, Vec::new(), 0).unwrap();

    let split_tree = unpack_newc(&zstd::decode_all(out.as_slice()).unwrap()).unwrap();
    let whole = unpack_newc(&one).unwrap();
    assert_eq!(split_tree, whole);
    // The fixture has what the comparison must cover.
    let sh = &whole[b"containers/services/getty/rootfs/bin/sh".as_slice()];
    assert_eq!(
        (sh.mode, sh.data.as_slice()),
        (0o120777, b"tool".as_slice())
    );
    let tool = &whole[b"containers/services/sshd/rootfs/bin/tool".as_slice()];
    assert_eq!(
        tool.link_group.as_deref(),
        Some(b"containers/onboot/000-setup/rootfs/bin/tool".as_slice())
    );
    assert_eq!(tool.data, b"tool");
    let libc = &whole[b"containers/services/other/rootfs/usr/lib/libc.so".as_slice()];
    assert!(libc.link_group.is_some());
    assert_eq!(
        whole[b"containers/services/other/rootfs/dev/null".as_slice()].rdev,
        (1, 3)
    );
    // Several archives, each with its own trailer.
    let n = split(&tree).len();
    assert!(n >= 5, "{n} segments");
    let frames = out
        .windows(4)
        .filter(|w| *w == [0x28, 0xb5, 0x2f, 0xfd])
        .count();
    assert!(frames >= n);
}

#[test]
fn a_rebuild_from_the_cache_equals_a_cold_build_on_any_thread_count() {
    let spool = Spool::temporary().unwrap();
    let tree = system(&spool, b"tool", b"hi", b"{}");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cold1 = segmented(&tree, &spool, &SegmentCache::new(a.path()), 1);
    let cold4 = segmented(&tree, &spool, &SegmentCache::new(b.path()), 4);
    assert_eq!(cold1, cold4);
    let cache = SegmentCache::new(a.path());
    let entries = cache.list().unwrap();
    assert_eq!(entries.len(), split(&tree).len());
    let warm = segmented(&tree, &spool, &cache, 4);
    assert_eq!(warm, cold1);
    assert_eq!(cache.list().unwrap(), entries, "a warm build adds nothing");
}

#[test]
fn a_change_invalidates_exactly_its_segment() {
    let spool = Spool::temporary().unwrap();
    let base = keys(&system(&spool, b"tool", b"hi", b"{}"));
    let differ = |other: Vec<[u8; 32]>| {
        assert_eq!(other.len(), base.len());
        base.iter().zip(&other).filter(|(a, b)| a != b).count()
    };
    // The image used by three containers, a files entry, a service's settings.
    assert_eq!(differ(keys(&system(&spool, b"tool2", b"hi", b"{}"))), 1);
    assert_eq!(differ(keys(&system(&spool, b"tool", b"bye", b"{}"))), 1);
    assert_eq!(
        differ(keys(&system(&spool, b"tool", b"hi", b"{\"x\":1}"))),
        1
    );
    assert_eq!(differ(keys(&system(&spool, b"tool", b"hi", b"{}"))), 0);
}

#[test]
fn a_tampered_segment_is_detected_and_healed() {
    let spool = Spool::temporary().unwrap();
    let tree = system(&spool, b"tool", b"hi", b"{}");
    let d = tempfile::tempdir().unwrap();
    let cache = SegmentCache::new(d.path());
    let cold = segmented(&tree, &spool, &cache, 2);
    let victim = &cache.list().unwrap()[0].path;
    let mut bytes = std::fs::read(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(victim, &bytes).unwrap();
    assert_eq!(cache.verify().unwrap().len(), 1);

    assert_eq!(segmented(&tree, &spool, &cache, 2), cold);
    assert!(cache.verify().unwrap().is_empty(), "the entry was rebuilt");
    // A truncated one too.
    std::fs::write(victim, b"osk-").unwrap();
    assert_eq!(segmented(&tree, &spool, &cache, 1), cold);
}

#[test]
fn a_hard_link_across_parts_keeps_one_archive_in_order() {
    let spool = Spool::temporary().unwrap();
    let mut img = Tree::new();
    file(&mut img, &spool, "x", b"x", 0o644);
    let mut root = Tree::new();
    let mut inodes = HashMap::new();
    root.graft(&img, b"bin", &mut inodes).unwrap();
    root.graft(&img, b"containers/services/a/rootfs", &mut inodes)
        .unwrap();
    root.graft(&img, b"usr", &mut inodes).unwrap();
    let parts = split(&root);
    // bin, containers and usr are joined by the link; whatever the split,
    // every link of the inode is in one archive and the tree is the same.
    let holder: Vec<usize> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.iter().any(|(path, _)| path.ends_with(b"/x")))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(holder.len(), 1, "{parts:?}");
    let d = tempfile::tempdir().unwrap();
    let out = segmented(&root, &spool, &SegmentCache::new(d.path()), 2);
    let got = unpack_newc(&zstd::decode_all(out.as_slice()).unwrap()).unwrap();
    let want = unpack_newc(&write_newc(&root, &spool, Vec::new(), 0).unwrap()).unwrap();
    assert_eq!(got, want);
}

#[test]
fn a_full_window_segment_compresses_alone_within_the_budget() {
    use super::segmented::MEMORY_BUDGET;
    let z = Compression::Zstd;
    let full = z.memory_estimate(1 << 30);
    assert!(full <= MEMORY_BUDGET, "it must still run");
    assert!(
        full + z.memory_estimate(0) > MEMORY_BUDGET,
        "nothing runs beside it"
    );
    // Two mid-sized segments do share the budget.
    assert!(2 * z.memory_estimate(20 << 20) <= MEMORY_BUDGET);
}
