//! Pulls images over the OCI distribution API into the local store.
//!
//! The builder is synchronous; this module owns a private single-threaded
//! tokio runtime per pull and exposes blocking calls. Every manifest and blob
//! goes through [`Store::put_blob`] with its expected digest, layers are
//! streamed to disk, and content already in the store is never fetched again.
//! A multi-platform index is stored whole (so the store's entry is the index)
//! but only the chosen platform's manifest, config and layers are fetched.

mod credentials;
mod stream;
mod transport;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use thiserror::Error;
use tokio::runtime::Runtime;

use crate::reference::{Digest, Reference};
use crate::store::{
    descriptor, descriptor_digest, host_arch, pick_platform, platforms, Image, PlatformSpec, Store,
    StoreError,
};

pub use credentials::{
    default_config_dir, lookup as lookup_credentials, Credentials, CredentialsError,
};
pub use transport::plain_http;

const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];

#[derive(Debug, Error)]
pub enum PullError {
    #[error("cannot pull {reference}: registry {registry} refused access ({detail}); log in with `docker login {registry}` or put credentials for {registry} into {config} (DOCKER_CONFIG selects another directory)")]
    Auth {
        reference: String,
        registry: String,
        detail: String,
        config: String,
    },
    #[error("image {reference} was not found on registry {registry} ({detail}); check the repository name and tag")]
    NotFound {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("cannot reach registry {registry} to pull {reference}: {detail}; check the network and proxy settings{hint}")]
    Network {
        reference: String,
        registry: String,
        detail: String,
        hint: String,
    },
    #[error("registry {registry} failed to serve {reference}: {detail}")]
    Registry {
        reference: String,
        registry: String,
        detail: String,
    },
    /// The store's own [`StoreError::NoPlatform`]: the registry's index lacks the platform.
    #[error(transparent)]
    NoPlatform(Box<StoreError>),
    #[error("image {reference}: {what}")]
    Unsupported { reference: String, what: String },
    #[error("cannot pull {reference}: credentials for {registry}")]
    Credentials {
        reference: String,
        registry: String,
        #[source]
        source: Box<CredentialsError>,
    },
    #[error("cannot pull {reference} into the store")]
    Store {
        reference: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("cannot pull {reference}: {detail}")]
    Setup { reference: String, detail: String },
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub os: String,
    /// OCI architecture name; defaults to the host's.
    pub arch: String,
    /// Refresh the tag from the registry even when the image is in the store.
    pub force: bool,
    /// Registries (`host` or `host:port`) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Where `config.json` lives; `None` means `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// Draw a progress bar (only ever when stderr is a terminal).
    pub progress: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            os: "linux".into(),
            arch: host_arch().into(),
            force: false,
            insecure_registries: Vec::new(),
            docker_config: None,
            progress: true,
        }
    }
}

/// What the network was asked for during one pull.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Manifests and indexes downloaded.
    pub manifests: usize,
    /// Configs and layers downloaded.
    pub blobs: usize,
    /// Bytes of configs and layers downloaded.
    pub bytes: u64,
}

/// A finished pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Image,
    /// Digest of what the reference names: the index for a multi-platform image.
    pub digest: Digest,
    pub stats: PullStats,
}

/// The image from the store when it is there (unless `opts.force`), else pulled.
pub fn ensure(
    store: &Store,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Image, PullError> {
    if !opts.force {
        let present = store
            .resolve(reference)
            .map_err(|source| PullError::Store {
                reference: reference.familiar(),
                source: Box::new(source),
            })?;
        if present.is_some() {
            match store.image(reference, &opts.os, &opts.arch) {
                Ok(image) => return Ok(image),
                // E.g. an index pulled for another platform: fetch what is missing.
                Err(e) => tracing::debug!(
                    "{}: not usable from the store ({e}); pulling",
                    reference.familiar()
                ),
            }
        }
    }
    pull(store, reference, opts).map(|p| p.image)
}

/// Fetches the manifest of `reference` from its registry and whatever blobs
/// of the chosen platform the store lacks, then names it `reference`.
pub fn pull(store: &Store, reference: &Reference, opts: &PullOptions) -> Result<Pulled, PullError> {
    Puller::new(store, reference, opts)?.run()
}

struct Puller<'a> {
    store: &'a Store,
    reference: &'a Reference,
    opts: &'a PullOptions,
    remote: oci_client::Reference,
    auth: RegistryAuth,
    client: oci_client::Client,
    runtime: Runtime,
    config_path: PathBuf,
    plain_http: bool,
    stats: PullStats,
}

impl<'a> Puller<'a> {
    fn new(
        store: &'a Store,
        reference: &'a Reference,
        opts: &'a PullOptions,
    ) -> Result<Self, PullError> {
        let setup = |detail: String| PullError::Setup {
            reference: reference.familiar(),
            detail,
        };
        let registry = reference.registry();
        let config_dir = opts
            .docker_config
            .clone()
            .or_else(default_config_dir)
            .unwrap_or_else(|| PathBuf::from(".docker"));
        let credentials = credentials::lookup(&config_dir, registry).map_err(|source| {
            PullError::Credentials {
                reference: reference.familiar(),
                registry: registry.to_string(),
                source: Box::new(source),
            }
        })?;
        tracing::debug!("{}: credentials {credentials:?}", reference.familiar());
        let auth = match credentials {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username, password),
        };
        let plain_http = transport::plain_http(registry, &opts.insecure_registries);

        // reqwest is built without a default crypto provider; ring is ours.
        // An error only means a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            // We choose the platform ourselves; never let the client guess.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("osk/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config)
            .map_err(|e| setup(format!("cannot set up an HTTP client: {}", chain(&e))))?;
        let remote: oci_client::Reference = reference
            .to_string()
            .parse()
            .map_err(|e| setup(format!("the registry client rejects the reference: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start an async runtime: {e}")))?;
        runtime.block_on(client.store_auth_if_needed(remote.resolve_registry(), &auth));
        Ok(Puller {
            store,
            reference,
            opts,
            remote,
            auth,
            client,
            runtime,
            config_path: config_dir.join("config.json"),
            plain_http,
            stats: PullStats::default(),
        })
    }

    fn run(mut self) -> Result<Pulled, PullError> {
        let top = self.manifest(self.reference.digest().cloned())?;
        let mut desc = top.clone();
        for _ in 0..4 {
            match manifest_kind(desc.media_type()) {
                Some(Kind::Index) => {
                    let digest = self.digest_of(&desc)?;
                    let index: ImageIndex = self.read_json(&digest)?;
                    let platform = PlatformSpec {
                        os: self.opts.os.clone(),
                        arch: self.opts.arch.clone(),
                        variant: None,
                    };
                    let chosen = pick_platform(&index, &platform).ok_or_else(|| {
                        PullError::NoPlatform(Box::new(StoreError::NoPlatform {
                            reference: self.reference.familiar(),
                            platform: platform.to_string(),
                            available: platforms(&index),
                        }))
                    })?;
                    desc = self.manifest(Some(self.digest_of(&chosen)?))?;
                }
                Some(Kind::Manifest) => {
                    let digest = self.digest_of(&desc)?;
                    let manifest: ImageManifest = self.read_json(&digest)?;
                    self.blobs(&manifest)?;
                    return self.finish(&top);
                }
                None => {
                    return Err(PullError::Unsupported {
                        reference: self.reference.familiar(),
                        what: format!("unsupported manifest media type {}", desc.media_type()),
                    })
                }
            }
        }
        Err(PullError::Unsupported {
            reference: self.reference.familiar(),
            what: "indexes are nested too deeply".into(),
        })
    }

    /// Names the pulled image and loads it back from the store.
    fn finish(self, top: &Descriptor) -> Result<Pulled, PullError> {
        // A digest-only reference has no tag to keep; it stays reachable by digest.
        if self.reference.tag().is_some() {
            self.store
                .tag(self.reference, top)
                .map_err(|e| self.store_err(e))?;
        }
        let image = self
            .store
            .image(self.reference, &self.opts.os, &self.opts.arch)
            .map_err(|e| self.store_err(e))?;
        Ok(Pulled {
            image,
            digest: self.digest_of(top)?,
            stats: self.stats,
        })
    }

    /// Gets a manifest or index (by tag when `digest` is `None`) into the store
    /// and returns its descriptor. Content-addressed ones already held are not fetched.
    fn manifest(&mut self, digest: Option<Digest>) -> Result<Descriptor, PullError> {
        if let Some(d) = digest.as_ref().filter(|d| self.store.has_blob(d)) {
            let bytes = self.store.read_blob(d).map_err(|e| self.store_err(e))?;
            return self.manifest_descriptor(&bytes, d);
        }
        let remote = match &digest {
            Some(d) => self.remote.clone_with_digest(d.to_string()),
            None => self.remote.clone(),
        };
        let (bytes, got) = self
            .runtime
            .block_on(
                self.client
                    .pull_manifest_raw(&remote, &self.auth, ACCEPTED_MANIFESTS),
            )
            .map_err(|e| self.classify(e))?;
        self.stats.manifests += 1;
        let got: Digest = got.parse().map_err(|e| PullError::Registry {
            reference: self.reference.familiar(),
            registry: self.reference.registry().into(),
            detail: format!("the manifest's digest: {e}"),
        })?;
        if let Some(d) = &digest {
            if *d != got {
                return Err(self.store_err(StoreError::DigestMismatch {
                    expected: d.clone(),
                    actual: got,
                    context: " (the registry served another manifest)".into(),
                }));
            }
        }
        self.store
            .put_blob(&bytes[..], Some(&got))
            .map_err(|e| self.store_err(e))?;
        self.manifest_descriptor(&bytes, &got)
    }

    fn manifest_descriptor(&self, bytes: &[u8], digest: &Digest) -> Result<Descriptor, PullError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| PullError::Registry {
                reference: self.reference.familiar(),
                registry: self.reference.registry().into(),
                detail: format!("manifest {digest} is not JSON: {e}"),
            })?;
        let media = match value.get("mediaType").and_then(|m| m.as_str()) {
            Some(m) => MediaType::from(m),
            None if value.get("manifests").is_some() => MediaType::ImageIndex,
            None => MediaType::ImageManifest,
        };
        Ok(descriptor(media, digest, bytes.len() as u64))
    }

    /// Downloads the config and layers the store lacks, one progress bar for all of them.
    fn blobs(&mut self, manifest: &ImageManifest) -> Result<(), PullError> {
        let mut wanted = Vec::new();
        for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let digest = self.digest_of(d)?;
            if !self.store.has_blob(&digest) && !wanted.iter().any(|(w, _)| *w == digest) {
                wanted.push((digest, d.size()));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let progress = self.progress_bar(wanted.iter().map(|(_, s)| *s).sum());
        for (digest, _) in &wanted {
            self.blob(digest, &progress)?;
        }
        progress.finish_and_clear();
        Ok(())
    }

    fn blob(&mut self, digest: &Digest, progress: &ProgressBar) -> Result<(), PullError> {
        let stream = self
            .runtime
            .block_on(self.client.pull_blob_stream(&self.remote, digest.as_str()))
            .map_err(|e| self.classify(e))?;
        let mut reader = stream::BlobReader::new(&self.runtime, stream, progress);
        let stored = self.store.put_blob(&mut reader, Some(digest));
        let failure = reader.failure.take();
        let (_, size) = match (stored, failure) {
            (Ok(v), _) => v,
            (Err(_), Some(detail)) => {
                return Err(self.network(format!("downloading blob {digest}: {detail}")));
            }
            (Err(e), None) => return Err(self.store_err(e)),
        };
        tracing::debug!(
            "{}: fetched {digest} ({size} bytes)",
            self.reference.familiar()
        );
        self.stats.blobs += 1;
        self.stats.bytes += size;
        Ok(())
    }

    fn progress_bar(&self, total: u64) -> ProgressBar {
        if !self.opts.progress || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_message(format!("pulling {}", self.reference.familiar()));
        bar
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, digest: &Digest) -> Result<T, PullError> {
        let bytes = self
            .store
            .read_blob(digest)
            .map_err(|e| self.store_err(e))?;
        serde_json::from_slice(&bytes).map_err(|e| PullError::Registry {
            reference: self.reference.familiar(),
            registry: self.reference.registry().into(),
            detail: format!("manifest {digest} is not a valid OCI/Docker manifest: {e}"),
        })
    }

    fn digest_of(&self, d: &Descriptor) -> Result<Digest, PullError> {
        descriptor_digest(d).map_err(|e| self.store_err(e))
    }

    fn store_err(&self, source: StoreError) -> PullError {
        PullError::Store {
            reference: self.reference.familiar(),
            source: Box::new(source),
        }
    }

    fn network(&self, detail: String) -> PullError {
        let registry = self.reference.registry();
        let hint = if self.plain_http {
            String::new()
        } else {
            format!(
                " (if {registry} serves plain HTTP, allow it with --insecure-registry {registry})"
            )
        };
        PullError::Network {
            reference: self.reference.familiar(),
            registry: registry.into(),
            detail,
            hint,
        }
    }

    /// Turns a client error into one that says what to do.
    fn classify(&self, e: OciDistributionError) -> PullError {
        let reference = self.reference.familiar();
        let registry = self.reference.registry().to_string();
        let auth = |detail: String| PullError::Auth {
            reference: reference.clone(),
            registry: registry.clone(),
            detail,
            config: self.config_path.display().to_string(),
        };
        let not_found = |detail: String| PullError::NotFound {
            reference: reference.clone(),
            registry: registry.clone(),
            detail,
        };
        let other = |detail: String| PullError::Registry {
            reference: reference.clone(),
            registry: registry.clone(),
            detail,
        };
        match e {
            OciDistributionError::AuthenticationFailure(d) => auth(d),
            OciDistributionError::UnauthorizedError { url } => {
                auth(format!("401 Unauthorized for {url}"))
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                let has = |c: &[OciErrorCode]| envelope.errors.iter().any(|e| c.contains(&e.code));
                let detail = format!("{detail} at {url}");
                if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    auth(detail)
                } else if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                    OciErrorCode::BlobUnknown,
                ]) {
                    not_found(detail)
                } else {
                    other(detail)
                }
            }
            OciDistributionError::ServerError { code, url, message } => {
                let detail = format!("HTTP {code} for {url}: {}", message.trim());
                match code {
                    401 | 403 => auth(detail),
                    404 => not_found(detail),
                    _ => other(detail),
                }
            }
            OciDistributionError::ImageManifestNotFoundError(d) => not_found(d),
            e @ (OciDistributionError::RequestError(_) | OciDistributionError::IoError(_)) => {
                self.network(chain(&e))
            }
            e => other(chain(&e)),
        }
    }
}

enum Kind {
    Index,
    Manifest,
}

fn manifest_kind(m: &MediaType) -> Option<Kind> {
    match m {
        MediaType::ImageIndex => Some(Kind::Index),
        MediaType::ImageManifest => Some(Kind::Manifest),
        MediaType::Other(s) if s == IMAGE_MANIFEST_LIST_MEDIA_TYPE => Some(Kind::Index),
        MediaType::Other(s) if s == IMAGE_MANIFEST_MEDIA_TYPE => Some(Kind::Manifest),
        _ => None,
    }
}

/// An error and its sources on one line (reqwest hides the useful part in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
