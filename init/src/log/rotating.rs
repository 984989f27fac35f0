//! Size-capped rotating log files: `NAME.log` grows to a cap, then becomes
//! `NAME.log.1` (replacing the previous one) and a fresh file starts.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Default cap per file; two files are kept.
pub const DEFAULT_CAP: u64 = 1024 * 1024;

pub struct RotatingLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    cap: u64,
}

impl RotatingLog {
    /// Opens (appending to) `path`, creating its directory.
    pub fn open(path: impl Into<PathBuf>, cap: u64) -> io::Result<RotatingLog> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            file: Some(file),
            size,
            cap,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The previous generation's path (`NAME.log.1`).
    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, Self::rotated_path(&self.path))?;
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }

    /// Appends `data`, rotating first when it would cross the cap.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + data.len() as u64 > self.cap {
            self.rotate()?;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("log file closed after a failed rotation"));
        };
        f.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_cap_and_keeps_one_old_generation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("svc.log");
        let mut log = RotatingLog::open(&p, 10).unwrap();
        log.write_all(b"aaaaaaaa\n").unwrap();
        log.write_all(b"bbbbbbbb\n").unwrap();
        log.write_all(b"cccccccc\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"cccccccc\n");
        assert_eq!(
            std::fs::read(RotatingLog::rotated_path(&p)).unwrap(),
            b"bbbbbbbb\n"
        );
    }

    #[test]
    fn reopening_continues_the_size_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        RotatingLog::open(&p, 10)
            .unwrap()
            .write_all(b"12345678")
            .unwrap();
        let mut log = RotatingLog::open(&p, 10).unwrap();
        log.write_all(b"abc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
    }
}
