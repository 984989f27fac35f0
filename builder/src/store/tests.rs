//! The store: blobs verified on write and read, images tagged and removed, platform
//! indexes, and import/export round trips.

use super::*;
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder, PlatformBuilder};

fn config(label: &str) -> ImageConfiguration {
    let mut labels = std::collections::HashMap::new();
    labels.insert("org.mobyproject.config".to_string(), label.to_string());
    ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .config(ConfigBuilder::default().labels(labels).build().unwrap())
        .build()
        .unwrap()
}

fn sample(store: &Store, name: &str, content: &[u8]) -> (Reference, Descriptor) {
    let layer = store.put_bytes(MediaType::ImageLayer, content).unwrap();
    let r = Reference::parse(name).unwrap();
    let d = store.write_image(&r, &config("{}"), vec![layer]).unwrap();
    (r, d)
}

#[test]
fn creates_an_oci_layout() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path()).unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
        OCI_LAYOUT
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert!(dir.path().join("blobs/sha256").is_dir());
}

#[test]
fn put_blob_verifies_expected_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (d, n) = store.put_blob(&b"hello"[..], None).unwrap();
    assert_eq!(n, 5);
    assert_eq!(d, Digest::of(b"hello"));
    assert_eq!(store.read_blob(&d).unwrap(), b"hello");
    let err = store.put_blob(&b"hellO"[..], Some(&d)).unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    // Nothing but the one good blob was kept.
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn write_and_load_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (r, d) = sample(&store, "osk/demo:1", b"layer");
    let img = store.image(&r, "linux", "amd64").unwrap();
    assert_eq!(img.manifest_digest.as_str(), d.digest().to_string());
    assert_eq!(img.layers().unwrap()[0].0, Digest::of(b"layer"));
    assert_eq!(img.label("org.mobyproject.config"), Some("{}"));
    // By digest too.
    let by_digest = r.with_digest(img.manifest_digest.clone());
    assert_eq!(
        store
            .image(&by_digest, "linux", "amd64")
            .unwrap()
            .manifest_digest,
        img.manifest_digest
    );
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|e| e.reference.to_string())
        .collect();
    assert_eq!(listed, ["docker.io/osk/demo:1"]);
}

#[test]
fn same_inputs_same_digest() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (_, da) = sample(&Store::open(a.path()).unwrap(), "osk/x:1", b"abc");
    let (_, db) = sample(&Store::open(b.path()).unwrap(), "osk/x:1", b"abc");
    assert_eq!(da.digest(), db.digest());
}

#[test]
fn retag_replaces_and_missing_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    sample(&store, "osk/x:1", b"one");
    let (r, d2) = sample(&store, "osk/x:1", b"two");
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(store.resolve(&r).unwrap().unwrap().digest(), d2.digest());
    let err = store
        .image(&Reference::parse("osk/nope:1").unwrap(), "linux", "amd64")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("osk/nope:1") && err.contains("osk cache import"),
        "{err}"
    );
}

#[test]
fn corrupt_blob_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (r, _) = sample(&store, "osk/x:1", b"layer");
    let img = store.image(&r, "linux", "amd64").unwrap();
    let config_digest = descriptor_digest(img.manifest.config()).unwrap();
    fs::write(store.blob_path(&config_digest), b"{\"tampered\":1}").unwrap();
    let err = store.image(&r, "linux", "amd64").unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("osk/x:1"), "{err}");
    assert!(err.to_string().contains("osk cache rm osk/x:1"), "{err}");
    // A layer streamed through open_blob fails at EOF.
    let layer = Digest::of(b"layer");
    fs::write(store.blob_path(&layer), b"LAYER").unwrap();
    let mut buf = Vec::new();
    let e = store
        .open_blob(&layer)
        .unwrap()
        .read_to_end(&mut buf)
        .unwrap_err();
    assert!(matches!(
        verify_error(e, Path::new("x")),
        StoreError::DigestMismatch { .. }
    ));
}

#[test]
fn remove_collects_unshared_blobs_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, _) = sample(&store, "osk/a:1", b"shared");
    let (b, _) = sample(&store, "osk/b:1", b"shared");
    let layer = Digest::of(b"shared");
    // Identical images share every blob: removing one frees nothing.
    assert_eq!(store.remove(&a).unwrap(), 0);
    assert!(store.has_blob(&layer));
    assert!(store.remove(&b).unwrap() > 0);
    assert!(!store.has_blob(&layer));
    assert!(matches!(store.remove(&b), Err(StoreError::NotFound { .. })));
}

#[test]
fn index_resolves_to_platform() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (_, amd) = sample(&store, "tmp/amd:1", b"amd64 layer");
    let mut amd = amd;
    amd.set_annotations(None);
    amd.set_platform(Some(
        PlatformBuilder::default()
            .os("linux")
            .architecture("amd64")
            .build()
            .unwrap(),
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![amd.clone()])
        .build()
        .unwrap();
    let idx = store
        .put_bytes(MediaType::ImageIndex, &to_json(&index))
        .unwrap();
    let r = Reference::parse("multi:1").unwrap();
    store.tag(&r, &idx).unwrap();
    let img = store.image(&r, "linux", "amd64").unwrap();
    assert_eq!(img.manifest_digest.as_str(), amd.digest().to_string());
    let err = store.image(&r, "linux", "arm64").unwrap_err().to_string();
    assert!(
        err.contains("linux/arm64") && err.contains("linux/amd64"),
        "{err}"
    );
}

#[test]
fn export_import_round_trip_tar_and_dir() {
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(src.path()).unwrap();
    let (r, d) = sample(&store, "osk/demo:2", b"content");
    let out = tempfile::tempdir().unwrap();
    for (name, fmt) in [
        ("demo.tar", ArchiveFormat::Tar),
        ("demo", ArchiveFormat::Dir),
    ] {
        let path = out.path().join(name);
        store.export(&r, &path, fmt).unwrap();
        let dst_dir = tempfile::tempdir().unwrap();
        let dst = Store::open(dst_dir.path()).unwrap();
        assert_eq!(dst.import(&path, None).unwrap(), vec![r.clone()]);
        assert_eq!(dst.resolve(&r).unwrap().unwrap().digest(), d.digest());
        dst.image(&r, "linux", "amd64").unwrap();
        // Renaming on import.
        let other = Reference::parse("osk/renamed:1").unwrap();
        dst.import(&path, Some(&other)).unwrap();
        assert!(dst.resolve(&other).unwrap().is_some());
    }
    // Exporting the same image twice gives the same archive bytes.
    store
        .export(&r, &out.path().join("again.tar"), ArchiveFormat::Tar)
        .unwrap();
    assert_eq!(
        fs::read(out.path().join("demo.tar")).unwrap(),
        fs::read(out.path().join("again.tar")).unwrap()
    );
}

#[test]
fn import_rejects_a_corrupt_layout() {
    let src = tempfile::tempdir().unwrap();
    let store = Store::open(src.path()).unwrap();
    let (r, _) = sample(&store, "osk/demo:3", b"content");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("layout");
    store.export(&r, &path, ArchiveFormat::Dir).unwrap();
    fs::write(
        path.join("blobs/sha256").join(Digest::of(b"content").hex()),
        b"evil",
    )
    .unwrap();
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    let err = dst.import(&path, None).unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(dst.list().unwrap().is_empty());
}
