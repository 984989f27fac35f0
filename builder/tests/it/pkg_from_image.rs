//! `from: REFERENCE`: a package on top of an OCI image from the local store.
//! The base images are written into a temporary store (an OCI layout) here.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder, MediaType};
use osk_builder::pkg::{self, Options};
use osk_builder::reference::Reference;
use osk_builder::store::Store;
use serde_json::Value;
use sha2::Digest;
use support::{gzip, layer, E};

const BASE: &str = "registry.example.invalid/base:1";

/// Two layers: the second whites out `opt/old` and empties `var/cache` (opaque).
fn put_base(store: &Store, name: &str, os_release: &[u8]) {
    let l1 = layer(&[
        E::Dir("etc/", 0o755),
        E::File("etc/os-release", os_release, 0o644),
        E::File("etc/motd", b"base motd\n", 0o644),
        E::Dir("bin/", 0o755),
        E::File("bin/tool", b"#!/bin/sh\n", 0o755),
        E::Hardlink("bin/tool2", "bin/tool"),
        E::Symlink("bin/sh", "tool"),
        E::Dir("opt/", 0o755),
        E::File("opt/old", b"old", 0o644),
        E::Dir("var/", 0o755),
        E::Dir("var/cache/", 0o700),
        E::File("var/cache/junk", b"junk", 0o644),
        E::Char("dev-null", 1, 3),
        E::Dir("usr/", 0o755),
        E::Dir("usr/bin/", 0o755),
    ]);
    let l2 = layer(&[
        E::File("opt/.wh.old", b"", 0o644),
        E::File("opt/new", b"new", 0o644),
        E::File("var/cache/.wh..wh..opq", b"", 0o644),
    ]);
    let descs = [l1, l2]
        .into_iter()
        .map(|l| {
            store
                .put_bytes(MediaType::ImageLayerGzip, &gzip(&l))
                .unwrap()
        })
        .collect();
    let labels: std::collections::HashMap<String, String> = [
        ("org.example.base".to_string(), "yes".to_string()),
        (
            osk_layout::CONFIG_LABEL.to_string(),
            r#"{"net":"host","readonly":true}"#.to_string(),
        ),
    ]
    .into();
    let config = ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .config(
            ConfigBuilder::default()
                .env(vec!["PATH=/bin".into(), "FOO=base".into(), "KEEP=1".into()])
                .entrypoint(vec!["/bin/tool".into()])
                .cmd(vec!["--base".into()])
                .working_dir("/srv")
                .labels(labels)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    store
        .write_image(&Reference::parse(name).unwrap(), &config, descs)
        .unwrap();
}

fn package(root: &Path, from: &str, extra: &str) -> PathBuf {
    let dir = root.join("pkgs/derived");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("build.yml"),
        format!(
            "from: \"{from}\"\nfiles:\n  - {{src: motd, dest: /etc/motd}}\nenv: [FOO=pkg, NEW=2]\n{extra}"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("motd"), "package motd\n").unwrap();
    dir
}

fn opts(root: &Path) -> Options {
    Options {
        cache_dir: root.join("debs"),
        ..Options::default()
    }
}

/// The sha256 of a built package's single (uncompressed) layer, and its
/// path -> (entry type, content).
fn layer_of(store: &Store, r: &Reference) -> (String, BTreeMap<String, (tar::EntryType, Vec<u8>)>) {
    let img = store.image(r, "linux", "amd64").unwrap();
    assert_eq!(img.manifest.layers().len(), 1);
    let gz = store.read_blob(&img.layers().unwrap()[0].0).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut raw).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&raw));
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        out.insert(path, (e.header().entry_type(), data));
    }
    (sha, out)
}

#[test]
fn package_from_store_image_has_base_files_overrides_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    put_base(&store, BASE, b"ID=base\n");
    let dir = package(tmp.path(), BASE, "cmd: [--pkg]\n");
    let r = pkg::ensure_built(&dir, &store, &opts(tmp.path())).unwrap();
    let (sha, files) = layer_of(&store, &r);
    // Pinned: the layer's bytes (entry order, headers) must not change silently.
    assert_eq!(
        sha,
        "d58ad34e12b0bf1a282d90e17fef17b82e6e35ee157f6b7839d5c437ae0138c5"
    );

    assert_eq!(files["etc/os-release"].1, b"ID=base\n");
    assert_eq!(
        files["etc/motd"].1, b"package motd\n",
        "overridden by files:"
    );
    assert_eq!(files["bin/tool2"].1, b"#!/bin/sh\n", "hard link copied");
    assert_eq!(files["bin/sh"].0, tar::EntryType::Symlink);
    assert_eq!(files["dev-null"].0, tar::EntryType::Char);
    assert_eq!(files["opt/new"].1, b"new");
    assert!(!files.contains_key("opt/old"), "whiteout applied");
    assert!(files.contains_key("var/cache"));
    assert!(!files.contains_key("var/cache/junk"), "opaque dir applied");
    // The base's real /bin stays a directory (no merged-/usr link over it).
    assert_eq!(files["bin"].0, tar::EntryType::Directory);

    let img = store.image(&r, "linux", "amd64").unwrap();
    let cfg: Value = serde_json::to_value(img.config.config().as_ref().unwrap()).unwrap();
    assert_eq!(
        cfg["Env"],
        serde_json::json!(["PATH=/bin", "FOO=pkg", "KEEP=1", "NEW=2"])
    );
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/tool"]));
    assert_eq!(cfg["Cmd"], serde_json::json!(["--pkg"]));
    assert_eq!(cfg["WorkingDir"], "/srv");
    assert_eq!(cfg["Labels"]["org.example.base"], "yes");
    // The base's LinuxKit label is a default too.
    assert_eq!(
        img.label(osk_layout::CONFIG_LABEL),
        Some(r#"{"net":"host","readonly":true}"#)
    );
}

#[test]
fn build_yml_config_and_entrypoint_override_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    put_base(&store, BASE, b"ID=base\n");
    let dir = package(
        tmp.path(),
        BASE,
        "entrypoint: [/bin/sh]\nworkdir: /\nconfig:\n  pid: host\n",
    );
    let r = pkg::ensure_built(&dir, &store, &opts(tmp.path())).unwrap();
    let img = store.image(&r, "linux", "amd64").unwrap();
    let cfg = img.config.config().clone().unwrap();
    assert_eq!(
        cfg.entrypoint().as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    // As in a Dockerfile, a new entrypoint drops the base's command.
    assert_eq!(cfg.cmd(), &None);
    assert_eq!(cfg.working_dir().as_deref(), Some("/"));
    assert_eq!(
        img.label(osk_layout::CONFIG_LABEL),
        Some(r#"{"pid":"host"}"#)
    );
    assert_eq!(img.label("org.example.base"), Some("yes"));
}

#[test]
fn changed_base_image_changes_the_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let o = opts(tmp.path());
    put_base(&store, BASE, b"ID=base\n");
    let dir = package(tmp.path(), BASE, "");
    let first = pkg::show_tag(&dir, &store, &o).unwrap();
    assert_eq!(pkg::show_tag(&dir, &store, &o).unwrap(), first);
    put_base(&store, BASE, b"ID=base-v2\n");
    let second = pkg::show_tag(&dir, &store, &o).unwrap();
    assert_ne!(first, second);
    let r = pkg::ensure_built(&dir, &store, &o).unwrap();
    assert_eq!(r.familiar(), second);
    assert_eq!(layer_of(&store, &r).1["etc/os-release"].1, b"ID=base-v2\n");

    // A digest-pinned reference names the same image.
    let digest = store
        .image(&Reference::parse(BASE).unwrap(), "linux", "amd64")
        .unwrap()
        .manifest_digest;
    let pinned = package(tmp.path(), &format!("{BASE}@{digest}"), "");
    let r = pkg::ensure_built(&pinned, &store, &o).unwrap();
    assert_eq!(layer_of(&store, &r).1["etc/os-release"].1, b"ID=base-v2\n");
}

#[test]
fn missing_base_image_is_an_error_saying_how_to_get_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    // A loopback registry nobody listens on: the pull fails at once.
    let missing = "localhost:1/osk-test/missing:1";
    let dir = package(tmp.path(), missing, "");
    let err = pkg::build(&dir, &store, &opts(tmp.path()))
        .unwrap_err()
        .to_string();
    for want in [
        "build.yml",
        missing,
        "not in the store",
        "osk cache import",
        "osk pull",
    ] {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }
}
