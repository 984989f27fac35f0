//! The spool: file contents keyed by their sha256, plus cached layer indexes.
//!
//! Layer data never lands on the host under its in-image path; every regular
//! file goes here under its hash instead, which also stores a file shared by
//! several images (or layers) once. The spool is a cache derived from
//! verified blobs: deleting it at any time is safe, and every read is hashed
//! again, so a damaged spool is an error rather than a wrong image.

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
        let path = self.content_path(sha);
        let file = File::open(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "spool file {} is missing ({e}); remove the spool {} and build again",
                    path.display(),
                    self.root.display()
                ),
            )
        })?;
        Ok(CheckedReader {
            file,
            hasher: Sha256::new(),
            expected: *sha,
            path,
            done: false,
        })
    }
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

/// Reads a spool file and checks its hash at EOF.
pub struct CheckedReader {
    file: File,
    hasher: Sha256,
    expected: Sha,
    path: PathBuf,
    done: bool,
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !buf.is_empty() && !self.done {
            self.done = true;
            let actual: Sha = std::mem::take(&mut self.hasher).finalize().into();
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "spool file {} is damaged (content hashes to {}); remove it and build again",
                        self.path.display(),
                        hex::encode(actual)
                    ),
                ));
            }
        }
        Ok(n)
    }
}
