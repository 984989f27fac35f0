//! Moving images into and out of the store: OCI layout directories and OCI archives.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ANNOTATION_REF_NAME};

use super::{
    descriptor_digest, io_err, to_json, verify_error, with_context, Result, Store, StoreError,
    CONTAINERD_IMAGE_NAME,
};
use crate::reference::{Digest, Reference};
use crate::untrusted::quote;

/// How an exported image is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout directory.
    Dir,
    /// An OCI archive: the layout as an uncompressed tar.
    Tar,
}

impl ArchiveFormat {
    /// `.tar` means an archive, anything else a directory.
    pub fn for_path(path: &Path) -> ArchiveFormat {
        match path.extension() {
            Some(e) if e == "tar" => ArchiveFormat::Tar,
            _ => ArchiveFormat::Dir,
        }
    }
}

impl Store {
    /// Imports every named image of an OCI layout directory or OCI archive.
    /// `rename` names the image when the source holds exactly one.
    pub fn import(&self, source: &Path, rename: Option<&Reference>) -> Result<Vec<Reference>> {
        let meta = fs::metadata(source).map_err(io_err(source))?;
        let index = if meta.is_dir() {
            self.import_dir_blobs(source)?
        } else {
            self.import_tar_blobs(source)?
        };
        let named = name_entries(source, &index, rename)?;
        // Verify that everything each image needs arrived before naming it.
        for (_, desc) in &named {
            for digest in self.reachable(desc)? {
                if !self.has_blob(&digest) {
                    return Err(StoreError::Import(format!(
                        "{}: blob {digest} is referenced but missing; the layout is incomplete",
                        source.display()
                    )));
                }
            }
        }
        let mut out = Vec::new();
        for (reference, desc) in named {
            self.tag(&reference, &desc)?;
            out.push(reference);
        }
        Ok(out)
    }

    fn import_dir_blobs(&self, source: &Path) -> Result<ImageIndex> {
        let index_path = source.join("index.json");
        let index = read_index_file(&index_path)?;
        let blobs = source.join("blobs").join("sha256");
        // Copy only what the index reaches, verifying each blob as it streams in.
        let mut todo: Vec<Descriptor> = index.manifests().clone();
        while let Some(desc) = todo.pop() {
            let digest = descriptor_digest(&desc)?;
            if !self.has_blob(&digest) {
                let path = blobs.join(digest.hex());
                let file = File::open(&path).map_err(|e| {
                    StoreError::Import(format!(
                        "{}: blob {digest} is missing: {e}",
                        source.display()
                    ))
                })?;
                self.put_blob(BufReader::new(file), Some(&digest))
                    .map_err(|e| in_source(e, source))?;
            }
            todo.extend(children(self, &desc)?);
        }
        Ok(index)
    }

    fn import_tar_blobs(&self, source: &Path) -> Result<ImageIndex> {
        let file = File::open(source).map_err(io_err(source))?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        let mut index = None;
        // The tar crate's messages quote header bytes raw.
        let not_tar = |e: io::Error| {
            StoreError::Import(format!(
                "{} is not a tar archive (an OCI archive is one): {}",
                source.display(),
                quote(e.to_string().as_bytes())
            ))
        };
        for entry in archive.entries().map_err(not_tar)? {
            let mut entry = entry.map_err(not_tar)?;
            let path = entry.path().map_err(not_tar)?.into_owned();
            let path = path.strip_prefix("./").unwrap_or(&path).to_path_buf();
            if path == Path::new("index.json") {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(io_err(source))?;
                index = Some(parse_index(&bytes, &source.join("index.json"))?);
            } else if let Ok(hex) = path.strip_prefix("blobs/sha256") {
                let digest: Digest = format!("sha256:{}", hex.display()).parse().map_err(
                    |_: crate::reference::DigestError| {
                        StoreError::Import(format!(
                            "{}: entry {} is not named by a sha256 digest",
                            source.display(),
                            quote(path.as_os_str().as_encoded_bytes())
                        ))
                    },
                )?;
                if !self.has_blob(&digest) {
                    self.put_blob(&mut entry, Some(&digest))
                        .map_err(|e| in_source(e, source))?;
                }
            }
        }
        index.ok_or_else(|| {
            StoreError::Import(format!(
                "{} is not an OCI archive: it is a tar without index.json",
                source.display()
            ))
        })
    }

    /// Writes `reference` as an OCI layout directory or archive at `dest`.
    pub fn export(&self, reference: &Reference, dest: &Path, format: ArchiveFormat) -> Result<()> {
        let desc = self
            .resolve(reference)?
            .ok_or_else(|| StoreError::NotFound {
                reference: reference.familiar(),
                store: self.root.clone(),
            })?;
        let named = super::layout::named(&desc, &reference.without_digest().to_string());
        let index = super::index_of(vec![named]);
        let blobs = self.reachable(&desc)?;
        let bad_blob = |e: StoreError| with_context(e, &super::remedy(reference));
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match format {
            ArchiveFormat::Dir => {
                let tmp = tempfile::Builder::new()
                    .prefix(".osk-export-")
                    .tempdir_in(parent)
                    .map_err(io_err(parent))?;
                let dir = tmp.path();
                fs::create_dir_all(dir.join("blobs/sha256")).map_err(io_err(dir))?;
                fs::write(dir.join("oci-layout"), super::OCI_LAYOUT).map_err(io_err(dir))?;
                fs::write(dir.join("index.json"), to_json(&index)).map_err(io_err(dir))?;
                for d in &blobs {
                    let mut reader = self.open_blob(d).map_err(bad_blob)?;
                    let target = dir.join("blobs/sha256").join(d.hex());
                    let mut out = File::create(&target).map_err(io_err(&target))?;
                    io::copy(&mut reader, &mut out)
                        .map_err(|e| bad_blob(verify_error(e, &target)))?;
                }
                if dest.exists() {
                    return Err(StoreError::Import(format!(
                        "{} already exists; remove it or choose another path",
                        dest.display()
                    )));
                }
                let kept = tmp.keep();
                fs::rename(&kept, dest).map_err(io_err(dest))?;
            }
            ArchiveFormat::Tar => {
                let tmp = tempfile::NamedTempFile::new_in(parent).map_err(io_err(parent))?;
                let mut builder = tar::Builder::new(tmp.as_file());
                append_bytes(&mut builder, "oci-layout", super::OCI_LAYOUT.as_bytes())?;
                append_bytes(&mut builder, "index.json", &to_json(&index))?;
                for d in &blobs {
                    let path = self.blob_path(d);
                    let size = fs::metadata(&path).map_err(io_err(&path))?.len();
                    let mut header = fixed_header(size);
                    let mut reader = self.open_blob(d).map_err(bad_blob)?;
                    builder
                        .append_data(
                            &mut header,
                            format!("blobs/sha256/{}", d.hex()),
                            &mut reader,
                        )
                        .map_err(|e| bad_blob(verify_error(e, &path)))?;
                }
                builder.finish().map_err(io_err(dest))?;
                drop(builder);
                readable(&tmp, dest)?;
                tmp.persist(dest).map_err(|e| io_err(dest)(e.error))?;
            }
        }
        Ok(())
    }
}

/// An archive is for others to read: 0644, not the temporary file's 0600.
pub(super) fn readable(tmp: &tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_err(dest))
}

pub(super) fn fixed_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

pub(super) fn append_bytes(
    builder: &mut tar::Builder<&File>,
    name: &str,
    bytes: &[u8],
) -> Result<()> {
    let mut header = fixed_header(bytes.len() as u64);
    builder
        .append_data(&mut header, name, bytes)
        .map_err(|e| io_err(Path::new(name))(e))
}

fn read_index_file(path: &Path) -> Result<ImageIndex> {
    let bytes = fs::read(path).map_err(|e| {
        StoreError::Import(format!(
            "{} is not an OCI layout: cannot read index.json: {e}",
            path.parent().unwrap_or(path).display()
        ))
    })?;
    parse_index(&bytes, path)
}

fn parse_index(bytes: &[u8], path: &Path) -> Result<ImageIndex> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        what: "the index".into(),
        source,
    })
}

/// Descriptors one level below `desc` (an index's manifests, a manifest's config and layers).
fn children(store: &Store, desc: &Descriptor) -> Result<Vec<Descriptor>> {
    let digest = descriptor_digest(desc)?;
    let bytes = store.read_blob(&digest)?;
    let v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    let parse = |x: &serde_json::Value| serde_json::from_value::<Descriptor>(x.clone()).ok();
    if let Some(ms) = v.get("manifests").and_then(|m| m.as_array()) {
        out.extend(ms.iter().filter_map(parse));
    }
    if let Some(c) = v.get("config").and_then(parse) {
        out.push(c);
    }
    if let Some(ls) = v.get("layers").and_then(|l| l.as_array()) {
        out.extend(ls.iter().filter_map(parse));
    }
    Ok(out)
}

/// Names each entry of an imported index.
fn name_entries(
    source: &Path,
    index: &ImageIndex,
    rename: Option<&Reference>,
) -> Result<Vec<(Reference, Descriptor)>> {
    let entries = index.manifests();
    if let Some(r) = rename {
        if entries.len() != 1 {
            return Err(StoreError::Import(format!(
                "{} holds {} images; --as names exactly one",
                source.display(),
                entries.len()
            )));
        }
        return Ok(vec![(r.clone(), entries[0].clone())]);
    }
    entries
        .iter()
        .map(|d| {
            let ann = d.annotations().clone().unwrap_or_default();
            let name = ann
                .get(CONTAINERD_IMAGE_NAME)
                .or_else(|| ann.get(ANNOTATION_REF_NAME))
                .filter(|n| n.contains(['/', ':']))
                .ok_or_else(|| {
                    StoreError::Import(format!(
                        "{}: image {} has no full name (ref.name is {:?}); name it with --as REFERENCE",
                        source.display(),
                        d.digest(),
                        ann.get(ANNOTATION_REF_NAME)
                    ))
                })?;
            let r = Reference::parse(name).map_err(|_| {
                StoreError::Import(format!(
                    "{}: image name {} is not a valid reference",
                    source.display(),
                    quote(name.as_bytes())
                ))
            })?;
            Ok((r, d.clone()))
        })
        .collect()
}

/// Names the layout a bad blob came from.
fn in_source(e: StoreError, source: &Path) -> StoreError {
    with_context(e, &format!(" (in {})", source.display()))
}
