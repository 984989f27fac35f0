//! containerd as a supervised child of PID 1: its config, its start and
//! its restart loop.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use osk_layout::marker::Event;
use tokio::sync::{mpsc, oneshot, watch};

use crate::containerd::client::Containerd;
use crate::log::console::mark;
use crate::log::rotating::{self, RotatingLog};
use crate::log::sink::{async_pipe, pump, Sink};
use crate::service::backoff::Backoff;
use crate::sys::{RealSys, Signal, Sys};
use crate::{paths, reaper};

pub const BINARY: &str = "/usr/bin/containerd";
/// PATH for containerd and the shims it starts (they look up `runc`; the
/// sealed one in [`paths::BIN_DIR`] comes first). containerd
/// finds the shim front of [`crate::containerd::shimstart::FRONT_DIR`] before the shim.
pub const PATH: &str =
    "/run/osk/bin:/usr/libexec/osk:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The generated containerd config: no CRI, no image-oriented plugins,
/// state on /run, root on /var.
pub fn config() -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"
"#,
        root = paths::CONTAINERD_ROOT,
        state = paths::CONTAINERD_STATE,
        socket = paths::CONTAINERD_SOCKET,
        ttrpc = paths::CONTAINERD_TTRPC_SOCKET,
    )
}

/// Starts containerd (output to /var/log/containerd.log, and the console
/// with `debug`).
pub fn spawn(debug: bool) -> std::io::Result<reaper::Child> {
    std::fs::create_dir_all(paths::RUN_OSK)?;
    std::fs::write(paths::CONTAINERD_CONFIG, config())?;
    let _ = std::fs::remove_file(paths::CONTAINERD_SOCKET);
    let (r, w) = async_pipe()?;
    let w2 = w.try_clone()?;
    let log = RotatingLog::open(
        format!("{}/containerd.log", osk_layout::LOG_DIR),
        rotating::DEFAULT_CAP,
    )
    .ok();
    let sink = Sink::shared(log, debug.then(|| "containerd: ".to_string()));
    let mut cmd = Command::new(BINARY);
    cmd.args(["--config", paths::CONTAINERD_CONFIG])
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2));
    let child = reaper::spawn(&mut cmd)?;
    drop(cmd);
    tokio::spawn(pump(r, sink));
    Ok(child)
}

/// Polls containerd's socket until it answers a Version request.
pub async fn wait_ready(timeout: Duration) -> Option<Containerd> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if Path::new(paths::CONTAINERD_SOCKET).exists() {
            if let Ok(c) = Containerd::connect(
                Path::new(paths::CONTAINERD_SOCKET),
                osk_layout::CONTAINERD_NAMESPACE,
            )
            .await
            {
                if let Ok(v) = c.version().await {
                    tracing::info!("containerd {v} ready");
                    return Some(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Stop request for the containerd loop: reply when it is gone.
pub type StopRequest = oneshot::Sender<()>;

/// Runs containerd for the life of the machine: restarts it with back-off
/// when it exits, publishes a client on `cd_tx` while it answers (`None`
/// while it is down), and on a stop request terminates it (SIGKILL after
/// 10 s) and replies.
pub async fn run_supervised(
    cd_tx: watch::Sender<Option<Containerd>>,
    debug: bool,
    mut stop: mpsc::Receiver<StopRequest>,
) {
    let mut backoff = Backoff::default();
    let mut first = true;
    loop {
        let started = std::time::Instant::now();
        let mut child = match spawn(debug) {
            Ok(c) => {
                if first {
                    mark(Event::ContainerdStart);
                }
                c
            }
            Err(e) => {
                tracing::error!("cannot start {}: {e}", BINARY);
                let delay = backoff.delay_after(Duration::ZERO);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    s = stop.recv() => { if let Some(s) = s { let _ = s.send(()); } return; }
                }
            }
        };
        tokio::select! {
            ready = wait_ready(Duration::from_secs(60)) => match ready {
                Some(c) => {
                    if first {
                        mark(Event::ContainerdReady);
                        first = false;
                    }
                    let _ = cd_tx.send(Some(c));
                }
                None => tracing::error!("containerd did not answer on {} within 60s", paths::CONTAINERD_SOCKET),
            },
            _ = &mut child.exit => {}
        }
        tokio::select! {
            status = &mut child.exit => {
                let _ = cd_tx.send(None);
                let code = status.map(reaper::code).unwrap_or(-1);
                let delay = backoff.delay_after(started.elapsed());
                tracing::error!("containerd exited ({code}); restarting in {}s (log: {}/containerd.log)", delay.as_secs(), osk_layout::LOG_DIR);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    s = stop.recv() => { if let Some(s) = s { let _ = s.send(()); } return; }
                }
            }
            s = stop.recv() => {
                let _ = cd_tx.send(None);
                let _ = RealSys.kill(child.pid, Signal::SIGTERM);
                if tokio::time::timeout(Duration::from_secs(10), &mut child.exit).await.is_err() {
                    let _ = RealSys.kill(child.pid, Signal::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut child.exit).await;
                }
                if let Some(s) = s { let _ = s.send(()); }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_disables_cri_and_uses_run_and_var() {
        let c = super::config();
        assert!(c.contains("\"io.containerd.grpc.v1.cri\""));
        assert!(c.contains("state = \"/run/containerd\""));
        assert!(c.contains("root = \"/var/lib/containerd\""));
    }

    #[test]
    fn shim_front_comes_before_the_real_shim() {
        let dirs: Vec<&str> = super::PATH.split(':').collect();
        let pos = |d: &str| dirs.iter().position(|x| *x == d).unwrap();
        let real = std::path::Path::new(crate::containerd::shimstart::REAL_SHIM);
        assert!(
            pos(crate::containerd::shimstart::FRONT_DIR)
                < pos(real.parent().unwrap().to_str().unwrap())
        );
        assert_eq!(pos(crate::paths::BIN_DIR), 0, "the sealed runc comes first");
    }
}
