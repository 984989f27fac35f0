//! Where a process's output goes: its rotating log, optionally the
//! consoles, and whoever follows it; plus the pipe and pump that feed it.

use std::io;
use std::path::PathBuf;

use crate::log::console;
use crate::log::rotating::RotatingLog;

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
            let stamp = console::stamp();
            for line in data.split_inclusive(|c| *c == b'\n') {
                let mut l = Vec::with_capacity(stamp.len() + 1 + p.len() + line.len() + 1);
                l.extend_from_slice(stamp.as_bytes());
                l.push(b' ');
                l.extend_from_slice(p.as_bytes());
                l.extend_from_slice(line);
                if !l.ends_with(b"\n") {
                    l.push(b'\n');
                }
                console::write_console(&l);
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
