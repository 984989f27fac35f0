//! Layer application into an in-memory tree.
//!
//! Image content is never extracted onto the host under its in-image path:
//! file data goes to the [`Spool`] under its hash and the tree keeps only
//! metadata, so a hostile layer cannot write anywhere on the host, and an
//! entry that would leave the image root is refused with the image and the
//! entry named.

mod layer;
mod spool;
mod tree;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::reference::Digest;
use crate::store::{self, Image, Store, StoreError};

pub use layer::{layer_entries, read_tar, spooled_tar_entries, EntryKind, LayerEntry};
pub use spool::{damage as spool_damage, CheckedReader, Sha, Spool, SpoolDamage};
pub use tree::{components, FileInode, InodeId, Kind, Meta, Node, NodeId, PathError, Tree};

#[derive(Debug, Error)]
pub enum AssembleError {
    #[error("image {image}: layer entry {path:?} {reason}")]
    Hostile {
        image: String,
        path: String,
        reason: String,
    },
    #[error("image {image}: blob {digest} cannot be used; remove the image with `osk cache rm {image}` and pull or build it again")]
    Blob {
        image: String,
        digest: Digest,
        #[source]
        source: Box<StoreError>,
    },
    #[error("image {image}: {what} is not a readable tar archive")]
    Tar {
        image: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot use the spool {path}")]
    Spool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Copies a blob of `image` into the spool as it is (no unpacking) and
/// returns its spool hash and size; the store's digest check runs on the way.
pub fn spool_blob(
    store: &Store,
    spool: &Spool,
    image: &str,
    digest: &Digest,
) -> Result<(Sha, u64), AssembleError> {
    let blob_err = |source: StoreError| AssembleError::Blob {
        image: image.to_string(),
        digest: digest.clone(),
        source: Box::new(source),
    };
    let path = store.blob_path(digest);
    let sha: Sha = hex::decode(digest.hex())
        .ok()
        .and_then(|b| b.try_into().ok())
        .expect("a parsed sha256 digest is 32 bytes of hex");
    if spool.has(&sha) {
        // Spool reads are verified; the store copy need not be read again.
        let size = std::fs::metadata(spool.content_path(&sha))
            .map_err(|e| AssembleError::Spool {
                path: spool.content_path(&sha),
                source: e,
            })?
            .len();
        return Ok((sha, size));
    }
    let mut reader = store.open_blob(digest).map_err(blob_err)?;
    let size = std::fs::metadata(&path)
        .map_err(|e| blob_err(store::verify_error(e, &path)))?
        .len();
    let got = spool
        .put_reader(&mut reader, size)
        .and_then(|sha| {
            // Read to the end: that is where the store's reader checks the digest.
            io::copy(&mut reader, &mut io::sink())?;
            Ok(sha)
        })
        .map_err(|e| blob_err(store::verify_error(e, &path)))?;
    debug_assert_eq!(got, sha, "a verified blob hashes to its digest");
    Ok((sha, size))
}

/// Whether spool entry `sha` came from `image`: one of its blobs spooled as
/// it is, or a file its cached layer indexes list. Only for reports.
pub fn image_uses_content(spool: &Spool, image: &Image, sha: &Sha) -> bool {
    let hex = hex::encode(sha);
    image.layers().is_ok_and(|layers| {
        layers
            .iter()
            .any(|(d, _)| d.hex() == hex || layer::lists_content(spool, d, sha))
    })
}

/// What `osk cache verify` finds wrong in a spool.
#[derive(Debug, Default)]
pub struct SpoolCheck {
    /// Content entries that are not what their names say.
    pub content: Vec<SpoolDamage>,
    /// Cached layer indexes that fail their checksum.
    pub indexes: Vec<PathBuf>,
}

/// Hashes every spool entry and checks every cached layer index.
pub fn check_spool(spool: &Spool) -> io::Result<SpoolCheck> {
    Ok(SpoolCheck {
        content: spool.check_content()?,
        indexes: layer::damaged_indexes(spool)?,
    })
}

/// Applies every layer of `image`, in order, to a fresh tree.
pub fn flatten(store: &Store, spool: &Spool, image: &Image) -> Result<Tree, AssembleError> {
    let name = image.reference.familiar();
    let layers = image.layers().map_err(|source| AssembleError::Blob {
        image: name.clone(),
        digest: image.manifest_digest.clone(),
        source: Box::new(source),
    })?;
    let mut tree = Tree::new();
    for (digest, desc) in layers {
        let entries = layer_entries(store, spool, &name, &digest, desc.media_type())?;
        tree.apply_layer(&entries, &name, true)?;
    }
    Ok(tree)
}
