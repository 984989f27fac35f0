//! containerd as a supervised child of PID 1.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::client::Containerd;
use crate::log::rotating::{self, RotatingLog};
use crate::log::sink::{async_pipe, pump, Sink};
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
