//! The segment cache: compressed archives kept under the store by recipe.
//!
//! An entry is `STORE/segments/KEY`, KEY being the hex [`super::Recipe`] key
//! (the archive's entries with file data by hash, and the compressor's
//! settings). The file holds a magic, the sha256 of the compressed payload,
//! then the payload. Entries are written to a temporary file and renamed,
//! and every read hashes the payload again: a damaged entry is reported,
//! dropped and compressed anew, never copied into an output.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::reference::Sha256Writer;

const MAGIC: &[u8; 8] = b"osk-seg1";
const HEADER_LEN: u64 = MAGIC.len() as u64 + 32;

/// A directory of compressed segments.
#[derive(Debug, Clone)]
pub struct SegmentCache {
    dir: PathBuf,
}

/// What [`SegmentCache::copy_to`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Copied whole and intact.
    Copied {
        len: u64,
    },
    Missing,
    /// Partly copied before the damage showed; the caller undoes the copy.
    Damaged {
        reason: String,
    },
}

/// One entry as [`SegmentCache::list`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub path: PathBuf,
    /// The file's length, header included.
    pub size: u64,
}

/// A damaged entry, as [`SegmentCache::verify`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    pub reason: String,
}

impl SegmentCache {
    /// The cache in `dir`, created on the first write.
    pub fn new(dir: impl Into<PathBuf>) -> SegmentCache {
        SegmentCache { dir: dir.into() }
    }

    /// The cache of a store rooted at `store_root`.
    pub fn in_store(store_root: &Path) -> SegmentCache {
        SegmentCache::new(store_root.join("segments"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, key: &[u8; 32]) -> PathBuf {
        self.dir.join(hex::encode(key))
    }

    /// Writes a new entry: `fill` writes the compressed payload.
    pub fn put(
        &self,
        key: &[u8; 32],
        fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", hex::encode(key)))
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        let mut file = tmp.reopen()?;
        file.write_all(&[0u8; HEADER_LEN as usize])?;
        let mut w = Sha256Writer::new(BufWriter::with_capacity(1 << 20, file));
        fill(&mut w)?;
        let (inner, digest) = w.finish();
        let mut file = inner.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(MAGIC)?;
        file.write_all(&digest)?;
        tmp.persist(self.path(key)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Copies the entry's payload into `w`, hashing it on the way.
    pub fn copy_to(&self, key: &[u8; 32], w: &mut impl Write) -> io::Result<Lookup> {
        let mut f = match File::open(self.path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => return Err(e),
        };
        let want = match read_header(&mut f)? {
            Ok(want) => want,
            Err(reason) => {
                return Ok(Lookup::Damaged {
                    reason: reason.to_string(),
                })
            }
        };
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            len += n as u64;
        }
        let got: [u8; 32] = hash.finalize().into();
        if got != want {
            return Ok(Lookup::Damaged {
                reason: format!(
                    "payload hashes to {}, its header says {}",
                    hex::encode(got),
                    hex::encode(want)
                ),
            });
        }
        Ok(Lookup::Copied { len })
    }

    /// Drops an entry (a missing one is fine).
    pub fn remove(&self, key: &[u8; 32]) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every entry, by key; temporaries of builds in progress are left out.
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            out.push(Entry {
                key: name,
                path: e.path(),
                size: e.metadata()?.len(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Hashes every entry's payload; returns the damaged ones.
    pub fn verify(&self) -> io::Result<Vec<Damage>> {
        let mut out = Vec::new();
        for e in self.list()? {
            let valid_name = e.key.len() == 64 && hex::decode(&e.key).is_ok();
            let reason = if !valid_name {
                Some("not named by a segment key".to_string())
            } else {
                let key: [u8; 32] = hex::decode(&e.key)
                    .expect("checked above")
                    .try_into()
                    .expect("64 hex digits");
                match self.copy_to(&key, &mut io::sink())? {
                    Lookup::Damaged { reason } => Some(reason),
                    Lookup::Copied { .. } | Lookup::Missing => None,
                }
            };
            if let Some(reason) = reason {
                out.push(Damage {
                    path: e.path,
                    reason,
                });
            }
        }
        Ok(out)
    }
}

/// The payload's expected hash, or why the header is wrong.
fn read_header(f: &mut File) -> io::Result<Result<[u8; 32], &'static str>> {
    let mut h = [0u8; HEADER_LEN as usize];
    match f.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Ok(Err("shorter than a segment header"))
        }
        Err(e) => return Err(e),
    }
    if &h[..MAGIC.len()] != MAGIC {
        return Ok(Err("no segment header"));
    }
    Ok(Ok(h[MAGIC.len()..].try_into().expect("32 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> [u8; 32] {
        [b; 32]
    }

    #[test]
    fn put_then_copy_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let c = SegmentCache::new(d.path().join("segments"));
        let mut out = Vec::new();
        assert_eq!(c.copy_to(&key(1), &mut out).unwrap(), Lookup::Missing);
        c.put(&key(1), |w| w.write_all(b"compressed")).unwrap();
        assert_eq!(
            c.copy_to(&key(1), &mut out).unwrap(),
            Lookup::Copied { len: 10 }
        );
        assert_eq!(out, b"compressed");
        assert_eq!(c.list().unwrap().len(), 1);
        assert!(c.verify().unwrap().is_empty());
    }

    #[test]
    fn tampered_and_truncated_entries_are_damaged() {
        let d = tempfile::tempdir().unwrap();
        let c = SegmentCache::new(d.path());
        c.put(&key(1), |w| w.write_all(b"compressed")).unwrap();
        c.put(&key(2), |w| w.write_all(b"other")).unwrap();
        let p = c.path(&key(1));
        let mut b = fs::read(&p).unwrap();
        *b.last_mut().unwrap() ^= 1;
        fs::write(&p, b).unwrap();
        fs::write(c.path(&key(2)), b"osk").unwrap();
        fs::write(d.path().join("stray"), b"x").unwrap();
        let bad = c.verify().unwrap();
        let names: Vec<String> = bad
            .iter()
            .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [hex::encode(key(1)), hex::encode(key(2)), "stray".into()]
        );
        assert!(bad[0].reason.contains("hashes to"), "{bad:?}");
        assert!(bad[1].reason.contains("shorter"), "{bad:?}");
        assert!(matches!(
            c.copy_to(&key(1), &mut Vec::new()).unwrap(),
            Lookup::Damaged { .. }
        ));
        c.remove(&key(1)).unwrap();
        assert_eq!(
            c.copy_to(&key(1), &mut Vec::new()).unwrap(),
            Lookup::Missing
        );
    }
}
