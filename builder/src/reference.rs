//! Image references as Docker and LinuxKit users write them.
//!
//! `alpine` means `docker.io/library/alpine:latest`; a first component with a
//! dot, a colon or named `localhost` is a registry host; a reference may carry
//! a tag, a digest, or both (the digest wins when resolving).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_REGISTRY: &str = "index.docker.io";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference {0:?} is empty")]
    Empty(String),
    #[error("image reference {reference:?}: {why}")]
    Invalid { reference: String, why: String },
}

/// A `sha256:<64 hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::{Digest as _, Sha256};
        Digest::from_sha256_hex(&hex::encode(Sha256::digest(bytes)))
    }

    pub fn from_sha256_hex(hex: &str) -> Digest {
        Digest(format!("sha256:{hex}"))
    }

    /// The hex part, which names the blob file.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A digest that is not `sha256:<64 lowercase hex>`; carries the text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} is not sha256:<hex> (only sha256 is supported)")]
    Algorithm(String),
    #[error("digest {0:?} does not have 64 lowercase hex digits")]
    Hex(String),
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError::Algorithm(s.into()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Hex(s.into()));
        }
        Ok(Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let invalid = |why: String| ReferenceError::Invalid {
            reference: input.to_string(),
            why,
        };
        if input.trim().is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| invalid(e.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' unless that colon is part of a host:port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid(format!(
                    "tag {tag:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
                )));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == LEGACY_REGISTRY {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if let Some(bad) = repository.split('/').find(|c| !valid_path_component(c)) {
            return Err(invalid(format!(
                "repository component {bad:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// A reference for a locally built image, e.g. `osk/kernel:<hash>`.
    pub fn local(repository: &str, tag: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(&format!("{repository}:{tag}"))
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same reference pinned to a digest.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same reference without its digest (what a tag in the store is keyed by).
    pub fn without_digest(&self) -> Reference {
        Reference {
            digest: None,
            tag: Some(self.tag.clone().unwrap_or_else(|| DEFAULT_TAG.to_string())),
            ..self.clone()
        }
    }

    /// The shortest form users write (`alpine:3.19`, `osk/init:abc`).
    pub fn familiar(&self) -> String {
        let name = if self.registry == DEFAULT_REGISTRY {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        let mut s = name;
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        Reference::parse(s)
    }
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    // Separators: '.', '_', '__', or any run of '-'.
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A writer that passes bytes to `inner` and hashes them (SHA-256) on the way.
pub struct Sha256Writer<W> {
    inner: W,
    hash: sha2::Sha256,
}

impl<W> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        use sha2::Digest as _;
        Sha256Writer {
            inner,
            hash: sha2::Sha256::new(),
        }
    }

    /// The inner writer and the hash of everything written through.
    pub fn finish(self) -> (W, [u8; 32]) {
        use sha2::Digest as _;
        (self.inner, self.hash.finalize().into())
    }
}

impl<W: std::io::Write> std::io::Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(canon("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(canon("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(canon("linuxkit/getty:v1"), "docker.io/linuxkit/getty:v1");
        assert_eq!(
            canon("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registry_hosts_and_ports() {
        assert_eq!(
            canon("127.0.0.1:5000/osk/demo:1"),
            "127.0.0.1:5000/osk/demo:1"
        );
        assert_eq!(canon("localhost/x"), "localhost/x:latest");
        assert_eq!(canon("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(canon("ghcr.io/a/b/c:t"), "ghcr.io/a/b/c:t");
        let r = Reference::parse("127.0.0.1:5000/demo").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.tag(), Some("latest"));
    }

    #[test]
    fn digests() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        let r = Reference::parse(&format!("alpine@{d}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().as_str(), d);
        let r = Reference::parse(&format!("alpine:3@{d}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/alpine:3@{d}"));
        assert_eq!(r.familiar(), format!("alpine:3@{d}"));
        assert!(Reference::parse("alpine@sha256:abc").is_err());
        assert!(Reference::parse("alpine@md5:abc").is_err());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", "Alpine", "a//b", "a:b:c", "-a", "a:-x", "a..b", "a/"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let err = Reference::parse("Foo/bar").unwrap_err().to_string();
        assert!(err.contains("\"Foo\""), "{err}");
    }

    #[test]
    fn digest_of_bytes() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
