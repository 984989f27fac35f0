//! Reading a layer (tar, tar+gzip, tar+zstd) into a list of entries whose
//! file data is in the spool. The list is cached in the spool by layer
//! digest, so a warm build never decompresses a layer again.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};

use oci_spec::image::MediaType;
use tar::EntryType;

use sha2::{Digest as _, Sha256};

use super::spool::{Sha, Spool};
use super::AssembleError;
use crate::reference::Digest;
use crate::store::{verify_error, DigestMismatchIo, Store};

/// One tar entry, as it was in the layer (paths not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { sha: Sha, size: u64 },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Plain,
    Gzip,
    Zstd,
}

fn sniff(head: &[u8]) -> Codec {
    match head {
        [0x1f, 0x8b, ..] => Codec::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Codec::Zstd,
        _ => Codec::Plain,
    }
}

fn declared(media: &MediaType) -> Option<Codec> {
    let m = media.to_string();
    if m.ends_with("gzip") {
        Some(Codec::Gzip)
    } else if m.ends_with("zstd") {
        Some(Codec::Zstd)
    } else if m.ends_with(".tar") {
        Some(Codec::Plain)
    } else {
        None
    }
}

/// The entries of a layer of `image`, from the spool's cache or by reading the blob.
pub fn layer_entries(
    store: &Store,
    spool: &Spool,
    image: &str,
    digest: &Digest,
    media: &MediaType,
) -> Result<Vec<LayerEntry>, AssembleError> {
    let key = digest.hex().to_string();
    if let Some(entries) = load_index(spool, &key) {
        return Ok(entries);
    }
    let blob = store
        .open_blob(digest)
        .map_err(|source| AssembleError::Blob {
            image: image.to_string(),
            digest: digest.clone(),
            source: Box::new(source),
        })?;
    let path = store.blob_path(digest);
    let mut raw = BufReader::with_capacity(256 * 1024, blob);
    let parsed = (|| -> io::Result<Vec<LayerEntry>> {
        let codec = sniff(raw.fill_buf()?);
        if let Some(d) = declared(media) {
            if d != codec {
                tracing::debug!(image, %digest, "layer media type {media} disagrees with its content ({codec:?}); using the content");
            }
        }
        match codec {
            Codec::Plain => read_tar(&mut raw, spool),
            Codec::Gzip => read_tar(flate2::bufread::MultiGzDecoder::new(&mut raw), spool),
            Codec::Zstd => read_tar(zstd::Decoder::with_buffer(&mut raw)?, spool),
        }
    })();
    // Read the blob to its end whatever happened: a digest mismatch explains
    // a decoding error better than the decoding error itself.
    let drained = io::copy(&mut raw, &mut io::sink());
    let blob_err = |e: io::Error| AssembleError::Blob {
        image: image.to_string(),
        digest: digest.clone(),
        source: Box::new(verify_error(e, &path)),
    };
    let entries = match (parsed, drained) {
        (Ok(entries), Ok(_)) => entries,
        (Err(e), _) if mismatch(&e).is_some() => {
            let m = mismatch(&e).expect("checked");
            return Err(blob_err(io::Error::new(
                io::ErrorKind::InvalidData,
                DigestMismatchIo {
                    expected: m.expected.clone(),
                    actual: m.actual.clone(),
                },
            )));
        }
        (_, Err(e)) => return Err(blob_err(e)),
        (Err(source), Ok(_)) => {
            return Err(AssembleError::Tar {
                image: image.to_string(),
                what: format!("layer {digest}"),
                source,
            })
        }
    };
    save_index(spool, &key, &entries);
    Ok(entries)
}

/// The entries of a tar stored in the spool (the kernel image's `kernel.tar`).
pub fn spooled_tar_entries(
    spool: &Spool,
    image: &str,
    name: &str,
    sha: &Sha,
) -> Result<Vec<LayerEntry>, AssembleError> {
    let key = format!("tar-{}", hex::encode(sha));
    if let Some(entries) = load_index(spool, &key) {
        return Ok(entries);
    }
    let tar_err = |source| AssembleError::Tar {
        image: image.to_string(),
        what: name.to_string(),
        source,
    };
    let mut r = BufReader::with_capacity(256 * 1024, spool.open_content(sha).map_err(tar_err)?);
    let entries = read_tar(&mut r, spool).map_err(tar_err)?;
    io::copy(&mut r, &mut io::sink()).map_err(tar_err)?;
    save_index(spool, &key, &entries);
    Ok(entries)
}

/// Whether the cached index of layer `digest` (or of a tar inside it, as the
/// kernel's modules tar) lists content `sha`; for naming who uses a spool entry.
pub(crate) fn lists_content(spool: &Spool, digest: &Digest, sha: &Sha) -> bool {
    let Some(entries) = load_index_unchecked(spool, digest.hex()) else {
        return false;
    };
    entries.iter().any(|e| match &e.kind {
        EntryKind::File { sha: s, .. } => {
            s == sha
                || load_index_unchecked(spool, &format!("tar-{}", hex::encode(s))).is_some_and(
                    |inner| {
                        inner
                            .iter()
                            .any(|i| matches!(&i.kind, EntryKind::File { sha: x, .. } if x == sha))
                    },
                )
        }
        _ => false,
    })
}

/// Parses a tar stream, spooling file data.
pub fn read_tar(r: impl Read, spool: &Spool) -> io::Result<Vec<LayerEntry>> {
    let mut archive = tar::Archive::new(r);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path_bytes().into_owned();
        let h = entry.header();
        let mode = h.mode()? & 0o7777;
        let uid = u32::try_from(h.uid()?).map_err(|_| bad(&path, "uid out of range"))?;
        let gid = u32::try_from(h.gid()?).map_err(|_| bad(&path, "gid out of range"))?;
        let dev = |h: &tar::Header| -> io::Result<(u32, u32)> {
            Ok((
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            ))
        };
        let link = |e: &tar::Entry<_>| -> io::Result<Vec<u8>> {
            e.link_name_bytes()
                .map(|l| l.into_owned())
                .ok_or_else(|| bad(&path, "link without a target"))
        };
        let kind = match h.entry_type() {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                let sha = spool.put_reader(&mut entry, size)?;
                EntryKind::File { sha, size }
            }
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink(link(&entry)?),
            EntryType::Link => EntryKind::Hardlink(link(&entry)?),
            EntryType::Char => {
                let (a, b) = dev(h)?;
                EntryKind::Char(a, b)
            }
            EntryType::Block => {
                let (a, b) = dev(h)?;
                EntryKind::Block(a, b)
            }
            EntryType::Fifo => EntryKind::Fifo,
            other => {
                tracing::warn!(
                    "skipping tar entry {} of unsupported type {other:?}",
                    crate::untrusted::quote(&path)
                );
                continue;
            }
        };
        out.push(LayerEntry {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    Ok(out)
}

/// A digest mismatch anywhere in an io error's chain.
fn mismatch(e: &io::Error) -> Option<&DigestMismatchIo> {
    crate::store::cause(e)
}

fn bad(path: &[u8], what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", crate::untrusted::quote(path)),
    )
}

// The cached index: a small binary format ending in the sha256 of what comes
// before it, rebuilt from the blob if anything is off.
const MAGIC: &[u8; 8] = b"OSKLIDX2";

fn save_index(spool: &Spool, key: &str, entries: &[LayerEntry]) {
    let mut b = Vec::with_capacity(entries.len() * 96 + 16);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        let (tag, a, c) = match &e.kind {
            EntryKind::Dir => (0u8, 0, 0),
            EntryKind::File { .. } => (1, 0, 0),
            EntryKind::Symlink(_) => (2, 0, 0),
            EntryKind::Hardlink(_) => (3, 0, 0),
            EntryKind::Char(a, c) => (4, *a, *c),
            EntryKind::Block(a, c) => (5, *a, *c),
            EntryKind::Fifo => (6, 0, 0),
        };
        b.push(tag);
        for v in [e.mode, e.uid, e.gid, a, c] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        put_bytes(&mut b, &e.path);
        match &e.kind {
            EntryKind::File { sha, size } => {
                b.extend_from_slice(sha);
                b.extend_from_slice(&size.to_le_bytes());
            }
            EntryKind::Symlink(t) | EntryKind::Hardlink(t) => put_bytes(&mut b, t),
            _ => {}
        }
    }
    let sum: [u8; 32] = Sha256::digest(&b).into();
    b.extend_from_slice(&sum);
    let write = || -> io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(spool.tmp_dir())?;
        tmp.write_all(&b)?;
        tmp.persist(spool.index_path(key)).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::debug!("could not cache layer index {key}: {e}");
    }
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

/// Cached layer indexes that do not parse or fail their checksum.
pub(crate) fn damaged_indexes(spool: &Spool) -> io::Result<Vec<std::path::PathBuf>> {
    let mut bad = Vec::new();
    for item in fs::read_dir(spool.index_path(""))? {
        let path = item?.path();
        if parse_index(&fs::read(&path)?).is_none() {
            bad.push(path);
        }
    }
    bad.sort();
    Ok(bad)
}

/// A cached index that parses and whose checksum holds, whether or not its content is all spooled.
fn load_index_unchecked(spool: &Spool, key: &str) -> Option<Vec<LayerEntry>> {
    parse_index(&fs::read(spool.index_path(key)).ok()?)
}

fn load_index(spool: &Spool, key: &str) -> Option<Vec<LayerEntry>> {
    let path = spool.index_path(key);
    let bytes = fs::read(&path).ok()?;
    let entries = parse_index(&bytes);
    if entries.is_none() && bytes.starts_with(b"OSKLIDX1") {
        tracing::debug!("cached layer index {key} has an older format; reading the layer again");
        return None;
    }
    if entries.is_none() {
        tracing::warn!(
            "cached layer index {} is damaged; reading the layer from its verified blob again",
            path.display()
        );
        return None;
    }
    let entries = entries?;
    // Content may have been removed from the spool; then read the layer again.
    let complete = entries.iter().all(|e| match &e.kind {
        EntryKind::File { sha, .. } => spool.has(sha),
        _ => true,
    });
    complete.then_some(entries)
}

fn parse_index(b: &[u8]) -> Option<Vec<LayerEntry>> {
    let (b, sum) = b.split_at_checked(b.len().checked_sub(32)?)?;
    if Sha256::digest(b).as_slice() != sum {
        return None;
    }
    struct Cur<'a>(&'a [u8]);
    impl<'a> Cur<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<Vec<u8>> {
            let n = self.u32()? as usize;
            Some(self.take(n)?.to_vec())
        }
    }
    let mut c = Cur(b);
    if c.take(8)? != MAGIC {
        return None;
    }
    let n = c.u64()? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let tag = c.take(1)?[0];
        let (mode, uid, gid, a, d) = (c.u32()?, c.u32()?, c.u32()?, c.u32()?, c.u32()?);
        let path = c.bytes()?;
        let kind = match tag {
            0 => EntryKind::Dir,
            1 => EntryKind::File {
                sha: c.take(32)?.try_into().ok()?,
                size: c.u64()?,
            },
            2 => EntryKind::Symlink(c.bytes()?),
            3 => EntryKind::Hardlink(c.bytes()?),
            4 => EntryKind::Char(a, d),
            5 => EntryKind::Block(a, d),
            6 => EntryKind::Fifo,
            _ => return None,
        };
        out.push(LayerEntry {
            path,
            kind,
            mode,
            uid,
            gid,
        });
    }
    c.0.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips() {
        let spool = Spool::temporary().unwrap();
        let sha = spool.put_bytes(b"hello").unwrap();
        let entries = vec![
            LayerEntry {
                path: b"etc".to_vec(),
                kind: EntryKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            LayerEntry {
                path: b"etc/x".to_vec(),
                kind: EntryKind::File { sha, size: 5 },
                mode: 0o4755,
                uid: 1,
                gid: 2,
            },
            LayerEntry {
                path: b"dev/null".to_vec(),
                kind: EntryKind::Char(1, 3),
                mode: 0o666,
                uid: 0,
                gid: 0,
            },
            LayerEntry {
                path: b"l".to_vec(),
                kind: EntryKind::Symlink(b"/etc/x".to_vec()),
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
        ];
        save_index(&spool, "k", &entries);
        assert_eq!(load_index(&spool, "k").unwrap(), entries);
        // Content gone: the cache is not used.
        fs::remove_file(spool.content_path(&sha)).unwrap();
        assert!(load_index(&spool, "k").is_none());
        // Garbage is not an index.
        fs::write(spool.index_path("g"), b"OSKLIDX2\x05").unwrap();
        assert!(load_index(&spool, "g").is_none());
        // One flipped bit (a setuid bit, a path) fails the checksum.
        let sha2 = spool.put_bytes(b"hello").unwrap();
        assert_eq!(sha2, sha);
        let mut bytes = fs::read(spool.index_path("k")).unwrap();
        assert!(load_index(&spool, "k").is_some());
        bytes[20] ^= 0x08;
        fs::write(spool.index_path("k"), &bytes).unwrap();
        assert!(load_index(&spool, "k").is_none());
    }
}
