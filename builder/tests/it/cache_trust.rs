//! The real binary against damaged caches and stopped builds: spool damage
//! heals and is named, stopped builds leave no temporaries behind.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use osk_builder::store::Store;
use support::{kernel_and_init, simple, E};

struct Node {
    dir: tempfile::TempDir,
    store: PathBuf,
    manifest: PathBuf,
}

/// A store with a kernel, an init and one service, and a manifest over them.
fn node(big: Option<&[u8]>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    kernel_and_init(&store);
    let mut svc = vec![E::File("bin/getty", b"the getty binary", 0o755)];
    if let Some(b) = big {
        svc.push(E::File("big", b, 0o644));
    }
    simple(&store, "test/getty:1", &svc);
    let manifest = dir.path().join("node.yml");
    std::fs::write(
        &manifest,
        "kernel:\n  image: test/kernel:1\n  cmdline: console=ttyS0\ninit:\n  - test/init:1\n\
         services:\n  - name: getty\n    image: test/getty:1\n    command: [\"/bin/getty\"]\n",
    )
    .unwrap();
    Node {
        store: store_dir,
        manifest,
        dir,
    }
}

fn osk_build(n: &Node, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_osk"));
    c.arg("--cache")
        .arg(&n.store)
        .args(["build", "--dir"])
        .arg(out)
        .args(extra)
        .arg(&n.manifest)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("RUST_LOG");
    c
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temporaries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `len` reproducible bytes that look random (xorshift; `seed` not 0).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn tampered_spool_is_reported_by_image_and_entry_and_healed() {
    let n = node(None);
    let clean = n.dir.path().join("clean");
    // Uncompressed: a zstd initrd would come from the segments the first
    // build cached (checked by their own digests), never from the spool.
    let args = |format| ["--format", format, "--compress", "none"];
    for format in ["tar", "kernel+initrd"] {
        let o = run(osk_build(&n, &clean, &args(format)));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let h = sha256_hex(b"the getty binary");
    let entry = n.store.join("spool/content").join(&h[..2]).join(&h);
    for format in ["tar", "kernel+initrd"] {
        std::fs::write(&entry, b"THE getty binary").unwrap();
        let out = n.dir.path().join(format!("out-{format}"));
        let o = run(osk_build(&n, &out, &args(format)));
        let err = stderr(&o);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("test/getty:1") && err.contains(&h), "{err}");
        assert!(err.contains("damaged"), "{err}");
        for f in std::fs::read_dir(&out).unwrap() {
            let name = f.unwrap().file_name();
            assert_eq!(
                std::fs::read(out.join(&name)).unwrap(),
                std::fs::read(clean.join(&name)).unwrap(),
                "{format}: {name:?}"
            );
        }
    }
}

#[test]
fn the_next_build_removes_a_killed_builds_temporaries_only() {
    let n = node(None);
    let out = n.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // What SIGKILL leaves, another output's temporary, and one a live build holds.
    let stale = [".node-initrd.img.k1lled.tmp", ".node-kernel.Xy12Zq.tmp"];
    for f in stale
        .iter()
        .chain(&[".other.img.k1lled.tmp", ".node-cmdline.L1veAB.tmp"])
    {
        std::fs::write(out.join(f), vec![0u8; 4096]).unwrap();
    }
    let held = std::fs::File::open(out.join(".node-cmdline.L1veAB.tmp")).unwrap();
    held.lock().unwrap();
    let o = run(osk_build(&n, &out, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        temporaries(&out),
        [".node-cmdline.L1veAB.tmp", ".other.img.k1lled.tmp"]
    );
}

/// SIGINT and SIGTERM remove the temporaries at once and exit 130 and 143;
/// SIGKILL leaves them, and the next build takes them away.
#[test]
fn a_stopped_build_leaves_no_temporaries() {
    // Incompressible data under xz: the initrd takes seconds to write.
    let big = noise(0x9e37_79b9_7f4a_7c15, 24 << 20);
    let n = node(Some(&big));
    let warm = run(osk_build(
        &n,
        &n.dir.path().join("warm"),
        &["--compress", "none"],
    ));
    assert!(warm.status.success(), "{}", stderr(&warm));
    for (signal, code) in [
        (libc::SIGTERM, Some(143)),
        (libc::SIGINT, Some(130)),
        (libc::SIGKILL, None),
    ] {
        let out = n.dir.path().join(format!("out-{signal}"));
        let mut c = osk_build(&n, &out, &["--compress", "xz"]);
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while !temporaries(&out)
            .iter()
            .any(|t| t.starts_with(".node-initrd.img."))
        {
            assert!(start.elapsed().as_secs() < 60, "no temporary appeared");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the build ended before it was stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), code, "signal {signal}");
        if signal == libc::SIGKILL {
            assert!(
                !temporaries(&out).is_empty(),
                "SIGKILL leaves its temporaries"
            );
            let o = run(osk_build(&n, &out, &["--compress", "none"]));
            assert!(o.status.success(), "{}", stderr(&o));
        }
        assert_eq!(temporaries(&out), Vec::<String>::new(), "signal {signal}");
    }
}

/// Random bytes are not an archive: the message says so, names the file,
/// and carries no control character from it.
#[test]
fn importing_random_bytes_is_a_clean_error() {
    let d = tempfile::tempdir().unwrap();
    for seed in 1..9u64 {
        let junk = noise(seed.wrapping_mul(0x2545_f491_4f6c_dd1d), 3000);
        let file = d.path().join(format!("junk-{seed}.tar"));
        std::fs::write(&file, &junk).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_osk"))
            .arg("--cache")
            .arg(d.path().join("store"))
            .args(["cache", "import"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains("not a tar archive"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "{err:?}");
    }
    // A directory without index.json is not an OCI layout.
    let o = Command::new(env!("CARGO_BIN_EXE_osk"))
        .arg("--cache")
        .arg(d.path().join("store"))
        .args(["cache", "import"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(stderr(&o).contains("not an OCI layout"), "{}", stderr(&o));
}

fn osk_cache(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osk"))
        .arg("--cache")
        .arg(store)
        .arg("cache")
        .args(args)
        .output()
        .unwrap()
}

/// Each kind of damage is found and named with its image, and --repair
/// leaves a store and spool that verify clean.
#[test]
fn cache_verify_finds_each_kind_of_damage_and_repair_drops_it() {
    let n = node(None);
    let o = run(osk_build(
        &n,
        &n.dir.path().join("out"),
        &["--format", "tar"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let clean = osk_cache(&n.store, &["verify"]);
    assert!(clean.status.success(), "{}", stderr(&clean));

    let store = Store::open(&n.store).unwrap();
    let image = |name: &str| {
        store
            .image(
                &osk_builder::reference::Reference::parse(name).unwrap(),
                "linux",
                "amd64",
            )
            .unwrap()
    };
    let layer_of = |name: &str| image(name).layers().unwrap()[0].0.clone();
    // Truncated, flipped, missing, and a damaged blob no image uses.
    let init = layer_of("test/init:1");
    let p = store.blob_path(&init);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..1000]).unwrap();
    let getty = layer_of("test/getty:1");
    let p = store.blob_path(&getty);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[600] ^= 0x20;
    std::fs::write(&p, bytes).unwrap();
    let kernel_config = image("test/kernel:1")
        .manifest
        .config()
        .digest()
        .to_string();
    let kernel_config: osk_builder::reference::Digest = kernel_config.parse().unwrap();
    std::fs::remove_file(store.blob_path(&kernel_config)).unwrap();
    let orphan = n.store.join("blobs/sha256").join(sha256_hex(b"orphan"));
    std::fs::write(&orphan, b"0rphan").unwrap();
    // A spool entry and a cached layer index.
    let h = sha256_hex(b"bzImage");
    let entry = n.store.join("spool/content").join(&h[..2]).join(&h);
    std::fs::write(&entry, b"BZIMAGE").unwrap();
    let index = n.store.join("spool/layers").join(getty.hex());
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[18] ^= 0x08;
    std::fs::write(&index, bytes).unwrap();

    let o = osk_cache(&n.store, &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle} in:\n{out}"))
            .to_string()
    };
    let l = line(init.hex());
    assert!(
        l.contains("has 1000 bytes") && l.contains("image test/init:1"),
        "{l}"
    );
    let l = line(getty.hex());
    assert!(
        l.contains("corrupt") && l.contains("image test/getty:1"),
        "{l}"
    );
    let l = line(kernel_config.hex());
    assert!(
        l.contains("missing") && l.contains("image test/kernel:1"),
        "{l}"
    );
    let l = line(&sha256_hex(b"orphan"));
    assert!(
        l.contains("corrupt") && l.contains("no image uses it"),
        "{l}"
    );
    let l = line(&h);
    assert!(l.contains("spool entry") && l.contains("damaged"), "{l}");
    let l = line(&index.display().to_string());
    assert!(l.contains("layer index"), "{l}");
    assert!(stderr(&o).contains("6 damaged item(s)"), "{}", stderr(&o));

    let o = osk_cache(&n.store, &["verify", "--repair"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    for name in ["test/init:1", "test/getty:1", "test/kernel:1"] {
        assert!(err.contains(&format!("dropped image {name}")), "{err}");
    }
    let o = osk_cache(&n.store, &["verify"]);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    assert!(!entry.exists() && !index.exists() && !orphan.exists());
}

/// A damaged initramfs segment is found by `osk cache verify`, and
/// `--repair` drops it so that the next build compresses it again.
#[test]
fn cache_verify_checks_the_segment_cache() {
    let n = node(None);
    let out = n.dir.path().join("out");
    let o = run(osk_build(&n, &out, &["--format", "kernel+initrd"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let initrd = std::fs::read(out.join("node-initrd.img")).unwrap();
    let clean = osk_cache(&n.store, &["verify"]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert!(
        stderr(&clean).contains("initramfs segments are sound"),
        "{}",
        stderr(&clean)
    );

    let mut segments: Vec<_> = std::fs::read_dir(n.store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    let victim = &segments[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(victim, bytes).unwrap();

    let o = osk_cache(&n.store, &["verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        stdout.contains("initramfs segment") && stdout.contains(&victim.display().to_string()),
        "{stdout}"
    );
    let o = osk_cache(&n.store, &["verify", "--repair"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!victim.exists());
    assert!(osk_cache(&n.store, &["verify"]).status.success());
    // The next build compresses the dropped segment again: the same bytes.
    let again = n.dir.path().join("again");
    let o = run(osk_build(&n, &again, &["--format", "kernel+initrd"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(again.join("node-initrd.img")).unwrap(),
        initrd
    );
}
