//! The store is a real OCI layout: skopeo reads what osk writes, and osk imports what skopeo writes.

use std::process::Command;

use oci_spec::image::{ImageConfigurationBuilder, MediaType, RootFsBuilder};
use osk_builder::reference::Reference;
use osk_builder::store::{ArchiveFormat, Store};

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo must be installed (apt-get install skopeo; .ci/run does it)");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn skopeo_reads_the_store_and_osk_imports_skopeo_output() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let layer = store
        .put_bytes(MediaType::ImageLayerGzip, &gzip_empty_tar())
        .unwrap();
    let config = ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .build()
        .unwrap();
    let r = Reference::parse("osk/skopeo-test:1").unwrap();
    let desc = store.write_image(&r, &config, vec![layer]).unwrap();

    // skopeo reads the store itself, by the full reference.
    let store_ref = format!("oci:{}:{}", store.root().display(), r);
    let inspect = skopeo(&["inspect", "--raw", &store_ref]);
    assert!(inspect.contains("\"layers\""), "{inspect}");

    // skopeo copies it into a layout of its own, naming it only by a tag.
    let copy = dir.path().join("copy");
    skopeo(&["copy", &store_ref, &format!("oci:{}:v1", copy.display())]);
    let dst = Store::open(dir.path().join("dst")).unwrap();
    let err = dst.import(&copy, None).unwrap_err().to_string();
    assert!(err.contains("--as"), "{err}");
    let named = Reference::parse("osk/from-skopeo:v1").unwrap();
    dst.import(&copy, Some(&named)).unwrap();
    let img = dst.image(&named, "linux", "amd64").unwrap();
    assert_eq!(img.manifest.layers().len(), 1);
    assert_eq!(img.manifest_digest.as_str(), desc.digest().to_string());

    // An exported archive is readable by skopeo as oci-archive.
    let tar = dir.path().join("x.tar");
    store.export(&r, &tar, ArchiveFormat::Tar).unwrap();
    skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}", tar.display()),
    ]);
}

fn gzip_empty_tar() -> Vec<u8> {
    // 1024 zero bytes are an empty tar; gzip it so the layer matches its media type.
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&[0u8; 1024]).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// Whether `tool` runs; tests that need it say so and skip when it is absent
/// (CI installs skopeo and umoci with .ci/host-packages.sh).
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed (apt-get install {tool})");
    }
    ok
}

#[test]
fn export_names_the_image_for_every_importer_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let layer = crate::support::layer(&[crate::support::E::File("etc/hello", b"hello\n", 0o644)]);
    // umoci needs the config's diff_ids, as real images have them.
    let desc = store
        .put_bytes(MediaType::ImageLayerGzip, &crate::support::gzip(&layer))
        .unwrap();
    let config = ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{}", sha256_hex(&layer))])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let r = Reference::parse("example.org/osk/export:1.0").unwrap();
    store.write_image(&r, &config, vec![desc]).unwrap();
    let img = store.image(&r, "linux", "amd64").unwrap();
    let full = r.without_digest().to_string();
    let tar = dir.path().join("x.tar");
    store.export(&r, &tar, ArchiveFormat::Tar).unwrap();
    let layout = dir.path().join("layout");
    store.export(&r, &layout, ArchiveFormat::Dir).unwrap();

    // Both names, in the archive and in the directory.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let ann = &index["manifests"][0]["annotations"];
    assert_eq!(
        ann["org.opencontainers.image.ref.name"],
        full.as_str(),
        "{index}"
    );
    assert_eq!(ann["io.containerd.image.name"], full.as_str(), "{index}");
    let listing = crate::support::sh(&format!("tar -xOf {} index.json", tar.display()));
    assert!(
        listing.contains("\"io.containerd.image.name\""),
        "{listing}"
    );

    // Back into another store under its own name, with the same digest.
    let back = Store::open(dir.path().join("back")).unwrap();
    assert_eq!(back.import(&tar, None).unwrap(), vec![r.without_digest()]);
    assert_eq!(
        back.image(&r, "linux", "amd64").unwrap().manifest_digest,
        img.manifest_digest
    );

    if have("skopeo") {
        // skopeo copies the archive to a layout of its own, unchanged.
        let copy = dir.path().join("skopeo-copy");
        skopeo(&[
            "copy",
            &format!("oci-archive:{}", tar.display()),
            &format!("oci:{}:v1", copy.display()),
        ]);
        let again = Store::open(dir.path().join("again")).unwrap();
        let named = Reference::parse("osk/again:v1").unwrap();
        again.import(&copy, Some(&named)).unwrap();
        assert_eq!(
            again
                .image(&named, "linux", "amd64")
                .unwrap()
                .manifest_digest,
            img.manifest_digest
        );
    }
    if have("umoci") {
        // umoci finds the image by the name osk wrote and unpacks its file.
        let ls = Command::new("umoci")
            .args(["ls", "--layout"])
            .arg(&layout)
            .output()
            .unwrap();
        assert!(
            ls.status.success(),
            "{}",
            String::from_utf8_lossy(&ls.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ls.stdout).trim(), full);
        let bundle = dir.path().join("bundle");
        let out = Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{full}", layout.display()))
            .arg(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(bundle.join("rootfs/etc/hello")).unwrap(),
            b"hello\n"
        );
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// `osk cache export --format docker-archive` writes what `docker load`
/// reads; skopeo's docker-archive transport is the same reader, and copying
/// back to OCI gives the image osk stored, layer for layer.
#[test]
fn skopeo_reads_a_docker_archive_export() {
    if !have("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let layer = crate::support::layer(&[crate::support::E::File("etc/hello", b"hello\n", 0o644)]);
    let desc = store
        .put_bytes(MediaType::ImageLayerGzip, &crate::support::gzip(&layer))
        .unwrap();
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let config = ImageConfigurationBuilder::default()
        .architecture("amd64")
        .os("linux")
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.clone()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let r = Reference::parse("osk/docker-export:1").unwrap();
    store.write_image(&r, &config, vec![desc]).unwrap();
    let tar = dir.path().join("docker.tar");
    store.export_docker_archive(&r, "amd64", &tar).unwrap();

    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}", tar.display()),
    ]))
    .unwrap();
    assert_eq!(inspect["Architecture"], "amd64", "{inspect}");
    // The archive's tag is what `docker load` names the image.
    let named: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!(
            "docker-archive:{}:docker.io/osk/docker-export:1",
            tar.display()
        ),
    ]))
    .unwrap();
    assert_eq!(named["Layers"].as_array().map(Vec::len), Some(1), "{named}");

    // Copied to an OCI layout, the one layer unpacks to the file osk stored.
    let copy = dir.path().join("copy");
    skopeo(&[
        "copy",
        &format!("docker-archive:{}", tar.display()),
        &format!("oci:{}:v1", copy.display()),
    ]);
    let back = Store::open(dir.path().join("back")).unwrap();
    let again = Reference::parse("osk/back:v1").unwrap();
    back.import(&copy, Some(&again)).unwrap();
    let img = back.image(&again, "linux", "amd64").unwrap();
    assert_eq!(img.config.rootfs().diff_ids(), &vec![diff_id]);
}
