//! The machine around a service's task: its log and log FIFOs, its spec,
//! runtime.json's host actions and the boot markers. Behind a trait so the
//! supervisor runs in tests without root, files or a console.

use std::path::{Path, PathBuf};

use osk_layout::marker::Event;

use super::runtime::TaskIo;
use super::Error;
use crate::bundle::prepare::{self, Bundle};
use crate::containerd::client as containerd;
use crate::log::rotating::{self, RotatingLog};
use crate::log::sink::{pump, SharedSink, Sink};
use crate::paths;
use crate::sys::{RealSys, Sys};

/// What the supervisor needs from the machine, apart from containerd.
pub trait ServiceHost: Send + Sync + 'static {
    /// The service's log: its file, the consoles with `osk.debug`, and
    /// `oskctl logs -f` followers.
    fn log_sink(&self, service: &str) -> SharedSink;
    /// Where the service's task writes, copied into `sink`; made once and
    /// kept across restarts.
    fn open_io(&self, service: &str, sink: &SharedSink) -> Result<TaskIo, Error>;
    /// The container's OCI spec.
    fn spec(&self, b: &Bundle) -> Result<Vec<u8>, Error>;
    /// runtime.json's host side before the first task: dirs, mounts, cgroups.
    fn before_create(&self, b: &Bundle) -> Result<(), Error>;
    /// runtime.json's host side once a task exists: interfaces, bindNS.
    fn after_create(&self, b: &Bundle, pid: u32) -> Result<(), Error>;
    /// A boot marker on the consoles.
    fn mark(&self, event: Event);
}

/// The real machine.
pub struct RealHost {
    /// `osk.debug`: services' output also goes to the consoles.
    pub debug: bool,
}

impl ServiceHost for RealHost {
    fn log_sink(&self, service: &str) -> SharedSink {
        let log = RotatingLog::open(
            format!("{}/{service}.log", osk_layout::LOG_DIR),
            rotating::DEFAULT_CAP,
        )
        .ok();
        Sink::shared(log, self.debug.then(|| format!("{service}: ")))
    }

    fn open_io(&self, service: &str, sink: &SharedSink) -> Result<TaskIo, Error> {
        let dir = Path::new(paths::IO_DIR);
        open_fifos(&RealSys, dir, service, sink).map_err(|cause| Error::Fifos {
            service: service.to_string(),
            dir: dir.to_path_buf(),
            cause,
        })
    }

    fn spec(&self, b: &Bundle) -> Result<Vec<u8>, Error> {
        let path = b.config_path();
        let raw = std::fs::read(&path).map_err(|cause| Error::ReadSpec {
            service: b.name.clone(),
            path: path.clone(),
            cause,
        })?;
        containerd::spec_with_root(&raw, &b.rootfs()).map_err(|cause| Error::Spec {
            service: b.name.clone(),
            path,
            cause,
        })
    }

    fn before_create(&self, b: &Bundle) -> Result<(), Error> {
        prepare::before_create(b).map_err(|cause| Error::Prepare {
            service: b.name.clone(),
            cause,
        })
    }

    fn after_create(&self, b: &Bundle, pid: u32) -> Result<(), Error> {
        prepare::after_create(b, pid).map_err(|cause| Error::Prepare {
            service: b.name.clone(),
            cause,
        })
    }

    fn mark(&self, event: Event) {
        crate::log::console::mark(event);
    }
}

/// Creates the FIFO pair a service's task writes to and starts copying it
/// into the service's log. The FIFOs are held open read-write, so a
/// restarting task never sees a missing reader.
fn open_fifos(
    sys: &dyn Sys,
    dir: &Path,
    service: &str,
    sink: &SharedSink,
) -> std::io::Result<TaskIo> {
    std::fs::create_dir_all(dir)?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for stream in ["stdout", "stderr"] {
        let p = dir.join(format!("{service}.{stream}"));
        let _ = std::fs::remove_file(&p);
        sys.mkfifo(&p.display().to_string(), 0o600)?;
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&p)?;
        tokio::spawn(pump(rx, sink.clone()));
        paths.push(p);
    }
    Ok(TaskIo {
        stdout: paths[0].display().to_string(),
        stderr: paths[1].display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifos_carry_the_task_output_into_the_log() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::shared(None, None);
        let mut follow = sink.lock().unwrap().subscribe();
        let io = open_fifos(&RealSys, dir.path(), "web", &sink).unwrap();
        assert_eq!(
            io.stdout,
            dir.path().join("web.stdout").display().to_string()
        );
        assert_eq!(
            io.stderr,
            dir.path().join("web.stderr").display().to_string()
        );
        let mut w = tokio::net::unix::pipe::OpenOptions::new()
            .open_sender(&io.stderr)
            .unwrap();
        w.write_all(b"hello\n").await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), follow.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..], b"hello\n");
        // A second open (the service's next boot of init) replaces them.
        assert!(open_fifos(&RealSys, dir.path(), "web", &sink).is_ok());
    }
}
