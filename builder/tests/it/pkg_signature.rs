//! InRelease signature checks with throwaway keys made by rpgp.

use osk_builder::pkg::debian::release::{Keyring, Release};
use pgp::composed::{
    CleartextSignedMessage, EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey,
    SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::types::Password;

const RELEASE: &str = include_str!("../fixtures/debian/Release");

/// A certify-only primary key with a signing subkey, as Debian's archive keys are.
fn keypair(uid: &str) -> SignedSecretKey {
    let mut sub = SubkeyParamsBuilder::default();
    sub.key_type(KeyType::Ed25519Legacy)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .can_authenticate(false);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(false)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(uid.into())
        .subkeys(vec![sub.build().unwrap()]);
    params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

fn sign_with_subkey(key: &SignedSecretKey, text: &str) -> String {
    let msg = CleartextSignedMessage::sign(
        rand::thread_rng(),
        text,
        &key.secret_subkeys[0].key,
        &Password::empty(),
    )
    .unwrap();
    msg.to_armored_string(Default::default()).unwrap()
}

fn keyring_of(key: &SignedSecretKey) -> Keyring {
    Keyring::from_keys(vec![SignedPublicKey::from(key.clone())], "test-keyring")
}

#[test]
fn valid_subkey_signature_verifies_and_parses() {
    let key = keypair("Archive <archive@example.invalid>");
    let signed = sign_with_subkey(&key, RELEASE);
    let text = keyring_of(&key)
        .verify_cleartext(&signed, "dists/bookworm/InRelease")
        .unwrap();
    let release = Release::parse(&text, "dists/bookworm/InRelease").unwrap();
    assert_eq!(release.codename, "bookworm");
    assert_eq!(release.files["main/binary-amd64/Packages.xz"].size, 1234);
}

#[test]
fn tampered_inrelease_is_rejected_naming_the_file() {
    let key = keypair("Archive <archive@example.invalid>");
    let signed = sign_with_subkey(&key, RELEASE);
    let tampered = signed.replacen(
        "   1234 main/binary-amd64/Packages.xz",
        "   1235 main/binary-amd64/Packages.xz",
        1,
    );
    assert_ne!(tampered, signed);
    let err = keyring_of(&key)
        .verify_cleartext(&tampered, "dists/bookworm/InRelease")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dists/bookworm/InRelease"), "{err}");
    assert!(err.contains("signature"), "{err}");
}

#[test]
fn wrong_key_is_rejected() {
    let signer = keypair("Mallory <m@example.invalid>");
    let trusted = keypair("Archive <archive@example.invalid>");
    let signed = sign_with_subkey(&signer, RELEASE);
    assert!(keyring_of(&trusted)
        .verify_cleartext(&signed, "InRelease")
        .is_err());
}

#[test]
fn keyring_round_trips_through_binary_file() {
    use pgp::ser::Serialize;
    let a = keypair("A <a@example.invalid>");
    let b = keypair("B <b@example.invalid>");
    let mut bytes = Vec::new();
    SignedPublicKey::from(a.clone())
        .to_writer(&mut bytes)
        .unwrap();
    SignedPublicKey::from(b.clone())
        .to_writer(&mut bytes)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.gpg");
    std::fs::write(&path, &bytes).unwrap();
    let ring = Keyring::load(&path).unwrap();
    // The second key of a concatenated keyring is found too.
    ring.verify_cleartext(&sign_with_subkey(&b, RELEASE), "InRelease")
        .unwrap();
}

#[test]
fn debian_keyring_loads_when_present() {
    let path = std::path::Path::new(osk_builder::pkg::debian::release::DEFAULT_KEYRING);
    if path.exists() {
        Keyring::load(path).unwrap();
    }
}
