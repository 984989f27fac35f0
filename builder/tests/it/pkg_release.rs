//! `Valid-Until`: an expired signed Release is refused, as apt does.
//! Recorded InRelease files (real signatures) and a throwaway mirror served
//! over HTTP from a temporary directory.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use osk_builder::pkg::debian::release::{parse_rfc2822, Keyring, Release, DEFAULT_KEYRING};
use osk_builder::pkg::{self, Error, Options};
use pgp::composed::{
    CleartextSignedMessage, EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey,
    SignedSecretKey,
};
use pgp::types::Password;
use sha2::{Digest, Sha256};

/// Recorded from the archive: a suite with `Valid-Until` (security) and one
/// without (this mirror's bookworm-updates).
const SECURITY: &str = include_str!("../fixtures/debian/inrelease/bookworm-security");
const UPDATES: &str = include_str!("../fixtures/debian/inrelease/bookworm-updates");
const MIRROR: &str = "http://mirror.invalid/debian";

/// The recorded text, verified with Debian's keyring when the host has it.
fn recorded(signed: &str, origin: &str) -> Release {
    let text = if Path::new(DEFAULT_KEYRING).exists() {
        Keyring::load(Path::new(DEFAULT_KEYRING))
            .unwrap()
            .verify_cleartext(signed, origin)
            .unwrap()
    } else {
        eprintln!("{DEFAULT_KEYRING} missing: checking the recorded text unverified");
        CleartextSignedMessage::from_string(signed)
            .unwrap()
            .0
            .signed_text()
    };
    Release::parse(&text, origin).unwrap()
}

#[test]
fn recorded_release_before_valid_until_is_accepted() {
    let r = recorded(SECURITY, "dists/bookworm-security/InRelease");
    let until = parse_rfc2822("Fri, 27 Nov 2026 00:12:41 UTC").unwrap();
    assert_eq!(r.valid_until, Some(until));
    assert_eq!(r.date, parse_rfc2822("Fri, 20 Nov 2026 00:12:41 UTC"));
    r.check_valid_until(until, false, "bookworm-security", MIRROR)
        .unwrap();
    r.check_valid_until(until - 86400, false, "bookworm-security", MIRROR)
        .unwrap();
}

#[test]
fn recorded_release_after_valid_until_is_refused_naming_suite_and_mirror() {
    let r = recorded(SECURITY, "dists/bookworm-security/InRelease");
    let until = r.valid_until.unwrap();
    let err = r
        .check_valid_until(until + 1, false, "bookworm-security", MIRROR)
        .unwrap_err();
    assert!(matches!(err, Error::ExpiredRelease { .. }), "{err:?}");
    let msg = err.to_string();
    for want in [
        "bookworm-security",
        MIRROR,
        "Fri, 27 Nov 2026 00:12:41 UTC",
        "--allow-expired-release",
        "OSK_ALLOW_EXPIRED_RELEASE=1",
    ] {
        assert!(msg.contains(want), "`{want}` missing from: {msg}");
    }
    // The escape hatch.
    r.check_valid_until(until + 1, true, "bookworm-security", MIRROR)
        .unwrap();
}

#[test]
fn recorded_release_without_valid_until_never_expires() {
    let r = recorded(UPDATES, "dists/bookworm-updates/InRelease");
    assert_eq!(r.valid_until, None);
    assert!(r.date.is_some());
    r.check_valid_until(i64::MAX, false, "bookworm-updates", MIRROR)
        .unwrap();
}

#[test]
fn unparsable_valid_until_is_an_error_naming_the_file() {
    let text =
        include_str!("../fixtures/debian/Release").replace("Date:", "Valid-Until: tomorrow\nDate:");
    let err = Release::parse(&text, "dists/x/InRelease")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dists/x/InRelease") && err.contains("Valid-Until"),
        "{err}"
    );
}

// --- `osk pkg lock` against a served mirror ---------------------------------

fn keypair() -> SignedSecretKey {
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id("Archive <archive@example.invalid>".into());
    params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

/// Serves files below `root` over HTTP/1.1 (GET only) until the test ends.
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/debian", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut h = String::new();
            while r.read_line(&mut h).is_ok_and(|n| n > 2) {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let rel = path.trim_start_matches("/debian/");
            let file = (!rel.contains("..")).then(|| std::fs::read(root.join(rel)).ok());
            let _ = match file.flatten() {
                Some(body) => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|_| s.write_all(&body)),
                None => s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    url
}

/// A one-suite mirror whose Release says `valid_until`; returns the package
/// folder and options pointing at it.
fn mirror_and_package(tmp: &Path, valid_until: &str) -> (PathBuf, Options) {
    let key = keypair();
    let packages = include_str!("../fixtures/debian/Packages");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(packages.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let dists = tmp.join("mirror/dists/bookworm-security");
    std::fs::create_dir_all(dists.join("main/binary-amd64")).unwrap();
    std::fs::write(dists.join("main/binary-amd64/Packages.gz"), &gz).unwrap();
    let release = format!(
        "Origin: Debian\nSuite: oldstable-security\nCodename: bookworm-security\n\
         Date: Fri, 20 Nov 2020 00:12:41 UTC\nValid-Until: {valid_until}\nSHA256:\n {} {} main/binary-amd64/Packages.gz\n",
        hex::encode(Sha256::digest(&gz)),
        gz.len()
    );
    let signed = CleartextSignedMessage::sign(
        rand::thread_rng(),
        &release,
        &key.primary_key,
        &Password::empty(),
    )
    .unwrap()
    .to_armored_string(Default::default())
    .unwrap();
    std::fs::write(dists.join("InRelease"), signed).unwrap();
    let keyring = tmp.join("keyring.asc");
    std::fs::write(
        &keyring,
        SignedPublicKey::from(key)
            .to_armored_string(Default::default())
            .unwrap(),
    )
    .unwrap();
    let dir = tmp.join("pkgs/app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("build.yml"),
        "debian:\n  suites: [bookworm-security]\n  packages: [libc6]\n",
    )
    .unwrap();
    let opts = Options {
        mirror: Some(serve(tmp.join("mirror"))),
        keyring,
        cache_dir: tmp.join("cache"),
        allow_expired_release: false,
        ..Options::default()
    };
    (dir, opts)
}

#[test]
fn lock_refuses_an_expired_release_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, mut opts) = mirror_and_package(tmp.path(), "Fri, 27 Nov 2020 00:12:41 UTC");
    let err = pkg::lock(&dir, &opts).unwrap_err().to_string();
    let mirror = opts.mirror.clone().unwrap();
    assert!(
        err.contains("bookworm-security") && err.contains(&mirror) && err.contains("expired"),
        "{err}"
    );
    assert!(!dir.join("build.lock").exists());
    opts.allow_expired_release = true;
    let lock = pkg::lock(&dir, &opts).unwrap();
    assert_eq!(lock.packages[0].name, "libc6");
}

#[test]
fn lock_accepts_a_release_still_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, opts) = mirror_and_package(tmp.path(), "Fri, 27 Nov 2099 00:12:41 UTC");
    let lock = pkg::lock(&dir, &opts).unwrap();
    assert_eq!(lock.packages.len(), 1);
}
