//! Building package images: reproducibility, lock handling, and (with
//! OSK_TEST_NETWORK=1) a real package from the host's Debian mirror.

use std::path::{Path, PathBuf};

use osk_builder::arch::Arch;
use osk_builder::pkg::{self, lock::Lock, lock::Locked, lock::Locks, Options};
use osk_builder::store::Store;
use sha2::{Digest, Sha256};

/// A minimal amd64 .deb: `debian-binary`, `control.tar.gz`, `data.tar.gz`.
fn make_deb(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    make_deb_for("amd64", files)
}

fn make_deb_for(arch: &str, files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let tar_gz = |entries: &[(&str, &[u8], u32)]| {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            // Deliberately not zero: the layer must normalise mtimes.
            h.set_mtime(1_234_567);
            b.append_data(&mut h, path, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    };
    let control_text = format!("Package: hello\nVersion: 1.0\nArchitecture: {arch}\n");
    let control = tar_gz(&[("./control", control_text.as_bytes(), 0o644)]);
    let data = tar_gz(files);
    let mut ar = ar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar.gz", &control),
        ("data.tar.gz", &data),
    ] {
        ar.append(
            &ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64),
            bytes,
        )
        .unwrap();
    }
    ar.into_inner().unwrap()
}

/// A package folder whose lock points at a .deb already in the cache.
fn fixture_package(root: &Path) -> (PathBuf, Options) {
    fixture_with(
        root,
        &[
            ("./bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
            ("./usr/share/doc/hello/README", b"docs are excluded", 0o644),
            ("./usr/share/doc/hello/copyright", b"kept", 0o644),
        ],
        "debian:\n  suites: [bookworm]\n  packages: [hello]\nfiles:\n  - {src: motd, dest: /etc/motd}\n\
         cmd: [/bin/hello]\nconfig:\n  net: host\n",
    )
}

/// A package `hello` of one cached, locked .deb holding `files`, built by `build_yml`.
fn fixture_with(root: &Path, files: &[(&str, &[u8], u32)], build_yml: &str) -> (PathBuf, Options) {
    let deb = make_deb(files);
    let sha = hex::encode(Sha256::digest(&deb));
    let cache = root.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join(&sha), &deb).unwrap();
    let dir = root.join("pkgs/hello");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("build.yml"), build_yml).unwrap();
    std::fs::write(dir.join("motd"), "hi\n").unwrap();
    let spec = osk_builder::pkg::spec::Spec::parse(
        &std::fs::read_to_string(dir.join("build.yml")).unwrap(),
        &dir,
    )
    .unwrap();
    let lock = Lock::new(
        osk_builder::pkg::lock::inputs_hash(&spec, Arch::Amd64),
        vec![Locked {
            name: "hello".into(),
            version: "1.0".into(),
            architecture: "amd64".into(),
            sha256: sha,
            size: deb.len() as u64,
            filename: "pool/main/h/hello/hello_1.0_amd64.deb".into(),
        }],
    );
    let mut locks = Locks::default();
    locks.set(Arch::Amd64, lock);
    locks.write(&dir).unwrap();
    let opts = Options {
        // Never used: everything is cached. A mirror that cannot answer
        // proves no download is attempted.
        mirror: Some("http://127.0.0.1:9/debian".into()),
        cache_dir: cache,
        arch: Arch::Amd64,
        ..Options::default()
    };
    (dir, opts)
}

#[test]
fn same_inputs_same_image_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, opts) = fixture_package(tmp.path());
    let a = Store::open(tmp.path().join("store-a")).unwrap();
    let b = Store::open(tmp.path().join("store-b")).unwrap();
    let ra = pkg::ensure_built(&dir, &a, &opts).unwrap();
    let rb = pkg::ensure_built(&dir, &b, &opts).unwrap();
    assert_eq!(ra, rb);
    assert!(ra.familiar().starts_with("osk/hello:"), "{ra}");
    let da = a.resolve(&ra).unwrap().unwrap();
    let db = b.resolve(&rb).unwrap().unwrap();
    assert_eq!(da.digest(), db.digest());
    assert_eq!(pkg::show_tag(&dir, &a, &opts).unwrap(), ra.familiar());

    // The image holds one layer with normalised, filtered content and the label.
    let img = a.image(&ra, "linux", "amd64").unwrap();
    assert_eq!(img.manifest.layers().len(), 1);
    assert_eq!(
        img.label(osk_layout::CONFIG_LABEL),
        Some(r#"{"net":"host"}"#)
    );
    let (digest, _) = &img.layers().unwrap()[0];
    let gz = a.read_blob(digest).unwrap();
    // Pinned: the layer's bytes (entry order, headers) must not change silently.
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut raw).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(&raw)),
        "2c732e967742e7ef2b69822f8993fa6790c361f3a2ffcd89a60ddae9152e1208"
    );
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(e.header().mtime().unwrap(), 0);
        names.push(e.path().unwrap().to_string_lossy().to_string());
    }
    assert!(names.contains(&"usr/bin/hello".to_string()), "{names:?}");
    assert!(
        names.contains(&"bin".to_string()),
        "merged-/usr link: {names:?}"
    );
    assert!(names.contains(&"etc/motd".to_string()));
    assert!(names.contains(&"usr/share/doc/hello/copyright".to_string()));
    assert!(!names.contains(&"usr/share/doc/hello/README".to_string()));
}

#[test]
fn a_ca_bundle_folds_the_certificates_in() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, opts) = fixture_with(
        tmp.path(),
        &[
            ("./usr/share/ca-certificates/mozilla/B.crt", b"-----B-----\n", 0o644),
            ("./usr/share/ca-certificates/mozilla/A.crt", b"-----A-----", 0o644),
            ("./usr/share/doc/ca-certificates/copyright", b"kept", 0o644),
        ],
        "debian:\n  suites: [bookworm]\n  packages: [hello]\nca-bundle: /etc/ssl/certs/ca-certificates.crt\n",
    );
    let store = Store::open(tmp.path().join("store")).unwrap();
    let r = pkg::ensure_built(&dir, &store, &opts).unwrap();
    let img = store.image(&r, "linux", "amd64").unwrap();
    let (digest, _) = &img.layers().unwrap()[0];
    let gz = store.read_blob(digest).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let mut bundle = None;
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().to_string();
        if name == "etc/ssl/certs/ca-certificates.crt" {
            let mut b = String::new();
            std::io::Read::read_to_string(&mut e, &mut b).unwrap();
            bundle = Some(b);
        }
        names.push(name);
    }
    // Sorted by path, each ending in a newline.
    assert_eq!(bundle.as_deref(), Some("-----A-----\n-----B-----\n"));
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("usr/share/ca-certificates")),
        "the single certificates are still there: {names:?}"
    );
    assert!(names.contains(&"usr/share/doc/ca-certificates/copyright".to_string()));
}

#[test]
fn changing_an_input_changes_the_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, opts) = fixture_package(tmp.path());
    let before =
        pkg::show_tag(&dir, &Store::open(tmp.path().join("store")).unwrap(), &opts).unwrap();
    std::fs::write(dir.join("motd"), "changed\n").unwrap();
    assert_ne!(
        pkg::show_tag(&dir, &Store::open(tmp.path().join("store")).unwrap(), &opts).unwrap(),
        before
    );
}

#[test]
fn stale_or_missing_lock_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, opts) = fixture_package(tmp.path());
    let yml = std::fs::read_to_string(dir.join("build.yml")).unwrap();
    std::fs::write(
        dir.join("build.yml"),
        yml.replace("[hello]", "[hello, extra]"),
    )
    .unwrap();
    let err = pkg::build(&dir, &Store::open(tmp.path().join("store")).unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stale") && err.contains("osk pkg lock"),
        "{err}"
    );
    std::fs::remove_file(dir.join("build.lock")).unwrap();
    let err = pkg::build(&dir, &Store::open(tmp.path().join("store")).unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("build.lock") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn corrupt_cached_deb_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, opts) = fixture_package(tmp.path());
    // Remove the cached copy: the build must try the (unreachable) mirror and
    // fail naming the package rather than build something else.
    for e in std::fs::read_dir(&opts.cache_dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let err = pkg::build(&dir, &Store::open(tmp.path().join("store")).unwrap(), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hello_1.0_amd64.deb") || err.contains("127.0.0.1"),
        "{err}"
    );
}

/// Locks and builds the real `demo` package against the host's mirror.
#[test]
fn network_lock_and_build_demo() {
    if std::env::var("OSK_TEST_NETWORK").as_deref() != Ok("1") {
        eprintln!("skipped: set OSK_TEST_NETWORK=1 to reach the Debian mirror");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pkgs/demo");
    let dir = tmp.path().join("demo");
    std::fs::create_dir(&dir).unwrap();
    for f in ["build.yml", "README.md", "index.html"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let opts = Options {
        cache_dir: tmp.path().join("debs"),
        ..Options::default()
    };
    let lock = pkg::lock(&dir, &opts).unwrap();
    assert!(lock.packages.iter().any(|p| p.name == "busybox-static"));
    let store = Store::open(tmp.path().join("store")).unwrap();
    let r1 = pkg::ensure_built(&dir, &store, &opts).unwrap();
    let d1 = store.resolve(&r1).unwrap().unwrap();
    // Rebuild from the cache into a second store: identical digest.
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    let r2 = pkg::ensure_built(&dir, &store2, &opts).unwrap();
    assert_eq!(d1.digest(), store2.resolve(&r2).unwrap().unwrap().digest());
}

/// Adds an arm64 resolution (a .deb of its own, cached) to the fixture's lock.
fn lock_arm64(dir: &Path, opts: &Options) {
    let deb = make_deb_for("arm64", &[("./bin/hello", b"#!/bin/sh\necho arm\n", 0o755)]);
    let sha = hex::encode(Sha256::digest(&deb));
    std::fs::write(opts.cache_dir.join(&sha), &deb).unwrap();
    let path = dir.join("build.yml");
    let spec = osk_builder::pkg::spec::Spec::parse(&std::fs::read_to_string(&path).unwrap(), &path)
        .unwrap()
        .for_arch(Arch::Arm64, &path)
        .unwrap();
    let mut locks = Locks::read(dir).unwrap().unwrap();
    locks.set(
        Arch::Arm64,
        Lock::new(
            osk_builder::pkg::lock::inputs_hash(&spec, Arch::Arm64),
            vec![Locked {
                name: "hello".into(),
                version: "1.0".into(),
                architecture: "arm64".into(),
                sha256: sha,
                size: deb.len() as u64,
                filename: "pool/main/h/hello/hello_1.0_arm64.deb".into(),
            }],
        ),
    );
    locks.write(dir).unwrap();
}

#[test]
fn arm64_builds_from_its_own_lock_and_leaves_the_amd64_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, amd64) = fixture_package(tmp.path());
    let arm64 = Options {
        arch: Arch::Arm64,
        ..amd64.clone()
    };
    let store = Store::open(tmp.path().join("store")).unwrap();
    let amd64_tag = pkg::show_tag(&dir, &store, &amd64).unwrap();

    let err = pkg::ensure_built(&dir, &store, &arm64)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no arm64 resolution") && err.contains("osk pkg lock --arch arm64"),
        "{err}"
    );

    lock_arm64(&dir, &amd64);
    // Locking another architecture renames nothing already built.
    assert_eq!(pkg::show_tag(&dir, &store, &amd64).unwrap(), amd64_tag);
    let r = pkg::ensure_built(&dir, &store, &arm64).unwrap();
    assert_ne!(r.familiar(), amd64_tag);
    let img = store.image(&r, "linux", "arm64").unwrap();
    assert_eq!(img.config.architecture().to_string(), "arm64");
    let err = store.image(&r, "linux", "amd64").unwrap_err().to_string();
    assert!(err.contains("linux/arm64"), "{err}");
    // Reproducible, as amd64 is.
    let again = Store::open(tmp.path().join("store2")).unwrap();
    let r2 = pkg::ensure_built(&dir, &again, &arm64).unwrap();
    assert_eq!(
        store.resolve(&r).unwrap().unwrap().digest(),
        again.resolve(&r2).unwrap().unwrap().digest()
    );
}

fn network() -> bool {
    let on = std::env::var("OSK_TEST_NETWORK").as_deref() == Ok("1");
    if !on {
        eprintln!("skipped: set OSK_TEST_NETWORK=1 to reach the Debian mirror");
    }
    on
}

/// Locks and builds the real `sysctl` package for arm64 from the host's mirror.
#[test]
fn network_lock_and_build_sysctl_for_arm64() {
    if !network() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pkgs/sysctl");
    let dir = tmp.path().join("sysctl");
    copy_tree(&src, &dir);
    let opts = Options {
        cache_dir: tmp.path().join("debs"),
        arch: Arch::Arm64,
        ..Options::default()
    };
    let amd64 = Options {
        arch: Arch::Amd64,
        ..opts.clone()
    };
    let store = Store::open(tmp.path().join("store")).unwrap();
    let amd64_tag = pkg::show_tag(&dir, &store, &amd64).unwrap();
    let lock = pkg::lock(&dir, &opts).unwrap();
    let busybox = lock
        .packages
        .iter()
        .find(|p| p.name == "busybox-static")
        .unwrap();
    assert_eq!(busybox.architecture, "arm64");
    assert!(
        busybox.filename.ends_with("_arm64.deb"),
        "{}",
        busybox.filename
    );
    // The amd64 resolution and tag are as they were.
    assert_eq!(pkg::show_tag(&dir, &store, &amd64).unwrap(), amd64_tag);
    let r = pkg::ensure_built(&dir, &store, &opts).unwrap();
    let img = store.image(&r, "linux", "arm64").unwrap();
    assert_eq!(img.config.architecture().to_string(), "arm64");
    let store2 = Store::open(tmp.path().join("store2")).unwrap();
    let r2 = pkg::ensure_built(&dir, &store2, &opts).unwrap();
    assert_eq!(
        store.resolve(&r).unwrap().unwrap().digest(),
        store2.resolve(&r2).unwrap().unwrap().digest()
    );
    // busybox's ELF header says AArch64 (e_machine 183).
    let layer = store.read_blob(&img.layers().unwrap()[0].0).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
    let mut found = false;
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("usr/bin/busybox") {
            let mut head = [0u8; 20];
            std::io::Read::read_exact(&mut e, &mut head).unwrap();
            assert_eq!(u16::from_le_bytes([head[18], head[19]]), 183);
            found = true;
        }
    }
    assert!(found, "usr/bin/busybox not in the layer");
}

/// A package that exists for amd64 only fails to lock for arm64, naming both.
#[test]
fn network_a_package_missing_for_arm64_names_package_and_arch() {
    if !network() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pcboot");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("build.yml"),
        "debian:\n  suites: [bookworm]\n  packages: [grub-pc-bin]\n",
    )
    .unwrap();
    let opts = Options {
        cache_dir: tmp.path().join("debs"),
        arch: Arch::Arm64,
        ..Options::default()
    };
    let err = format!(
        "{:#}",
        anyhow::Error::from(pkg::lock(&dir, &opts).unwrap_err())
    );
    assert!(
        err.contains("package pcboot for arm64") && err.contains("grub-pc-bin"),
        "{err}"
    );
    assert!(!dir.join("build.lock").exists());
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn skopeo(args: &[&str]) -> String {
    let out = std::process::Command::new("skopeo")
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
fn both_arches_make_one_index_that_resolves_per_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, amd64) = fixture_package(tmp.path());
    lock_arm64(&dir, &amd64);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let mut built = Vec::new();
    for arch in [Arch::Amd64, Arch::Arm64] {
        let opts = Options {
            arch,
            ..amd64.clone()
        };
        let b = pkg::build(&dir, &store, &opts).unwrap();
        let desc = pkg::write_to_store(&store, &b).unwrap();
        built.push((arch, b, desc));
    }
    let refs: Vec<_> = built.iter().map(|(a, b, _)| (*a, b)).collect();
    let index = pkg::write_index(&store, &refs).unwrap();
    assert!(index.familiar().starts_with("osk/hello:"), "{index}");
    // The same builds name the same index.
    assert_eq!(pkg::write_index(&store, &refs).unwrap(), index);
    for (arch, _, desc) in &built {
        let img = store.image(&index, "linux", arch.oci()).unwrap();
        assert_eq!(img.manifest_digest.as_str(), desc.digest().to_string());
    }
    let err = store
        .image(&index, "linux", "riscv64")
        .unwrap_err()
        .to_string();
    assert!(err.contains("linux/amd64, linux/arm64"), "{err}");

    // skopeo sees an index with both platforms, and picks each one.
    let oci = format!("oci:{}:{}", store.root().display(), index);
    let raw: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--raw", &oci])).unwrap();
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for arch in ["amd64", "arm64"] {
        let seen: serde_json::Value = serde_json::from_str(&skopeo(&[
            "--override-os",
            "linux",
            "--override-arch",
            arch,
            "inspect",
            &oci,
        ]))
        .unwrap();
        assert_eq!(seen["Architecture"], arch);
    }
}
