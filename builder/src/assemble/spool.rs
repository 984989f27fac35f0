//! The spool: file contents keyed by their sha256, plus cached layer indexes.
//!
//! Layer data never lands on the host under its in-image path; every regular
//! file goes here under its hash instead, which also stores a file shared by
//! several images (or layers) once. The spool is a cache derived from
//! verified blobs: deleting it at any time is safe, and every read is hashed
//! again and fails with a [`SpoolDamage`] the build heals from (drop the
//! entry, spool it again from the verified blob), never a wrong image.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// A sha256 of file content.
pub type Sha = [u8; 32];

/// Files up to this size are hashed in memory before anything is written.
const SMALL: u64 = 1 << 20;

#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Spool {
    /// Opens (creating) a persistent spool at `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Spool> {
        let root = root.into();
        prepare(&root)?;
        Ok(Spool { root, _temp: None })
    }

    /// A spool deleted when dropped.
    pub fn temporary() -> io::Result<Spool> {
        let dir = tempfile::Builder::new().prefix("osk-spool").tempdir()?;
        prepare(dir.path())?;
        Ok(Spool {
            root: dir.path().to_path_buf(),
            _temp: Some(dir),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn content_path(&self, sha: &Sha) -> PathBuf {
        let h = hex::encode(sha);
        self.root.join("content").join(&h[..2]).join(h)
    }

    pub fn has(&self, sha: &Sha) -> bool {
        self.content_path(sha).is_file()
    }

    /// Where the parsed index of the tar with this (hex) key is cached.
    pub(crate) fn index_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(key)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Stores `bytes` and returns their hash.
    pub fn put_bytes(&self, bytes: &[u8]) -> io::Result<Sha> {
        let sha: Sha = Sha256::digest(bytes).into();
        if !self.has(&sha) {
            let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())?;
            tmp.write_all(bytes)?;
            self.persist(tmp, &sha)?;
        }
        Ok(sha)
    }

    /// Streams exactly `size` bytes from `r` into the spool.
    pub fn put_reader(&self, r: &mut impl Read, size: u64) -> io::Result<Sha> {
        if size <= SMALL {
            let mut buf = Vec::with_capacity(size as usize);
            r.take(size).read_to_end(&mut buf)?;
            check_len(buf.len() as u64, size)?;
            return self.put_bytes(&buf);
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = r.read(&mut buf[..want])?;
            if n == 0 {
                check_len(size - left, size)?;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let sha: Sha = hasher.finalize().into();
        if !self.has(&sha) {
            self.persist(tmp, &sha)?;
        }
        Ok(sha)
    }

    fn persist(&self, tmp: tempfile::NamedTempFile, sha: &Sha) -> io::Result<()> {
        let dest = self.content_path(sha);
        match tmp.persist_noclobber(&dest) {
            Ok(_) => Ok(()),
            // Another build stored the same content meanwhile.
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e.error),
        }
    }

    /// Opens stored content; the reader fails at EOF if it no longer hashes to `sha`.
    pub fn open_content(&self, sha: &Sha) -> io::Result<CheckedReader> {
        self.open_checked(sha, None)
    }

    /// Opens stored content of `size` bytes: the reader yields at most that
    /// many and, once it has, checks that the file ends there and hashes to
    /// `sha`, so a consumer that stops at `size` still gets the check.
    pub fn open_exact(&self, sha: &Sha, size: u64) -> io::Result<CheckedReader> {
        self.open_checked(sha, Some(size))
    }

    fn open_checked(&self, sha: &Sha, size: Option<u64>) -> io::Result<CheckedReader> {
        let path = self.content_path(sha);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SpoolDamage::missing(path.clone(), *sha).into()
            } else {
                e
            }
        })?;
        Ok(CheckedReader {
            file,
            hasher: Sha256::new(),
            expected: *sha,
            left: size,
            path,
            done: false,
        })
    }

    /// Drops one entry (it is rebuilt from its blob on the next use).
    pub fn remove(&self, sha: &Sha) -> io::Result<()> {
        match fs::remove_file(self.content_path(sha)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Hashes every content file against its name; returns the damaged ones.
    /// Layer indexes that list a dropped entry are not used again (see
    /// `layer::load_index`), so a dropped entry is spooled again from its blob.
    pub fn check_content(&self) -> io::Result<Vec<SpoolDamage>> {
        let mut bad = Vec::new();
        let content = self.root.join("content");
        let mut buf = vec![0u8; 256 * 1024];
        for shard in fs::read_dir(&content)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for item in fs::read_dir(shard.path())? {
                let item = item?;
                let path = item.path();
                let named: Option<Sha> = hex::decode(item.file_name().as_encoded_bytes())
                    .ok()
                    .and_then(|b| b.try_into().ok());
                let Some(sha) = named else {
                    bad.push(SpoolDamage {
                        path,
                        expected: None,
                        actual: None,
                    });
                    continue;
                };
                let mut r = self.open_content(&sha)?;
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => match damage(&e) {
                            Some(d) => {
                                bad.push(d.clone());
                                break;
                            }
                            None => return Err(e),
                        },
                    }
                }
            }
        }
        Ok(bad)
    }
}

/// A spool entry that is not what its name says: missing, or hashing to
/// something else. Carried inside `io::Error`s; find it with [`damage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolDamage {
    pub path: PathBuf,
    /// The hash the entry's name promises (None: a name that is no hash).
    pub expected: Option<Sha>,
    /// What the content hashes to (None: the file is missing or its name is no hash).
    pub actual: Option<Sha>,
}

impl SpoolDamage {
    fn missing(path: PathBuf, sha: Sha) -> SpoolDamage {
        SpoolDamage {
            path,
            expected: Some(sha),
            actual: None,
        }
    }
}

impl std::fmt::Display for SpoolDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.expected, &self.actual) {
            (Some(_), Some(a)) => write!(
                f,
                "spool entry {} is damaged: its content hashes to {}",
                self.path.display(),
                hex::encode(a)
            ),
            (Some(_), None) => write!(f, "spool entry {} is missing", self.path.display()),
            (None, _) => write!(
                f,
                "spool entry {} is not named by a sha256",
                self.path.display()
            ),
        }
    }
}

impl std::error::Error for SpoolDamage {}

impl From<SpoolDamage> for io::Error {
    fn from(d: SpoolDamage) -> io::Error {
        let kind = if d.actual.is_none() {
            io::ErrorKind::NotFound
        } else {
            io::ErrorKind::InvalidData
        };
        io::Error::new(kind, d)
    }
}

/// The [`SpoolDamage`] anywhere in an error's chain.
pub fn damage<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a SpoolDamage> {
    crate::store::cause(e)
}

fn check_len(got: u64, want: u64) -> io::Result<()> {
    if got != want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("tar entry truncated: {got} of {want} bytes"),
        ));
    }
    Ok(())
}

fn prepare(root: &Path) -> io::Result<()> {
    let content = root.join("content");
    if !content.join("ff").is_dir() {
        for i in 0..=255u8 {
            fs::create_dir_all(content.join(hex::encode([i])))?;
        }
    }
    fs::create_dir_all(root.join("layers"))?;
    fs::create_dir_all(root.join("tmp"))
}

/// Reads a spool file and checks its hash at EOF (or at its expected size).
pub struct CheckedReader {
    file: File,
    hasher: Sha256,
    expected: Sha,
    /// Bytes still expected, for [`Spool::open_exact`].
    left: Option<u64>,
    path: PathBuf,
    done: bool,
}

impl CheckedReader {
    fn finish(&mut self) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        self.done = true;
        if self.left == Some(0) {
            // Anything past the expected size is damage too; feed it to the hash.
            let mut extra = [0u8; 4096];
            loop {
                let n = self.file.read(&mut extra)?;
                if n == 0 {
                    break;
                }
                self.hasher.update(&extra[..n]);
            }
        }
        let actual: Sha = std::mem::take(&mut self.hasher).finalize().into();
        if actual != self.expected {
            return Err(SpoolDamage {
                path: self.path.clone(),
                expected: Some(self.expected),
                actual: Some(actual),
            }
            .into());
        }
        Ok(0)
    }
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = match self.left {
            Some(0) => return self.finish(),
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return self.finish();
        }
        self.hasher.update(&buf[..n]);
        if let Some(left) = &mut self.left {
            *left -= n as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn damage_is_found_whatever_the_reader_stops_at() {
        let spool = Spool::temporary().unwrap();
        let sha = spool.put_bytes(b"the tool binary").unwrap();
        assert_eq!(
            read_all(spool.open_exact(&sha, 15).unwrap()).unwrap(),
            b"the tool binary"
        );
        assert!(spool.check_content().unwrap().is_empty());

        // Same length, other bytes: caught even by a reader that stops at the size.
        fs::write(spool.content_path(&sha), b"THE tool binary").unwrap();
        let e = read_all(spool.open_exact(&sha, 15).unwrap()).unwrap_err();
        let d = damage(&e).expect("typed damage");
        assert_eq!(d.expected, Some(sha));
        assert_eq!(d.actual, Some(Sha256::digest(b"THE tool binary").into()));
        // Longer: the reader yields the size only, and still fails.
        fs::write(spool.content_path(&sha), b"the tool binary!").unwrap();
        let mut r = spool.open_exact(&sha, 15).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).unwrap(), 15);
        assert!(damage(&r.read(&mut buf).unwrap_err()).is_some());
        // Shorter.
        fs::write(spool.content_path(&sha), b"the tool").unwrap();
        assert!(damage(&read_all(spool.open_exact(&sha, 15).unwrap()).unwrap_err()).is_some());
        assert!(damage(&read_all(spool.open_content(&sha).unwrap()).unwrap_err()).is_some());

        let found = spool.check_content().unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, spool.content_path(&sha));
        spool.remove(&sha).unwrap();
        // Missing is damage too, so a build heals it the same way.
        let e = spool.open_content(&sha).err().unwrap();
        assert_eq!(damage(&e).unwrap().actual, None);
        assert!(spool.check_content().unwrap().is_empty());
    }
}
