//! Layer application: OCI semantics and hostile layers, on real stores.

use crate::support;

use oci_spec::image::MediaType;
use osk_builder::assemble::{flatten, Kind, Spool, Tree};
use osk_builder::store::{Store, StoreError};
use support::{gzip, image, layer, simple, zstd, E};

fn setup() -> (tempfile::TempDir, Store, Spool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    (dir, store, spool)
}

fn names(tree: &Tree) -> Vec<String> {
    tree.walk()
        .iter()
        .map(|(p, _)| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn content(spool: &Spool, tree: &Tree, path: &str) -> Vec<u8> {
    let f = tree.file(path.as_bytes()).unwrap();
    std::fs::read(spool.content_path(&f.sha)).unwrap()
}

#[test]
fn whiteouts_and_opaque_directories() {
    let (_d, store, spool) = setup();
    let lower = layer(&[
        E::Dir("a", 0o755),
        E::File("a/x", b"x", 0o644),
        E::File("a/y", b"y", 0o644),
        E::Dir("d", 0o755),
        E::File("d/old", b"old", 0o644),
        E::Dir("d/sub", 0o755),
        E::File("gone", b"g", 0o644),
    ]);
    let upper = layer(&[
        E::File("a/.wh.x", b"", 0o644),
        E::File(".wh.gone", b"", 0o644),
        E::File("d/new-before", b"n", 0o644),
        E::File("d/.wh..wh..opq", b"", 0o644),
        E::File("d/new", b"n", 0o644),
    ]);
    let img = image(
        &store,
        "test/wh:1",
        vec![
            (gzip(&lower), MediaType::ImageLayerGzip),
            (zstd(&upper), MediaType::ImageLayerZstd),
        ],
    );
    let tree = flatten(&store, &spool, &img).unwrap();
    assert_eq!(names(&tree), ["a", "a/y", "d", "d/new", "d/new-before"]);
}

#[test]
fn compression_is_detected_by_content() {
    let (_d, store, spool) = setup();
    let l = layer(&[E::File("f", b"hello", 0o644)]);
    // Mislabelled: gzip bytes under the plain tar media type.
    let img = image(
        &store,
        "test/mislabel:1",
        vec![(gzip(&l), MediaType::ImageLayer)],
    );
    let tree = flatten(&store, &spool, &img).unwrap();
    assert_eq!(content(&spool, &tree, "f"), b"hello");
}

#[test]
fn links_devices_modes_and_owners() {
    let (_d, store, spool) = setup();
    let img = simple(
        &store,
        "test/kinds:1",
        &[
            E::Dir("bin", 0o755),
            E::Owned("bin/su", b"su", 0o4755, 1000, 1001),
            E::Hardlink("bin/su2", "bin/su"),
            E::Hardlink("/bin/su3", "/bin/su"),
            E::Symlink("bin/sh", "/bin/busybox"),
            E::Char("dev/null", 1, 3),
            E::Block("dev/sda", 8, 0),
            E::Fifo("run/fifo"),
        ],
    );
    let tree = flatten(&store, &spool, &img).unwrap();
    let su = *tree.file(b"bin/su").unwrap();
    assert_eq!(
        (su.meta.mode, su.meta.uid, su.meta.gid),
        (0o4755, 1000, 1001)
    );
    let ino = |p: &str| match tree.node(tree.lookup(p.as_bytes()).unwrap()).kind {
        Kind::File(i) => i,
        _ => panic!("{p} is not a file"),
    };
    assert_eq!(ino("bin/su"), ino("bin/su2"));
    assert_eq!(ino("bin/su"), ino("bin/su3"));
    let kind = |p: &str| tree.node(tree.lookup(p.as_bytes()).unwrap()).kind.clone();
    assert!(matches!(kind("bin/sh"), Kind::Symlink(t) if t == b"/bin/busybox"));
    assert!(matches!(kind("dev/null"), Kind::Char(1, 3)));
    assert!(matches!(kind("dev/sda"), Kind::Block(8, 0)));
    assert!(matches!(kind("run/fifo"), Kind::Fifo));
    // Missing parents were created.
    assert!(matches!(kind("dev"), Kind::Dir(_)));
}

fn hostile(entries: &[E], needle: &str) {
    let (d, store, spool) = setup();
    let img = simple(&store, "test/evil:6.6.6", entries);
    let err = flatten(&store, &spool, &img).unwrap_err().to_string();
    assert!(err.contains("test/evil:6.6.6"), "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(
        err.contains("layer entry"),
        "not refused as a hostile entry: {err}"
    );
    // Nothing appeared beside the store or the spool.
    let mut seen: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, ["spool", "store"]);
}

#[test]
fn rejects_dotdot_paths() {
    hostile(&[E::File("../../etc/evil", b"x", 0o644)], "`..`");
    hostile(&[E::File("a/../../evil", b"x", 0o644)], "a/../../evil");
    hostile(&[E::File("/../evil", b"x", 0o644)], "/../evil");
}

#[test]
fn rejects_writing_through_a_symlink() {
    hostile(
        &[
            E::Symlink("etc", "/etc"),
            E::File("etc/passwd", b"root::0:0", 0o644),
        ],
        "etc/passwd",
    );
    hostile(
        &[E::Symlink("up", "../../.."), E::File("up/x", b"x", 0o644)],
        "symlink",
    );
}

#[test]
fn rejects_bad_hard_links() {
    hostile(&[E::Hardlink("shadow", "../../etc/shadow")], "shadow");
    hostile(&[E::Hardlink("x", "does/not/exist")], "does not exist");
    hostile(
        &[E::Symlink("s", "/etc"), E::Hardlink("x", "s/passwd")],
        "symlink",
    );
}

#[test]
fn absolute_paths_are_normalised() {
    let (_d, store, spool) = setup();
    let img = simple(
        &store,
        "test/abs:1",
        &[E::File("/etc/hostname", b"h", 0o644)],
    );
    let tree = flatten(&store, &spool, &img).unwrap();
    assert_eq!(names(&tree), ["etc", "etc/hostname"]);
}

#[test]
fn corrupt_blob_names_image_and_digest() {
    let (_d, store, spool) = setup();
    let img = simple(
        &store,
        "test/corrupt:1",
        &[E::File("f", b"hello world", 0o644)],
    );
    let (digest, _) = img.layers().unwrap()[0].clone();
    let path = store.blob_path(&digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.iter().position(|b| *b == b'w').unwrap();
    bytes[at] = b'W';
    std::fs::write(&path, bytes).unwrap();
    let err = flatten(&store, &spool, &img).unwrap_err();
    // The message itself names the image and the blob and says what to do.
    let top = err.to_string();
    assert!(top.contains("test/corrupt:1"), "{top}");
    assert!(top.contains(digest.as_str()), "{top}");
    assert!(top.contains("osk cache rm test/corrupt:1"), "{top}");
    // The cause is the store's digest mismatch, kept only as the source.
    let source = std::error::Error::source(&err).unwrap();
    let store_err = source.downcast_ref::<Box<StoreError>>().unwrap();
    assert!(
        matches!(**store_err, StoreError::DigestMismatch { .. }),
        "{store_err:?}"
    );
    let cause = source.to_string();
    assert!(cause.contains("is corrupt"), "{cause}");
    assert!(!top.contains(&cause), "the cause is repeated: {top}");
    assert!(std::error::Error::source(source).is_none());
}

#[test]
fn warm_spool_skips_the_blob() {
    let (_d, store, spool) = setup();
    let img = simple(&store, "test/warm:1", &[E::File("f", b"cached", 0o600)]);
    let first = names(&flatten(&store, &spool, &img).unwrap());
    // The index is cached: even without the blob the tree comes back the same.
    let (digest, _) = img.layers().unwrap()[0].clone();
    std::fs::remove_file(store.blob_path(&digest)).unwrap();
    let tree = flatten(&store, &spool, &img).unwrap();
    assert_eq!(names(&tree), first);
    assert_eq!(content(&spool, &tree, "f"), b"cached");
}
