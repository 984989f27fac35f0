//! PID 1's child handling: every process that dies under PID 1 is reaped
//! here (including orphans reparented to us, e.g. containerd shims), and the
//! exit status of the ones we spawned is handed to whoever waits for them.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};
use std::sync::Mutex;

use tokio::sync::oneshot;

static WAITERS: Mutex<BTreeMap<i32, oneshot::Sender<ExitStatus>>> = Mutex::new(BTreeMap::new());

fn waiters() -> std::sync::MutexGuard<'static, BTreeMap<i32, oneshot::Sender<ExitStatus>>> {
    WAITERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A spawned child: its pid and a future exit status.
pub struct Child {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// Resets what a child inherits from PID 1: blocked signals and ignored
/// dispositions (handlers are reset by exec itself).
fn reset_signals() -> io::Result<()> {
    // SAFETY: only async-signal-safe calls (sigemptyset, sigprocmask,
    // signal) on a zeroed local sigset, as required between fork and exec.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
    Ok(())
}

/// Spawns `cmd` with default signal state and registers it for its exit
/// status. Must not be separated from the registration by an `.await`, so on
/// the single-threaded runtime the reaper cannot steal the status first.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    // SAFETY: reset_signals only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(reset_signals);
    }
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Dropping std's Child neither kills nor waits; the reaper owns it now.
    drop(child);
    let (tx, rx) = oneshot::channel();
    waiters().insert(pid, tx);
    Ok(Child { pid, exit: rx })
}

/// Reaps every exited child without blocking; returns how many.
pub fn reap_all() -> usize {
    let mut n = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to the provided status integer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return n;
        }
        n += 1;
        if let Some(tx) = waiters().remove(&pid) {
            let _ = tx.send(ExitStatus::from_raw(status));
        }
    }
}

/// Reaps on every SIGCHLD, forever.
pub async fn run() {
    let mut sig = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGCHLD ({e}); reaping every second instead");
            loop {
                reap_all();
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        reap_all();
        sig.recv().await;
    }
}

/// Exit code in the shell convention (128+signal for a killed process).
pub fn code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Registers interest in a process we did not spawn but that is our child
/// (e.g. a container init left behind by `runc create`). Call it before that
/// process can possibly exit.
pub fn watch(pid: i32) -> oneshot::Receiver<ExitStatus> {
    let (tx, rx) = oneshot::channel();
    waiters().insert(pid, tx);
    rx
}
