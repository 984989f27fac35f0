//! `osk cache verify`: every blob against its digest and size, and every
//! reference an index, manifest or config makes, like `git fsck`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io;

use oci_spec::image::Descriptor;

use super::{
    descriptor_digest, io_err, media_kind, ref_name, Kind, Result, Store, VerifyingReader,
};
use crate::reference::{Digest, Reference};

/// What is wrong with one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobFault {
    Missing,
    Size {
        expected: u64,
        actual: u64,
    },
    Digest {
        actual: Digest,
    },
    /// A manifest or index that is not the JSON its media type says.
    NotJson,
}

impl fmt::Display for BlobFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobFault::Missing => f.write_str("is missing"),
            BlobFault::Size { expected, actual } => {
                write!(f, "has {actual} bytes where its descriptor says {expected}")
            }
            BlobFault::Digest { actual } => write!(f, "is corrupt: its content hashes to {actual}"),
            BlobFault::NotJson => f.write_str("is not a valid manifest or index"),
        }
    }
}

/// One damaged blob and the named images that reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBlob {
    pub digest: Digest,
    pub fault: BlobFault,
    pub images: BTreeSet<String>,
}

impl fmt::Display for BadBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blob {} {}", self.digest, self.fault)?;
        if self.images.is_empty() {
            f.write_str(" (no image uses it)")
        } else {
            let v: Vec<&str> = self.images.iter().map(String::as_str).collect();
            write!(f, " (image {})", v.join(", image "))
        }
    }
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Blobs hashed, named or not.
    pub blobs: usize,
    pub bad: Vec<BadBlob>,
}

impl Verified {
    /// Named images that reach a bad blob: they cannot be used until pulled or built again.
    pub fn unusable(&self) -> BTreeSet<String> {
        self.bad
            .iter()
            .flat_map(|b| b.images.iter().cloned())
            .collect()
    }
}

/// An index entry's name as users write it (its digest if it has none).
fn image_name(d: &Descriptor) -> String {
    match ref_name(d).map(|n| Reference::parse(&n).map(|r| r.familiar()).unwrap_or(n)) {
        Some(n) => n,
        None => d.digest().to_string(),
    }
}

impl Store {
    /// Hashes every blob and follows every named image's references.
    /// A platform manifest an index lists but the store lacks is not
    /// damage (pulls fetch one platform); a missing config or layer of a
    /// manifest the store holds is.
    pub fn verify(&self) -> Result<Verified> {
        let mut checked: BTreeMap<Digest, Option<BlobFault>> = BTreeMap::new();
        let mut users: BTreeMap<Digest, BTreeSet<String>> = BTreeMap::new();
        for top in self.read_index()?.manifests() {
            let name = image_name(top);
            let mut todo = vec![(top.clone(), true)];
            while let Some((desc, required)) = todo.pop() {
                let digest = descriptor_digest(&desc)?;
                if !required && !self.has_blob(&digest) {
                    continue;
                }
                users
                    .entry(digest.clone())
                    .or_default()
                    .insert(name.clone());
                if !checked.contains_key(&digest) {
                    let fault = self.check_blob(&digest, Some(desc.size()))?;
                    checked.insert(digest.clone(), fault);
                }
                if checked[&digest].is_some() {
                    continue;
                }
                match self.references(&desc, &digest) {
                    Some(children) => todo.extend(children),
                    None => {
                        checked.insert(digest, Some(BlobFault::NotJson));
                    }
                }
            }
        }
        // Blobs no name reaches are hashed too: a damaged one is damage all the same.
        let dir = self.root.join("blobs").join("sha256");
        for item in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let item = item.map_err(io_err(&dir))?;
            let Ok(digest) =
                format!("sha256:{}", item.file_name().to_string_lossy()).parse::<Digest>()
            else {
                continue; // not a blob (a temporary being written)
            };
            if let std::collections::btree_map::Entry::Vacant(slot) = checked.entry(digest) {
                let fault = self.check_blob(slot.key(), None)?;
                slot.insert(fault);
            }
        }
        let blobs = checked.len();
        let bad = checked
            .into_iter()
            .filter_map(|(digest, fault)| {
                Some(BadBlob {
                    images: users.remove(&digest).unwrap_or_default(),
                    digest,
                    fault: fault?,
                })
            })
            .collect();
        Ok(Verified { blobs, bad })
    }

    /// Deletes the bad blobs and the names of images that reach one, so the
    /// next build pulls or builds those again. Returns the names removed.
    pub fn repair(&self, found: &Verified) -> Result<BTreeSet<String>> {
        for b in &found.bad {
            let path = self.blob_path(&b.digest);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
            }
        }
        let unusable = found.unusable();
        self.update_index(|m| {
            m.retain(|d| !unusable.contains(&image_name(d)));
        })?;
        Ok(unusable)
    }

    /// The blob's fault, if any: presence, then size, then its full hash.
    fn check_blob(&self, digest: &Digest, size: Option<u64>) -> Result<Option<BlobFault>> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(BlobFault::Missing)),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let actual = file.metadata().map_err(io_err(&path))?.len();
        if let Some(expected) = size.filter(|s| *s != actual) {
            return Ok(Some(BlobFault::Size { expected, actual }));
        }
        let mut r = VerifyingReader::new(
            io::BufReader::with_capacity(256 * 1024, file),
            digest.clone(),
        );
        match io::copy(&mut r, &mut io::sink()) {
            Ok(_) => Ok(None),
            Err(e) => match super::verify_error(e, &path) {
                super::StoreError::DigestMismatch { actual, .. } => {
                    Ok(Some(BlobFault::Digest { actual }))
                }
                other => Err(other),
            },
        }
    }

    /// The descriptors an index or manifest refers to (with whether each
    /// must be present); None when it does not parse.
    fn references(&self, desc: &Descriptor, digest: &Digest) -> Option<Vec<(Descriptor, bool)>> {
        match media_kind(desc.media_type()) {
            Kind::Index => {
                let index: oci_spec::image::ImageIndex =
                    self.read_json(digest, "an image index").ok()?;
                Some(
                    index
                        .manifests()
                        .iter()
                        .map(|d| (d.clone(), false))
                        .collect(),
                )
            }
            Kind::Manifest => {
                let m: oci_spec::image::ImageManifest =
                    self.read_json(digest, "an image manifest").ok()?;
                let mut out = vec![(m.config().clone(), true)];
                out.extend(m.layers().iter().map(|d| (d.clone(), true)));
                Some(out)
            }
            Kind::Other(_) => Some(Vec::new()),
        }
    }
}
