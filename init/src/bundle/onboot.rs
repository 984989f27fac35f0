//! onboot / onshutdown containers: run one after the other with runc
//! directly (containerd is not running yet, or any more), each to
//! completion or its timeout.
//!
//! A bundle whose runtime.json moves interfaces into it or binds its
//! namespaces needs the task's pid before it starts: it gets `runc create` +
//! `runc start` (+ `runc delete`), as in LinuxKit. Every other bundle gets
//! one `runc run`: each runc is a Go start-up, about 0.3 s under TCG, and
//! onboot is on every boot's critical path.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use osk_layout::Runtime;

use crate::bundle::prepare::{self, Bundle, HostActionError};
use crate::log::rotating::{self, RotatingLog};
use crate::log::sink::{async_pipe, pump, Sink};
use crate::paths::RUNC_ROOT;
use crate::reaper;

pub const RUNC: &str = "/usr/bin/runc";

/// Why an onboot or onshutdown container did not run to completion.
#[derive(Debug, thiserror::Error)]
pub enum OnbootError {
    #[error(transparent)]
    HostAction(#[from] HostActionError),
    #[error("runc {command}: {cause}")]
    Spawn {
        command: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("runc {command}: lost runc's exit status")]
    LostStatus { command: String },
    #[error("runc {command} exited {code}")]
    Runc { command: String, code: i32 },
    #[error("runc create {id}: no pid in {pid_file}")]
    NoPid { id: String, pid_file: String },
    #[error("{id}: lost its exit status")]
    LostTask { id: String },
    #[error("{id}: killed after its {}s timeout", .timeout.as_secs())]
    Timeout { id: String, timeout: Duration },
    #[error("{id}: output pipe: {cause}")]
    Pipe {
        id: String,
        #[source]
        cause: std::io::Error,
    },
}

fn runc_command(
    args: &[&str],
    stdout: Option<std::io::PipeWriter>,
) -> Result<Command, OnbootError> {
    let mut cmd = Command::new(runc_path());
    cmd.arg("--root")
        .arg(RUNC_ROOT)
        .args(args)
        .stdin(Stdio::null());
    cmd.env("PATH", crate::containerd::daemon::PATH);
    if let Some(w) = stdout {
        let w2 = w.try_clone().map_err(|cause| OnbootError::Pipe {
            id: args.last().unwrap_or(&"").to_string(),
            cause,
        })?;
        cmd.stdout(Stdio::from(w)).stderr(Stdio::from(w2));
    }
    Ok(cmd)
}

async fn runc(args: &[&str], stdout: Option<std::io::PipeWriter>) -> Result<i32, OnbootError> {
    let mut cmd = runc_command(args, stdout)?;
    let child = reaper::spawn(&mut cmd).map_err(|cause| OnbootError::Spawn {
        command: args.join(" "),
        cause,
    })?;
    drop(cmd);
    child
        .exit
        .await
        .map(reaper::code)
        .map_err(|_| OnbootError::LostStatus {
            command: args.join(" "),
        })
}

/// runc's path: the sealed copy if init made one, else the image's.
pub fn runc_path() -> &'static str {
    if Path::new(crate::paths::SEALED_RUNC).exists() {
        crate::paths::SEALED_RUNC
    } else {
        image_runc_path()
    }
}

/// The image's runc: /usr/bin/runc, else /usr/sbin/runc (Debian's).
pub fn image_runc_path() -> &'static str {
    if Path::new(RUNC).exists() {
        RUNC
    } else {
        "/usr/sbin/runc"
    }
}

/// Runs one bundle to completion; returns its exit code.
pub async fn run_one(b: &Bundle, log_dir: &str, timeout: Duration) -> Result<i32, OnbootError> {
    prepare::before_create(b)?;
    let id = format!("osk-{}", b.name);
    let log = RotatingLog::open(format!("{log_dir}/{}.log", b.name), rotating::DEFAULT_CAP).ok();
    let sink = Sink::shared(log, Some(format!("{}: ", b.name)));
    let (r, w) = async_pipe().map_err(|cause| OnbootError::Pipe {
        id: id.clone(),
        cause,
    })?;
    let pump = tokio::spawn(pump(r, sink));
    let _ = std::fs::create_dir_all(RUNC_ROOT);
    let bundle = b.dir.display().to_string();
    // A leftover from an earlier failure would make create fail; on a fresh
    // boot there is none, and every runc run costs a Go start-up.
    if Path::new(RUNC_ROOT).join(&id).exists() {
        let _ = runc(&["delete", "-f", &id], None).await;
    }
    let result = if prepare::needs_pid(b) {
        create_start(b, &id, &bundle, w, timeout).await
    } else {
        run(&id, &bundle, w, timeout).await
    };
    // Output still buffered in the pipe is flushed before we report.
    let _ = tokio::time::timeout(Duration::from_secs(1), pump).await;
    result
}

/// `runc run`: runc waits for the container, forwards signals to it and
/// deletes it when it exits; its exit code is the container's.
async fn run(
    id: &str,
    bundle: &str,
    out: std::io::PipeWriter,
    timeout: Duration,
) -> Result<i32, OnbootError> {
    let mut cmd = runc_command(&["run", "--bundle", bundle, id], Some(out))?;
    let child = reaper::spawn(&mut cmd).map_err(|cause| OnbootError::Spawn {
        command: format!("run {id}"),
        cause,
    })?;
    drop(cmd);
    let mut exit = child.exit;
    match tokio::time::timeout(timeout, &mut exit).await {
        Ok(Ok(status)) => Ok(reaper::code(status)),
        Ok(Err(_)) => Err(OnbootError::LostStatus {
            command: format!("run {id}"),
        }),
        Err(_) => {
            let _ = runc(&["kill", "--all", id, "KILL"], None).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), exit).await;
            let _ = runc(&["delete", "-f", id], None).await;
            Err(OnbootError::Timeout {
                id: id.into(),
                timeout,
            })
        }
    }
}

/// `runc create`, the pid-dependent preparation, `runc start`, wait, `runc delete`.
async fn create_start(
    b: &Bundle,
    id: &str,
    bundle: &str,
    out: std::io::PipeWriter,
    timeout: Duration,
) -> Result<i32, OnbootError> {
    let pid_file = format!("{RUNC_ROOT}/{id}.pid");
    let rc = runc(
        &["create", "--bundle", bundle, "--pid-file", &pid_file, id],
        Some(out),
    )
    .await?;
    if rc != 0 {
        return Err(OnbootError::Runc {
            command: format!("create {id} (bundle {bundle})"),
            code: rc,
        });
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| OnbootError::NoPid {
            id: id.into(),
            pid_file: pid_file.clone(),
        })?;
    let exit = reaper::watch(pid);
    let result = async {
        prepare::after_create(b, pid as u32)?;
        let rc = runc(&["start", id], None).await?;
        if rc != 0 {
            return Err(OnbootError::Runc {
                command: format!("start {id}"),
                code: rc,
            });
        }
        match tokio::time::timeout(timeout, exit).await {
            Ok(Ok(status)) => Ok(reaper::code(status)),
            Ok(Err(_)) => Err(OnbootError::LostTask { id: id.into() }),
            Err(_) => {
                let _ = runc(&["kill", "--all", id, "KILL"], None).await;
                Err(OnbootError::Timeout {
                    id: id.into(),
                    timeout,
                })
            }
        }
    }
    .await;
    let _ = runc(&["delete", "-f", id], None).await;
    let _ = std::fs::remove_file(&pid_file);
    result
}

/// Runs every bundle under `dir` in name order; failures are logged and the
/// next one runs.
pub async fn run_all(dir: &Path, log_dir: &str, timeout_override: Option<Duration>) {
    for b in Bundle::load_all(dir) {
        let b = match b {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("skipping bundle: {e}");
                continue;
            }
        };
        let timeout = timeout_override.unwrap_or(Duration::from_secs(
            b.runtime.timeout.unwrap_or(Runtime::DEFAULT_TIMEOUT),
        ));
        tracing::info!("running {}", b.name);
        match run_one(&b, log_dir, timeout).await {
            Ok(0) => tracing::info!("{} done", b.name),
            Ok(rc) => tracing::error!("{} exited {rc} (log: {log_dir}/{}.log)", b.name, b.name),
            Err(e) => tracing::error!("{}: {e}", b.name),
        }
    }
}
