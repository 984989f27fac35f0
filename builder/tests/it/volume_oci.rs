//! `format: oci` volumes: the image lands in the volume's `lower` as an OCI
//! image layout that skopeo and umoci (standing in for containerd's
//! importer) can read, with only the platforms asked for.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder, MediaType,
    PlatformBuilder, RootFsBuilder,
};
use osk_builder::assemble::Spool;
use osk_builder::build::{build, plan, BuildError, BuildOptions, BuildPlan, Compression, Format};
use osk_builder::manifest::{self, ImageRef};
use osk_builder::reference::{Digest, Reference};
use osk_builder::store::{to_json, Image, Store};
use support::{layer, sh, E};

const NODE: &str = "\
volumes:
  - name: images
    image: test/data:1
    format: oci
  - name: multi
    image: test/multi:1
    format: oci
    platforms: [linux/arm64, linux/amd64]
    readonly: true
";

/// An image whose config names its layer's diff id, as skopeo and umoci check.
fn platform_image(store: &Store, name: &str, arch: &str, text: &str) -> Descriptor {
    let tar = layer(&[
        E::Dir("www", 0o755),
        E::File("www/arch", text.as_bytes(), 0o644),
    ]);
    let l = store.put_bytes(MediaType::ImageLayer, &tar).unwrap();
    let config = ImageConfigurationBuilder::default()
        .architecture(arch)
        .os("linux")
        .config(ConfigBuilder::default().build().unwrap())
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![Digest::of(&tar).to_string()])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut d = store
        .write_image(&Reference::parse(name).unwrap(), &config, vec![l])
        .unwrap();
    d.set_annotations(None);
    d
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    platform_image(&store, "test/data:1", "amd64", "data");
    // test/multi:1: an index over amd64, arm64 and s390x, of which the
    // store holds only amd64 and arm64 whole (as after two pulls).
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64", "s390x"] {
        let mut d = platform_image(&store, &format!("test/part:{arch}"), arch, arch);
        d.set_platform(Some(
            PlatformBuilder::default()
                .os("linux")
                .architecture(arch)
                .build()
                .unwrap(),
        ));
        entries.push(d);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries.clone())
        .build()
        .unwrap();
    let index_entries = entries;
    let index = store
        .put_bytes(MediaType::ImageIndex, &to_json(&index))
        .unwrap();
    store
        .tag(&Reference::parse("test/multi:1").unwrap(), &index)
        .unwrap();
    for arch in ["amd64", "arm64", "s390x"] {
        store
            .remove(&Reference::parse(&format!("test/part:{arch}")).unwrap())
            .unwrap();
    }
    let s390x: Digest = index_entries[2].digest().to_string().parse().unwrap();
    std::fs::remove_file(store.blob_path(&s390x)).unwrap();
    Fixture { dir, store }
}

fn plan_for(f: &Fixture, yaml: &str) -> Result<BuildPlan, BuildError> {
    let m = manifest::from_str(yaml, "node.yml", f.dir.path()).unwrap();
    let mut resolve = |r: &ImageRef| -> Result<Image, BuildError> {
        let r = Reference::parse(&r.text).unwrap();
        Ok(f.store.image(&r, "linux", "amd64").unwrap())
    };
    plan(&m, &mut resolve)
}

/// Builds `yaml` into a tar with a fresh spool and returns its path.
fn build_tar(f: &Fixture, yaml: &str, out: &str) -> Result<PathBuf, BuildError> {
    let p = plan_for(f, yaml)?;
    let spool = Spool::temporary().unwrap();
    let dir = f.dir.path().join(out);
    let opts = BuildOptions {
        formats: vec![Format::Tar],
        dir: dir.clone(),
        name: "node".into(),
        compress: Compression::None,
        mtime: 0,
        disk_size: None,
        boot: None,
        firmware: None,
    };
    build(&f.store, &spool, &p, &opts)?;
    Ok(dir.join("node.tar"))
}

fn extract(tar: &Path, volume: &str) -> PathBuf {
    let to = tar.parent().unwrap().join("x");
    std::fs::create_dir_all(&to).unwrap();
    sh(&format!(
        "tar -xf {} -C {} containers/volumes/{volume}",
        tar.display(),
        to.display()
    ));
    to.join(format!("containers/volumes/{volume}/lower"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blobs(layout: &Path) -> BTreeSet<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn oci_volume_is_a_layout_that_skopeo_and_umoci_read() {
    let f = fixture();
    let tar = build_tar(&f, NODE, "out").unwrap();
    let lower = extract(&tar, "images");
    let name = Reference::parse("test/data:1").unwrap().to_string();
    let data = f
        .store
        .image(&Reference::parse("test/data:1").unwrap(), "linux", "amd64")
        .unwrap();

    assert_eq!(
        std::fs::read_to_string(lower.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = json(&lower.join("index.json"));
    let top = &index["manifests"].as_array().unwrap()[..];
    assert_eq!(top.len(), 1, "{index}");
    assert_eq!(top[0]["digest"], data.manifest_digest.as_str());
    assert_eq!(
        top[0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(top[0]["platform"]["architecture"], "amd64");
    assert_eq!(
        top[0]["annotations"]["org.opencontainers.image.ref.name"],
        name
    );
    assert_eq!(top[0]["annotations"]["io.containerd.image.name"], name);
    // Exactly the manifest, config and layer, each under its own digest.
    let mut want = BTreeSet::from([data.manifest_digest.hex().to_string()]);
    want.insert(data.manifest.config().digest().digest().to_string());
    for (d, _) in data.layers().unwrap() {
        want.insert(d.hex().to_string());
    }
    assert_eq!(blobs(&lower), want);
    for b in &want {
        let bytes = std::fs::read(lower.join("blobs/sha256").join(b)).unwrap();
        assert_eq!(Digest::of(&bytes).hex(), b);
    }
    // Not unpacked: no trace of the image's files.
    assert!(!lower.join("www").exists());

    let inspect = sh(&format!("skopeo inspect oci:{}:{name}", lower.display()));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], data.manifest_digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    let tags = sh(&format!("umoci ls --layout {}", lower.display()));
    assert_eq!(tags.trim(), name);
    let stat = sh(&format!(
        "umoci stat --image {}:{name} --json",
        lower.display()
    ));
    assert!(stat.contains("history"), "{stat}");
}

#[test]
fn oci_volume_holds_only_the_platforms_asked_for_under_a_new_index() {
    let f = fixture();
    let tar = build_tar(&f, NODE, "out").unwrap();
    let lower = extract(&tar, "multi");
    let name = Reference::parse("test/multi:1").unwrap().to_string();
    let index = json(&lower.join("index.json"));
    let top = &index["manifests"][0];
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(
        top["annotations"]["org.opencontainers.image.ref.name"],
        name
    );
    let hex = top["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let nested = json(&lower.join("blobs/sha256").join(hex));
    let archs: Vec<&str> = nested["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    // In the manifest's order; s390x was not asked for.
    assert_eq!(archs, ["arm64", "amd64"]);
    // Every blob any descriptor names is there: index, 2 manifests, 2 configs, 2 layers.
    assert_eq!(blobs(&lower).len(), 7, "{:?}", blobs(&lower));
    for arch in ["arm64", "amd64"] {
        let inspect = sh(&format!(
            "skopeo --override-arch {arch} inspect oci:{}:{name}",
            lower.display()
        ));
        let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(inspect["Architecture"], arch);
    }
    // Read-only as usual: no `tmp`.
    assert!(!lower.parent().unwrap().join("tmp").exists());
}

#[test]
fn oci_volume_is_reproducible() {
    let f = fixture();
    let a = std::fs::read(build_tar(&f, NODE, "a").unwrap()).unwrap();
    let b = std::fs::read(build_tar(&f, NODE, "b").unwrap()).unwrap();
    assert!(a == b, "two builds of the same volumes differ");
}

#[test]
fn oci_volume_platform_missing_from_the_store_is_named() {
    let f = fixture();
    let yaml = "volumes:\n  - name: multi\n    image: test/multi:1\n    format: oci\n    platforms: [linux/s390x]\n";
    let e = build_tar(&f, yaml, "out").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("volume multi") && msg.contains("linux/s390x") && msg.contains("osk pull"),
        "{msg}"
    );
    // The cause (the store's missing blob) is the source, not repeated.
    let cause = std::error::Error::source(&e).unwrap().to_string();
    assert!(cause.contains("missing"), "{cause}");
    assert!(!msg.contains(&cause), "{msg}");
}

#[test]
fn oci_volume_bad_platform_and_format_are_named_with_their_position() {
    let f = fixture();
    let yaml = "volumes:\n  - name: multi\n    image: test/multi:1\n    format: oci\n    platforms: [linux]\n";
    let e = plan_for(&f, yaml).unwrap_err().to_string();
    assert!(
        e.starts_with("node.yml:5:5: volume `multi`: platform `linux` is not OS/ARCH"),
        "{e}"
    );
    let yaml = "volumes:\n  - name: multi\n    image: test/multi:1\n    format: ocy\n";
    let e = manifest::from_str(yaml, "node.yml", f.dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("node.yml:4:13: invalid value `ocy` (did you mean `oci`?)"),
        "{e}"
    );
}
