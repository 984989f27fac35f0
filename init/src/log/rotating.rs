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

/// Where a process's output goes: a rotating log, optionally the consoles,
/// and whoever follows it (`oskctl logs -f`).
pub struct Sink {
    log: Option<RotatingLog>,
    console_prefix: Option<String>,
    follow: tokio::sync::broadcast::Sender<std::sync::Arc<[u8]>>,
}

pub type SharedSink = std::sync::Arc<std::sync::Mutex<Sink>>;

impl Sink {
    /// `console_prefix`: also copy each line to the consoles, after the
    /// uptime (as init's own lines) and this prefix.
    pub fn shared(log: Option<RotatingLog>, console_prefix: Option<String>) -> SharedSink {
        std::sync::Arc::new(std::sync::Mutex::new(Sink {
            log,
            console_prefix,
            follow: tokio::sync::broadcast::channel(64).0,
        }))
    }

    pub fn write(&mut self, data: &[u8]) {
        if let Some(log) = self.log.as_mut() {
            let _ = log.write_all(data);
        }
        if let Some(p) = &self.console_prefix {
            let stamp = crate::log::console::stamp();
            for line in data.split_inclusive(|c| *c == b'\n') {
                let mut l = Vec::with_capacity(stamp.len() + 1 + p.len() + line.len() + 1);
                l.extend_from_slice(stamp.as_bytes());
                l.push(b' ');
                l.extend_from_slice(p.as_bytes());
                l.extend_from_slice(line);
                if !l.ends_with(b"\n") {
                    l.push(b'\n');
                }
                crate::log::console::write_console(&l);
            }
        }
        if self.follow.receiver_count() > 0 {
            let _ = self.follow.send(data.into());
        }
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<[u8]>> {
        self.follow.subscribe()
    }

    pub fn path(&self) -> Option<PathBuf> {
        self.log.as_ref().map(|l| l.path().to_path_buf())
    }
}

/// Copies `reader` into `sink` until EOF or error.
pub async fn pump(mut reader: impl tokio::io::AsyncRead + Unpin, sink: SharedSink) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sink
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(&buf[..n]),
        }
    }
}

/// A pipe whose read end is async (for a child's stdout/stderr).
pub fn async_pipe() -> io::Result<(tokio::net::unix::pipe::Receiver, std::io::PipeWriter)> {
    let (r, w) = std::io::pipe()?;
    let r = tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(r))?;
    Ok((r, w))
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
