//! `osk pkg`: base OCI images built from Debian packages, locked and
//! reproducible, without Docker or root.
//!
//! The Debian archive client (sources, signed Release, indexes, versions,
//! resolver, downloads, `.deb` unpacking) is [`debian`]; the rest builds.
//!
//! A package is a folder `pkgs/NAME/` with `build.yml` (see [`spec`]) and
//! `build.lock` (see [`lock`]). Locking resolves against the signed archive;
//! building only downloads what the lock names, verifies every byte and
//! writes one deterministic layer.

pub mod debian;
pub mod image;
pub mod kernel;
pub mod lock;
pub mod spec;
pub mod tree;

mod build;

pub use build::{build, ensure_built, lock, show_tag, write_index, write_to_store, Built, Options};

use std::path::Path;

/// Everything that can go wrong in `osk pkg`, each naming its input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{at}: {message}")]
    Spec { at: String, message: String },
    #[error("{path}: {message}")]
    Lock { path: String, message: String },
    #[error(
        "no Debian mirror: pass --mirror URL, set {}, or add a `deb` entry for Debian to /etc/apt/sources.list(.d)",
        debian::apt_source::MIRROR_ENV
    )]
    NoMirror,
    #[error("keyring {path}: {message}")]
    Keyring { path: String, message: String },
    #[error("{file}: signature check failed: {message}")]
    Signature { file: String, message: String },
    #[error("{file}: {message}")]
    Release { file: String, message: String },
    #[error(
        "suite {suite} on mirror {mirror}: the signed Release expired at {valid_until} (signed {date}, now {now}); \
         the mirror is stale or replays an old archive state, which could hide security updates. \
         Use an up-to-date mirror, or accept it with --allow-expired-release or {}=1",
        debian::release::ALLOW_EXPIRED_ENV
    )]
    ExpiredRelease {
        suite: String,
        mirror: String,
        date: String,
        valid_until: String,
        now: String,
    },
    #[error("{origin}: package `{package}`: {message}")]
    Index {
        origin: String,
        package: String,
        message: String,
    },
    #[error("{file}: checksum mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("GET {url}: {message}")]
    Http {
        url: String,
        message: String,
        not_found: bool,
    },
    #[error("cannot satisfy `{dependency}` needed by {chain}: {detail}")]
    Unresolvable {
        dependency: String,
        chain: String,
        detail: String,
    },
    #[error("{file}: {message}")]
    Deb { file: String, message: String },
    /// A path the package's tree cannot hold; `from` is the .deb or build.yml giving it.
    #[error("{from}: cannot put {path} in the image: it {cause}")]
    Path {
        from: String,
        path: String,
        #[source]
        cause: crate::assemble::PathError,
    },
    #[error("kernel package {file}: {message}")]
    Kernel { file: String, message: String },
    /// What went wrong resolving one package for one architecture.
    #[error("package {package} for {arch}")]
    ForArch {
        package: String,
        arch: crate::arch::Arch,
        #[source]
        source: Box<Error>,
    },
    #[error("cargo build of `{package}`: {message}")]
    Cargo { package: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{at}: base image {reference}: {message}")]
    BaseImage {
        at: String,
        reference: String,
        message: String,
    },
    #[error(transparent)]
    Assemble(#[from] crate::assemble::AssembleError),
    #[error("image: {0}")]
    Image(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
