//! `InRelease`: the archive's signed table of contents.
//!
//! The cleartext signature is checked against the archive keyring (primary
//! keys and their signing subkeys, whose binding signatures must hold) before
//! a single line of the text is trusted.

use std::collections::BTreeMap;
use std::path::Path;

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};

use super::index::paragraphs;
use super::Error;

/// Default keyring, shipped by Debian's `debian-archive-keyring` package.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Public keys trusted to sign archives.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    origin: String,
}

impl Keyring {
    /// Reads a binary (or ASCII-armored) OpenPGP keyring.
    pub fn load(path: &Path) -> Result<Keyring, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Keyring::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses keys from bytes; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Keyring, Error> {
        let bad = |m: String| Error::Keyring {
            path: origin.to_string(),
            message: m,
        };
        let keys: Vec<SignedPublicKey> = if bytes.starts_with(b"-----BEGIN") {
            SignedPublicKey::from_armor_many(bytes)
                .map_err(|e| bad(e.to_string()))?
                .0
                .collect::<Result<_, _>>()
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<_, _>>()
        }
        .map_err(|e| bad(e.to_string()))?;
        if keys.is_empty() {
            return Err(bad("no public keys in keyring".to_string()));
        }
        Ok(Keyring {
            keys,
            origin: origin.to_string(),
        })
    }

    pub fn from_keys(keys: Vec<SignedPublicKey>, origin: &str) -> Keyring {
        Keyring {
            keys,
            origin: origin.to_string(),
        }
    }

    /// Checks a cleartext-signed document and returns its text when at least
    /// one signature was made by a key (or bound subkey) of this keyring.
    pub fn verify_cleartext(&self, armored: &str, origin: &str) -> Result<String, Error> {
        let bad = |m: String| Error::Signature {
            file: origin.to_string(),
            message: m,
        };
        let (msg, _) = CleartextSignedMessage::from_string(armored)
            .map_err(|e| bad(format!("not a cleartext-signed message: {e}")))?;
        for key in &self.keys {
            if msg.verify(&key.primary_key).is_ok() {
                return Ok(msg.signed_text_lf());
            }
            for sub in &key.public_subkeys {
                // A subkey counts only if the primary key really bound it.
                if sub.verify_bindings(&key.primary_key).is_ok() && msg.verify(&sub.key).is_ok() {
                    return Ok(msg.signed_text_lf());
                }
            }
        }
        Err(bad(format!(
            "no valid signature by a key in {} (tampered file or wrong --keyring)",
            self.origin
        )))
    }
}

trait SignedTextLf {
    fn signed_text_lf(&self) -> String;
}

impl SignedTextLf for CleartextSignedMessage {
    /// The verified text with `\n` line ends, as the archive wrote it.
    fn signed_text_lf(&self) -> String {
        let mut t = self.signed_text().replace("\r\n", "\n");
        t.push('\n');
        t
    }
}

/// A file listed in a Release file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub size: u64,
}

/// The parsed (already verified) Release text.
#[derive(Debug, Clone)]
pub struct Release {
    pub suite: String,
    pub codename: String,
    pub files: BTreeMap<String, Entry>,
}

impl Release {
    pub fn parse(text: &str, origin: &str) -> Result<Release, Error> {
        let p = paragraphs(text)
            .into_iter()
            .next()
            .ok_or_else(|| Error::Release {
                file: origin.to_string(),
                message: "empty Release".to_string(),
            })?;
        let mut files = BTreeMap::new();
        for line in p.get("SHA256").map(String::as_str).unwrap_or("").lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [sha, size, name] = parts[..] {
                let size = size.parse().map_err(|_| Error::Release {
                    file: origin.to_string(),
                    message: format!("bad size for {name}"),
                })?;
                files.insert(
                    name.to_string(),
                    Entry {
                        sha256: sha.to_ascii_lowercase(),
                        size,
                    },
                );
            }
        }
        if files.is_empty() {
            return Err(Error::Release {
                file: origin.to_string(),
                message: "no SHA256 entries".to_string(),
            });
        }
        Ok(Release {
            suite: p.get("Suite").cloned().unwrap_or_default(),
            codename: p.get("Codename").cloned().unwrap_or_default(),
            files,
        })
    }
}
