//! The store is a real OCI layout: skopeo reads what osk writes, and osk imports what skopeo writes.

use std::process::Command;

use oci_spec::image::{ImageConfigurationBuilder, MediaType};
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
