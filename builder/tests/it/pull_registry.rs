//! Pulls from a real registry: Debian's `docker-registry` (distribution 2.x)
//! on 127.0.0.1 with htpasswd basic auth, fed by `skopeo copy` from a store
//! built with the Store API.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageConfigurationBuilder, ImageIndexBuilder, MediaType,
    Os, PlatformBuilder, RootFsBuilder,
};
use osk_builder::pull::{self, PullError, PullOptions};
use osk_builder::reference::Reference;
use osk_builder::store::{descriptor_digest, to_json, Store, StoreError};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const USER: &str = "osk";
const PASSWORD: &str = "s3cret";

/// A registry process on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start(with_auth: bool) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's `docker-registry` package (apt-get install docker-registry)"
        );
        require("skopeo");
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if with_auth {
            // Cost 4: the registry checks the hash on every request.
            let hash = bcrypt::hash(PASSWORD, 4).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: osk-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.addr).is_err() {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("docker-registry exited ({status}):\n{}", registry.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen:\n{}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many blob GETs the registry has served (its access log is the witness).
    fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    fn reference(&self, repo_tag: &str) -> Reference {
        Reference::parse(&format!("{}/{repo_tag}", self.addr)).unwrap()
    }

    /// `skopeo copy` of the store image `src` to `repo_tag` here.
    fn push(&self, store: &Store, src: &str, repo_tag: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(["--dest-creds", &format!("{USER}:{PASSWORD}")])
            .args(extra)
            // The store names images by their full reference.
            .arg(format!(
                "oci:{}:{}",
                store.root().display(),
                Reference::parse(src).unwrap()
            ))
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is missing: install Debian's `{tool}` package"
    );
}

/// A Docker config dir whose config.json holds `password` for `registry`.
fn docker_config(registry: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    let json = serde_json::json!({ "auths": { registry: { "auth": auth } } });
    std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
    dir
}

fn options(config: &tempfile::TempDir, arch: &str) -> PullOptions {
    PullOptions {
        arch: arch.into(),
        docker_config: Some(config.path().to_path_buf()),
        ..PullOptions::default()
    }
}

/// A gzipped tar with one file, and its diff id.
fn layer(store: &Store, name: &str, content: &str) -> (Descriptor, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, content.as_bytes())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = osk_builder::reference::Digest::of(&tar).to_string();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    (
        store.put_bytes(MediaType::ImageLayerGzip, &gz).unwrap(),
        diff_id,
    )
}

fn config(arch: &str, diff_id: String) -> ImageConfiguration {
    ImageConfigurationBuilder::default()
        .architecture(arch)
        .os("linux")
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// One single-platform image `src:1` in a fresh store.
fn single_image() -> (tempfile::TempDir, Store, Descriptor) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (l, diff) = layer(&store, "hello.txt", "hello from osk\n");
    let desc = store
        .write_image(
            &Reference::parse("src:1").unwrap(),
            &config("amd64", diff),
            vec![l],
        )
        .unwrap();
    (dir, store, desc)
}

/// An index `multi:1` over an amd64 and an arm64 image; returns (index, amd64, arm64) descriptors.
fn multi_image() -> (tempfile::TempDir, Store, [Descriptor; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut platform_manifests = Vec::new();
    for (arch, oci_arch) in [("amd64", Arch::Amd64), ("arm64", Arch::ARM64)] {
        let (l, diff) = layer(&store, "arch.txt", arch);
        let mut d = store
            .write_image(
                &Reference::parse(&format!("part:{arch}")).unwrap(),
                &config(arch, diff),
                vec![l],
            )
            .unwrap();
        d.set_annotations(None);
        d.set_platform(Some(
            PlatformBuilder::default()
                .os(Os::Linux)
                .architecture(oci_arch)
                .build()
                .unwrap(),
        ));
        platform_manifests.push(d);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(platform_manifests.clone())
        .build()
        .unwrap();
    let index_desc = store
        .put_bytes(MediaType::ImageIndex, &to_json(&index))
        .unwrap();
    store
        .tag(&Reference::parse("multi:1").unwrap(), &index_desc)
        .unwrap();
    let [amd, arm]: [Descriptor; 2] = platform_manifests.try_into().unwrap();
    (dir, store, [index_desc, amd, arm])
}

fn digest(d: &Descriptor) -> osk_builder::reference::Digest {
    descriptor_digest(d).unwrap()
}

fn fresh_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

#[test]
fn pulls_an_oci_image_with_basic_auth_and_fetches_nothing_twice() {
    let registry = Registry::start(true);
    let (_src_dir, src, pushed) = single_image();
    registry.push(&src, "src:1", "osk/test:1", &[]);

    let (_dir, store) = fresh_store();
    let creds = docker_config(&registry.addr, PASSWORD);
    let r = registry.reference("osk/test:1");
    let first = pull::pull(&store, &r, &options(&creds, "amd64")).unwrap();
    assert_eq!(
        first.digest,
        digest(&pushed),
        "the registry served other bytes"
    );
    assert_eq!(first.image.manifest_digest, digest(&pushed));
    assert_eq!(first.stats.manifests, 1);
    assert_eq!(first.stats.blobs, 2, "config and layer");
    let src_img = src
        .image(&Reference::parse("src:1").unwrap(), "linux", "amd64")
        .unwrap();
    let layers = |img: &osk_builder::store::Image| -> Vec<_> {
        img.layers().unwrap().into_iter().map(|(d, _)| d).collect()
    };
    assert_eq!(layers(&first.image), layers(&src_img));
    for d in layers(&first.image) {
        assert_eq!(store.read_blob(&d).unwrap(), src.read_blob(&d).unwrap());
    }
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|e| e.reference.to_string())
        .collect();
    assert_eq!(listed, [r.to_string()]);

    // A refresh reads the manifest again but no blob.
    let gets = registry.blob_gets();
    assert!(
        gets >= 2,
        "the access log counts blob GETs:\n{}",
        registry.log()
    );
    let second = pull::pull(&store, &r, &options(&creds, "amd64")).unwrap();
    assert_eq!(second.stats.blobs, 0);
    assert_eq!(second.stats.bytes, 0);
    assert_eq!(
        registry.blob_gets(),
        gets,
        "the registry served blobs again"
    );

    // `ensure` of a present image does not touch the registry at all: even
    // with credentials it would reject, it answers from the store.
    let wrong = docker_config(&registry.addr, "wrong");
    let img = pull::ensure(&store, &r, &options(&wrong, "amd64")).unwrap();
    assert_eq!(img.manifest_digest, digest(&pushed));
    // ...and `force` does go to the registry.
    let forced = PullOptions {
        force: true,
        ..options(&wrong, "amd64")
    };
    assert!(matches!(
        pull::ensure(&store, &r, &forced),
        Err(PullError::Auth { .. })
    ));
}

#[test]
fn multi_arch_index_is_stored_and_only_the_chosen_platform_fetched() {
    let registry = Registry::start(true);
    let (_src_dir, src, [index, amd, arm]) = multi_image();
    registry.push(&src, "multi:1", "osk/multi:1", &["--all"]);

    let (_dir, store) = fresh_store();
    let creds = docker_config(&registry.addr, PASSWORD);
    let r = registry.reference("osk/multi:1");
    let pulled = pull::pull(&store, &r, &options(&creds, "arm64")).unwrap();
    assert_eq!(pulled.digest, digest(&index));
    assert_eq!(pulled.image.manifest_digest, digest(&arm));
    assert_eq!(pulled.image.config.architecture(), &Arch::ARM64);
    assert_eq!(
        pulled.stats.manifests, 2,
        "the index and the arm64 manifest"
    );
    assert_eq!(pulled.stats.blobs, 2);
    // The store names the index, so it can pick platforms itself.
    let entry = store.resolve(&r).unwrap().unwrap();
    assert_eq!(entry.media_type(), &MediaType::ImageIndex);
    assert_eq!(digest(&entry), digest(&index));
    // Nothing of the other platform was fetched.
    assert!(!store.has_blob(&digest(&amd)));
    let amd_layers = src
        .image(&Reference::parse("part:amd64").unwrap(), "linux", "amd64")
        .unwrap();
    for (d, _) in amd_layers.layers().unwrap() {
        assert!(!store.has_blob(&d), "amd64 layer {d} was fetched");
    }

    // The other platform later: only its manifest, config and layer.
    let other = pull::ensure(&store, &r, &options(&creds, "amd64")).unwrap();
    assert_eq!(other.manifest_digest, digest(&amd));
    assert_eq!(
        store.image(&r, "linux", "arm64").unwrap().manifest_digest,
        digest(&arm)
    );

    // A platform the index lacks is named with the ones it has.
    let err = pull::pull(&store, &r, &options(&creds, "s390x")).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, PullError::NoPlatform(e) if matches!(**e, StoreError::NoPlatform { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("linux/s390x")
            && msg.contains("linux/amd64")
            && msg.contains("linux/arm64")
            && msg.contains("osk/multi:1"),
        "{msg}"
    );
}

#[test]
fn docker_schema2_manifests_and_lists_are_pulled() {
    let registry = Registry::start(true);
    let (_s, single, _) = single_image();
    registry.push(&single, "src:1", "osk/v2s2:1", &["--format", "v2s2"]);
    let (_m, multi, _) = multi_image();
    registry.push(
        &multi,
        "multi:1",
        "osk/v2s2:list",
        &["--all", "--format", "v2s2"],
    );

    let (_dir, store) = fresh_store();
    let creds = docker_config(&registry.addr, PASSWORD);

    let r = registry.reference("osk/v2s2:1");
    let img = pull::ensure(&store, &r, &options(&creds, "amd64")).unwrap();
    let entry = store.resolve(&r).unwrap().unwrap();
    assert_eq!(
        entry.media_type().to_string(),
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(img.layers().unwrap().len(), 1);

    let r = registry.reference("osk/v2s2:list");
    let pulled = pull::pull(&store, &r, &options(&creds, "arm64")).unwrap();
    let entry = store.resolve(&r).unwrap().unwrap();
    assert_eq!(
        entry.media_type().to_string(),
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(digest(&entry), pulled.digest);
    assert_eq!(pulled.image.config.architecture(), &Arch::ARM64);
    // Every blob in the store hashes to its name.
    for item in std::fs::read_dir(store.root().join("blobs/sha256")).unwrap() {
        let name = item.unwrap().file_name().to_string_lossy().into_owned();
        let d = osk_builder::reference::Digest::from_sha256_hex(&name);
        store.read_blob(&d).unwrap();
    }
}

#[test]
fn wrong_password_is_a_clear_auth_error() {
    let registry = Registry::start(true);
    let (_s, src, _) = single_image();
    registry.push(&src, "src:1", "osk/test:1", &[]);
    let (_dir, store) = fresh_store();
    let wrong = docker_config(&registry.addr, "not-the-password");
    let r = registry.reference("osk/test:1");
    let err = pull::pull(&store, &r, &options(&wrong, "amd64")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Auth { .. }), "{msg}");
    assert!(msg.contains(&r.familiar()), "names the image: {msg}");
    assert!(
        msg.contains("docker login") && msg.contains("config.json"),
        "{msg}"
    );
    assert!(store.list().unwrap().is_empty());

    // No credentials at all: the same advice.
    let none = tempfile::tempdir().unwrap();
    let err = pull::pull(&store, &r, &options(&none, "amd64")).unwrap_err();
    assert!(matches!(err, PullError::Auth { .. }), "{err}");
}

#[test]
fn missing_tag_and_repository_are_clear_not_found_errors() {
    let registry = Registry::start(true);
    let (_s, src, _) = single_image();
    registry.push(&src, "src:1", "osk/test:1", &[]);
    let (_dir, store) = fresh_store();
    let creds = docker_config(&registry.addr, PASSWORD);
    for missing in ["osk/test:nope", "osk/absent:1"] {
        let r = registry.reference(missing);
        let err = pull::pull(&store, &r, &options(&creds, "amd64")).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PullError::NotFound { .. }), "{msg}");
        assert!(
            msg.contains(&r.familiar()) && msg.contains("not found"),
            "{msg}"
        );
    }
}

#[test]
fn anonymous_pull_and_unreachable_registry() {
    let registry = Registry::start(false);
    let (_s, src, pushed) = single_image();
    registry.push(&src, "src:1", "osk/open:1", &[]);
    let (_dir, store) = fresh_store();
    let none = tempfile::tempdir().unwrap();
    let img = pull::ensure(
        &store,
        &registry.reference("osk/open:1"),
        &options(&none, "amd64"),
    )
    .unwrap();
    assert_eq!(img.manifest_digest, digest(&pushed));

    // A port nothing listens on: the error names the registry.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = Reference::parse(&format!("127.0.0.1:{port}/osk/open:1")).unwrap();
    let err = pull::pull(&store, &r, &options(&none, "amd64")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Network { .. }), "{msg}");
    assert!(msg.contains(&format!("registry 127.0.0.1:{port}")), "{msg}");
}

#[test]
fn osk_pull_cli_reads_docker_config_from_the_environment() {
    let registry = Registry::start(true);
    let (_s, src, pushed) = single_image();
    registry.push(&src, "src:1", "osk/cli:1", &[]);
    let creds = docker_config(&registry.addr, PASSWORD);
    let cache = tempfile::tempdir().unwrap();
    let image = format!("{}/osk/cli:1", registry.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_osk"))
        .arg("--cache")
        .arg(cache.path())
        .args(["pull", &image])
        .env("DOCKER_CONFIG", creds.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "osk pull failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(digest(&pushed).as_str()),
        "prints the digest: {stdout}"
    );
    let store = Store::open(cache.path()).unwrap();
    assert!(store
        .resolve(&Reference::parse(&image).unwrap())
        .unwrap()
        .is_some());

    // Missing tag through the CLI: non-zero, and the message names the image.
    let out = Command::new(env!("CARGO_BIN_EXE_osk"))
        .arg("--cache")
        .arg(cache.path())
        .args(["pull", &format!("{}/osk/cli:absent", registry.addr)])
        .env("DOCKER_CONFIG", creds.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("osk/cli:absent") && stderr.contains("not found"),
        "{stderr}"
    );
}

/// Deterministic incompressible bytes (xorshift), generated as they are read.
struct Noise {
    state: u64,
    left: u64,
}

impl std::io::Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize) / 8 * 8;
        for chunk in buf[..n].chunks_exact_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Runs `cmd` to its end; returns whether it succeeded and its peak RSS in KiB.
/// Runs `cmd` and returns whether it succeeded and its peak resident memory
/// in KiB. The peak is the child's own `VmHWM`, polled until it exits:
/// `ru_maxrss` would also count this test process's memory, which the child
/// inherits at spawn (the tests share one process).
fn run_measuring_rss(cmd: &mut Command) -> (bool, i64) {
    let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
    // spawn() returns after the exec: from here on, status is the new image's.
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status.success(), peak_kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn large_layers_are_streamed_not_held_in_memory() {
    const LAYER: u64 = 96 << 20;
    let registry = Registry::start(true);
    let (_src_dir, src) = fresh_store();
    let (layer_digest, size) = src
        .put_blob(
            Noise {
                state: 0x9E37_79B9_7F4A_7C15,
                left: LAYER,
            },
            None,
        )
        .unwrap();
    assert_eq!(size, LAYER);
    let layer = osk_builder::store::descriptor(MediaType::ImageLayer, &layer_digest, size);
    src.write_image(
        &Reference::parse("big:1").unwrap(),
        &config("amd64", layer_digest.to_string()),
        vec![layer],
    )
    .unwrap();
    registry.push(&src, "big:1", "osk/big:1", &[]);

    let creds = docker_config(&registry.addr, PASSWORD);
    let cache = tempfile::tempdir().unwrap();
    let (ok, max_rss_kib) = run_measuring_rss(
        Command::new(env!("CARGO_BIN_EXE_osk"))
            .arg("--cache")
            .arg(cache.path())
            .args(["pull", &format!("{}/osk/big:1", registry.addr)])
            .env("DOCKER_CONFIG", creds.path()),
    );
    assert!(ok, "osk pull of the large image failed");
    // skopeo gzips the layer on the way (random bytes barely shrink), so look
    // at what was pulled rather than at the source digest.
    let store = Store::open(cache.path()).unwrap();
    let pulled = store
        .image(
            &registry.reference("osk/big:1"),
            "linux",
            osk_builder::store::host_arch(),
        )
        .unwrap();
    let (pulled_layer, _) = pulled.layers().unwrap()[0].clone();
    let on_disk = std::fs::metadata(store.blob_path(&pulled_layer))
        .unwrap()
        .len();
    assert!(on_disk >= LAYER, "the pulled layer has {on_disk} bytes");
    eprintln!("osk pull peak RSS: {max_rss_kib} KiB for a {on_disk}-byte layer");
    assert!(max_rss_kib > 0, "no VmHWM was read from osk pull");
    assert!(
        max_rss_kib < (LAYER / 1024 / 2) as i64,
        "osk pull peaked at {max_rss_kib} KiB for a {LAYER}-byte layer: it is buffering"
    );
}
