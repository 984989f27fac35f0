//! The local image store: an OCI image layout that skopeo and umoci can read.
//!
//! `blobs/sha256/<hex>` holds content, `index.json` names images by their full
//! reference in the `org.opencontainers.image.ref.name` annotation. Blobs are
//! written to a private temporary file, hashed while streaming, and renamed
//! into place only when their digest is right; every read is verified again,
//! so a corrupt blob is an error, never silently used.

mod docker_archive;
mod layout;
mod transfer;
mod verify;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageConfiguration, ImageIndex, ImageIndexBuilder,
    ImageManifest, ImageManifestBuilder, MediaType, ANNOTATION_REF_NAME,
};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::reference::{Digest, Reference};

pub use layout::{oci_layout_file, BadPlatform, Layout, PlatformSpec, CONTAINERD_IMAGE_NAME};
pub use transfer::ArchiveFormat;
pub use verify::{BadBlob, BlobFault, Verified};

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {what} is not valid JSON")]
    Json {
        path: PathBuf,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {reference} is not in the store {store} (pull it, import it with `osk cache import`, or build its package)")]
    NotFound { reference: String, store: PathBuf },
    #[error("blob {digest} is missing from the store {store}{context}")]
    MissingBlob {
        digest: Digest,
        store: PathBuf,
        context: String,
    },
    /// `context` names where the blob came from and, where the caller knows, what to do.
    #[error("blob {expected} is corrupt: its content hashes to {actual}{context}")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        context: String,
    },
    /// A blob whose size is not its descriptor's: truncated or appended to.
    #[error("blob {digest} is damaged: it has {actual} bytes where its descriptor says {expected}{context}")]
    BlobSize {
        digest: Digest,
        expected: u64,
        actual: u64,
        context: String,
    },
    #[error("image {reference} has no manifest for platform {platform} (available: {available}); use one of those")]
    NoPlatform {
        reference: String,
        /// `os/arch[/variant]`.
        platform: String,
        available: String,
    },
    #[error("image {reference}: unsupported manifest media type {media_type}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("{0}")]
    Import(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image resolved to a single platform manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub reference: Reference,
    /// Digest of the platform manifest (not of an index above it).
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

impl Image {
    /// Layers in application order, with their digests parsed.
    pub fn layers(&self) -> Result<Vec<(Digest, &Descriptor)>> {
        self.manifest
            .layers()
            .iter()
            .map(|d| Ok((descriptor_digest(d)?, d)))
            .collect()
    }

    /// The `org.mobyproject.config` label, if the image has one.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.config
            .config()
            .as_ref()?
            .labels()
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
}

/// One named entry of the store's index.
#[derive(Debug, Clone)]
pub struct Entry {
    pub reference: Reference,
    pub descriptor: Descriptor,
}

/// The store at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `$XDG_CACHE_HOME/osk`, else `~/.cache/osk`.
    pub fn default_path() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("osk");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        home.join(".cache").join("osk")
    }

    /// Opens the store at `root`, creating an empty OCI layout there if needed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, OCI_LAYOUT.as_bytes())?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            write_atomic(&index, &to_json(&index_of(Vec::new())))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` lives (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Streams `content` into the store and returns its digest and size.
    /// With `expected`, a mismatch is an error and nothing is stored.
    pub fn put_blob(
        &self,
        mut content: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        let dir = self.root.join("blobs");
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err(&dir))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io_err(tmp.path()))?;
            size += n as u64;
        }
        let digest = Digest::from_sha256_hex(&hex::encode(hasher.finalize()));
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                    context: String::new(),
                });
            }
        }
        let dest = self.blob_path(&digest);
        if !dest.exists() {
            tmp.as_file().sync_data().map_err(io_err(tmp.path()))?;
            tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        }
        Ok((digest, size))
    }

    /// Stores `bytes` and returns a descriptor for them.
    pub fn put_bytes(&self, media_type: MediaType, bytes: &[u8]) -> Result<Descriptor> {
        let (digest, size) = self.put_blob(bytes, None)?;
        Ok(descriptor(media_type, &digest, size))
    }

    /// Opens a blob for streaming; the reader fails at its end if the content
    /// does not match `digest`, so callers must read to EOF before trusting it.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifyingReader<File>> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob {
                    digest: digest.clone(),
                    store: self.root.clone(),
                    context: String::new(),
                }
            } else {
                io_err(&path)(e)
            }
        })?;
        Ok(VerifyingReader::new(file, digest.clone()))
    }

    /// Reads a whole (small) blob and verifies it.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut out)
            .map_err(|e| verify_error(e, &self.blob_path(digest)))?;
        Ok(out)
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, digest: &Digest, what: &str) -> Result<T> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            path: self.blob_path(digest),
            what: what.to_string(),
            source,
        })
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn read_index(&self) -> Result<ImageIndex> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            path,
            what: "the index".into(),
            source,
        })
    }

    /// Runs `change` on the index under an exclusive lock and writes it back atomically.
    fn update_index<T>(&self, change: impl FnOnce(&mut Vec<Descriptor>) -> T) -> Result<T> {
        let lock_path = self.root.join(".lock");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let mut index = self.read_index()?;
        let mut manifests = index.manifests().clone();
        let out = change(&mut manifests);
        manifests.sort_by_key(|d| ref_name(d).unwrap_or_default());
        index.set_manifests(manifests);
        write_atomic(&self.index_path(), &to_json(&index))?;
        Ok(out)
    }

    /// Names `descriptor` (a manifest or an index) as `reference`, replacing any previous image of that name.
    pub fn tag(&self, reference: &Reference, descriptor: &Descriptor) -> Result<()> {
        let name = reference.without_digest().to_string();
        let mut d = descriptor.clone();
        let mut ann = d.annotations().clone().unwrap_or_default();
        ann.insert(ANNOTATION_REF_NAME.to_string(), name.clone());
        d.set_annotations(Some(ann));
        self.update_index(|m| {
            m.retain(|e| ref_name(e).as_deref() != Some(name.as_str()));
            m.push(d);
        })
    }

    /// Every named image, sorted by reference.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let index = self.read_index()?;
        let mut out: Vec<Entry> = index
            .manifests()
            .iter()
            .filter_map(|d| {
                let reference = Reference::parse(&ref_name(d)?).ok()?;
                Some(Entry {
                    reference,
                    descriptor: d.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The index entry for `reference`: by digest if it has one, else by name.
    pub fn resolve(&self, reference: &Reference) -> Result<Option<Descriptor>> {
        if let Some(digest) = reference.digest() {
            if self.has_blob(digest) {
                let known = self
                    .list()?
                    .into_iter()
                    .find(|e| e.descriptor.digest().to_string() == digest.as_str());
                return Ok(Some(match known {
                    Some(e) => e.descriptor,
                    // A digest-pinned manifest we hold only as a blob: sniff its type.
                    None => {
                        let bytes = self.read_blob(digest)?;
                        let media = sniff_media_type(&bytes);
                        descriptor(media, digest, bytes.len() as u64)
                    }
                }));
            }
            return Ok(None);
        }
        let name = reference.without_digest().to_string();
        Ok(self
            .read_index()?
            .manifests()
            .iter()
            .find(|d| ref_name(d).as_deref() == Some(name.as_str()))
            .cloned())
    }

    /// Loads `reference` for `os`/`arch`, following an index to the right platform.
    pub fn image(&self, reference: &Reference, os: &str, arch: &str) -> Result<Image> {
        let platform = PlatformSpec {
            os: os.into(),
            arch: arch.into(),
            variant: None,
        };
        self.image_for(reference, &platform)
    }

    /// Loads `reference` for `platform` (its variant too, when it names one).
    pub fn image_for(&self, reference: &Reference, platform: &PlatformSpec) -> Result<Image> {
        let top = self
            .resolve(reference)?
            .ok_or_else(|| StoreError::NotFound {
                reference: reference.familiar(),
                store: self.root.clone(),
            })?;
        let with_ref = |e: StoreError| with_context(e, &remedy(reference));
        let mut desc = top;
        for _ in 0..4 {
            let digest = descriptor_digest(&desc)?;
            match media_kind(desc.media_type()) {
                Kind::Index => {
                    let index: ImageIndex = self
                        .read_json(&digest, "an image index")
                        .map_err(with_ref)?;
                    desc =
                        pick_platform(&index, platform).ok_or_else(|| StoreError::NoPlatform {
                            reference: reference.familiar(),
                            platform: platform.to_string(),
                            available: platforms(&index),
                        })?;
                }
                Kind::Manifest => {
                    let manifest: ImageManifest = self
                        .read_json(&digest, "an image manifest")
                        .map_err(with_ref)?;
                    let config_digest = descriptor_digest(manifest.config())?;
                    let config: ImageConfiguration = self
                        .read_json(&config_digest, "an image config")
                        .map_err(with_ref)?;
                    let image = Image {
                        reference: reference.clone(),
                        manifest_digest: digest,
                        manifest,
                        config,
                    };
                    // A single-platform image is only good for its own platform.
                    let has = PlatformSpec::of(&image);
                    if !platform.covers(&has) {
                        return Err(StoreError::NoPlatform {
                            reference: reference.familiar(),
                            platform: platform.to_string(),
                            available: has.to_string(),
                        });
                    }
                    return Ok(image);
                }
                Kind::Other(media_type) => {
                    return Err(StoreError::UnsupportedMediaType {
                        reference: reference.familiar(),
                        media_type,
                    })
                }
            }
        }
        Err(StoreError::UnsupportedMediaType {
            reference: reference.familiar(),
            media_type: "an index nested too deeply".into(),
        })
    }

    /// Checks that every layer blob of `image` is there with its descriptor's
    /// size: a stat per layer, cheap enough for every build, which may take
    /// its files from the spool and never read the blob. (The manifest and
    /// config were hashed when the image was loaded; a layer is hashed
    /// whenever it is read.)
    /// Returns the first bad layer's digest with the error.
    pub fn check_layer_sizes(&self, image: &Image) -> Result<(), (Digest, StoreError)> {
        for (digest, desc) in image
            .layers()
            .map_err(|e| (image.manifest_digest.clone(), e))?
        {
            self.check_size(&digest, desc.size())
                .map_err(|e| (digest.clone(), e))?;
        }
        Ok(())
    }

    /// Whether blob `digest` is present with `expected` bytes.
    pub(crate) fn check_size(&self, digest: &Digest, expected: u64) -> Result<()> {
        let path = self.blob_path(digest);
        let actual = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob {
                    digest: digest.clone(),
                    store: self.root.clone(),
                    context: String::new(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if actual != expected {
            return Err(StoreError::BlobSize {
                digest: digest.clone(),
                expected,
                actual,
                context: String::new(),
            });
        }
        Ok(())
    }

    /// Writes `config` and a manifest over `layers` (already in the store),
    /// names it `reference`, and returns the manifest's descriptor.
    pub fn write_image(
        &self,
        reference: &Reference,
        config: &ImageConfiguration,
        layers: Vec<Descriptor>,
    ) -> Result<Descriptor> {
        let config_desc = self.put_bytes(MediaType::ImageConfig, &to_json(config))?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc)
            .layers(layers)
            .build()
            .expect("manifest with config and layers always builds");
        let desc = self.put_bytes(MediaType::ImageManifest, &to_json(&manifest))?;
        self.tag(reference, &desc)?;
        Ok(desc)
    }

    /// Removes the name `reference`, then deletes blobs no remaining name reaches.
    /// Returns how many bytes were freed.
    pub fn remove(&self, reference: &Reference) -> Result<u64> {
        let name = reference.without_digest().to_string();
        let removed = self.update_index(|m| {
            let before = m.len();
            m.retain(|e| ref_name(e).as_deref() != Some(name.as_str()));
            before != m.len()
        })?;
        if !removed {
            return Err(StoreError::NotFound {
                reference: reference.familiar(),
                store: self.root.clone(),
            });
        }
        self.gc()
    }

    /// Deletes blobs that no named image reaches. Returns bytes freed.
    pub fn gc(&self) -> Result<u64> {
        let mut live = BTreeSet::new();
        for entry in self.read_index()?.manifests() {
            self.mark(entry, &mut live)?;
        }
        let dir = self.root.join("blobs").join("sha256");
        let mut freed = 0;
        for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let item = item.map_err(io_err(&dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                freed += item.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(item.path()).map_err(io_err(&item.path()))?;
            }
        }
        Ok(freed)
    }

    /// Adds the hex digests of every blob reachable from `desc` to `live`.
    fn mark(&self, desc: &Descriptor, live: &mut BTreeSet<String>) -> Result<()> {
        let digest = descriptor_digest(desc)?;
        if !live.insert(digest.hex().to_string()) || !self.has_blob(&digest) {
            return Ok(());
        }
        match media_kind(desc.media_type()) {
            Kind::Index => {
                let index: ImageIndex = self.read_json(&digest, "an image index")?;
                for d in index.manifests() {
                    self.mark(d, live)?;
                }
            }
            Kind::Manifest => {
                let m: ImageManifest = self.read_json(&digest, "an image manifest")?;
                live.insert(descriptor_digest(m.config())?.hex().to_string());
                for l in m.layers() {
                    live.insert(descriptor_digest(l)?.hex().to_string());
                }
            }
            Kind::Other(_) => {}
        }
        Ok(())
    }

    /// Every blob digest reachable from `desc`, in a stable order (for export).
    pub(crate) fn reachable(&self, desc: &Descriptor) -> Result<Vec<Digest>> {
        let mut live = BTreeSet::new();
        self.mark(desc, &mut live)?;
        Ok(live.iter().map(|h| Digest::from_sha256_hex(h)).collect())
    }
}

/// A reader that hashes what passes through and fails at EOF on a mismatch.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            expected,
            done: false,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !buf.is_empty() && !self.done {
            self.done = true;
            let actual = Digest::from_sha256_hex(&hex::encode(self.hasher.clone().finalize()));
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    DigestMismatchIo {
                        expected: self.expected.clone(),
                        actual,
                    },
                ));
            }
        }
        Ok(n)
    }
}

/// The io-level form of a digest mismatch, recoverable with [`verify_error`].
#[derive(Debug)]
pub struct DigestMismatchIo {
    pub expected: Digest,
    pub actual: Digest,
}

impl std::fmt::Display for DigestMismatchIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blob {} is corrupt: its content hashes to {}",
            self.expected, self.actual
        )
    }
}

impl std::error::Error for DigestMismatchIo {}

/// The first error of type `T` in `e`'s chain, looking inside `io::Error`s
/// too (decoders, tar and cpio writers wrap the error of the reader below).
pub fn cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = match err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// Turns an io error from a [`VerifyingReader`] back into the precise store error.
pub fn verify_error(e: io::Error, path: &Path) -> StoreError {
    if let Some(m) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<DigestMismatchIo>())
    {
        return StoreError::DigestMismatch {
            expected: m.expected.clone(),
            actual: m.actual.clone(),
            context: String::new(),
        };
    }
    io_err(path)(e)
}

/// The context for a bad blob of a stored image: which image, and what to do.
pub(crate) fn remedy(reference: &Reference) -> String {
    let name = reference.familiar();
    format!(" (image {name}); remove it with `osk cache rm {name}` and pull or build it again")
}

fn with_context(e: StoreError, ctx: &str) -> StoreError {
    match e {
        StoreError::DigestMismatch {
            expected, actual, ..
        } => StoreError::DigestMismatch {
            expected,
            actual,
            context: ctx.to_string(),
        },
        StoreError::MissingBlob { digest, store, .. } => StoreError::MissingBlob {
            digest,
            store,
            context: ctx.to_string(),
        },
        StoreError::BlobSize {
            digest,
            expected,
            actual,
            ..
        } => StoreError::BlobSize {
            digest,
            expected,
            actual,
            context: ctx.to_string(),
        },
        other => other,
    }
}

enum Kind {
    Index,
    Manifest,
    Other(String),
}

fn media_kind(m: &MediaType) -> Kind {
    match m {
        MediaType::ImageIndex => Kind::Index,
        MediaType::ImageManifest => Kind::Manifest,
        MediaType::Other(s) if s == DOCKER_MANIFEST_LIST => Kind::Index,
        MediaType::Other(s) if s == DOCKER_MANIFEST_V2 => Kind::Manifest,
        other => Kind::Other(other.to_string()),
    }
}

fn sniff_media_type(bytes: &[u8]) -> MediaType {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => MediaType::from(m),
        None if v.get("manifests").is_some() => MediaType::ImageIndex,
        None => MediaType::ImageManifest,
    }
}

/// The first entry of `index` for `platform`; the puller fetches the same one.
pub(crate) fn pick_platform(index: &ImageIndex, platform: &PlatformSpec) -> Option<Descriptor> {
    index
        .manifests()
        .iter()
        .find(|d| d.platform().as_ref().is_some_and(|p| platform.matches(p)))
        .cloned()
}

/// `os/arch[/variant]` of every entry, for error messages.
pub(crate) fn platforms(index: &ImageIndex) -> String {
    let v: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| match p.variant().as_deref().filter(|v| !v.is_empty()) {
            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
            None => format!("{}/{}", p.os(), p.architecture()),
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn ref_name(d: &Descriptor) -> Option<String> {
    d.annotations().as_ref()?.get(ANNOTATION_REF_NAME).cloned()
}

/// Parses a descriptor's digest, insisting on sha256.
pub fn descriptor_digest(d: &Descriptor) -> Result<Digest> {
    d.digest()
        .to_string()
        .parse()
        .map_err(|e: crate::reference::DigestError| StoreError::Import(e.to_string()))
}

/// A descriptor for content already hashed.
pub fn descriptor(media_type: MediaType, digest: &Digest, size: u64) -> Descriptor {
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(
            digest
                .as_str()
                .parse::<oci_spec::image::Digest>()
                .expect("a sha256 digest always parses"),
        )
        .size(size)
        .build()
        .expect("descriptor with type, digest and size always builds")
}

/// Deterministic JSON: through `serde_json::Value`, whose maps are sorted.
/// An OCI image index listing `manifests`, as layouts and exports write them.
pub fn index_of(manifests: Vec<Descriptor>) -> ImageIndex {
    ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .expect("an index of descriptors always builds")
}

pub fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let value = serde_json::to_value(v).expect("OCI types always serialize");
    serde_json::to_vec(&value).expect("a JSON value always serializes")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

/// The host's architecture as OCI names it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests;
