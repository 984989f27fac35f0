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
use crate::store::{Image, Store, StoreError};

pub use layer::{layer_entries, read_tar, spooled_tar_entries, EntryKind, LayerEntry};
pub use spool::{CheckedReader, Sha, Spool};
pub use tree::{components, FileInode, InodeId, Kind, Meta, Node, NodeId, Tree};

#[derive(Debug, Error)]
pub enum AssembleError {
    #[error("image {image}: layer entry {path:?} {reason}")]
    Hostile {
        image: String,
        path: String,
        reason: String,
    },
    #[error("image {image}: layer {digest}: {source}")]
    Blob {
        image: String,
        digest: Digest,
        #[source]
        source: Box<StoreError>,
    },
    #[error("image {image}: {what} is not a readable tar archive: {source}")]
    Tar {
        image: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("spool {path}: {source}")]
    Spool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
