//! PID 1's child handling: every process that dies under PID 1 is reaped
//! here (including orphans reparented to us, e.g. containerd shims), and the
//! exit status of the ones we spawned is handed to whoever waits for them.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::sys::{reap_any_child, reset_signals_on_exec};

/// Who waits for which child's exit status.
pub struct Waiters(Mutex<BTreeMap<i32, oneshot::Sender<ExitStatus>>>);

/// PID 1's waiters: every child is reaped in one place.
static WAITERS: Waiters = Waiters::new();

impl Default for Waiters {
    fn default() -> Self {
        Waiters::new()
    }
}

/// A spawned child: its pid and a future exit status.
pub struct Child {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
}

impl Waiters {
    pub const fn new() -> Waiters {
        Waiters(Mutex::new(BTreeMap::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, oneshot::Sender<ExitStatus>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in child `pid`; see [`watch`].
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(pid, tx);
        rx
    }

    /// Spawns `cmd` with default signal state and registers it; see [`spawn`].
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        reset_signals_on_exec(cmd);
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        // Dropping std's Child neither kills nor waits; the reaper owns it now.
        drop(child);
        Ok(Child {
            pid,
            exit: self.watch(pid),
        })
    }

    /// Takes every exit `reap_one` reports until it reports none, handing
    /// each status to its waiter (orphans have none); returns how many.
    pub fn reap(&self, mut reap_one: impl FnMut() -> Option<(i32, ExitStatus)>) -> usize {
        let mut n = 0;
        while let Some((pid, status)) = reap_one() {
            n += 1;
            if let Some(tx) = self.lock().remove(&pid) {
                // The waiter may have given up; the child is reaped all the same.
                let _ = tx.send(status);
            }
        }
        n
    }
}

/// Spawns `cmd` with default signal state and registers it for its exit
/// status. Must not be separated from the registration by an `.await`, so on
/// the single-threaded runtime the reaper cannot steal the status first.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    WAITERS.spawn(cmd)
}

/// Reaps every exited child without blocking; returns how many.
pub fn reap_all() -> usize {
    WAITERS.reap(reap_any_child)
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
    WAITERS.watch(pid)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn killed(signal: i32) -> ExitStatus {
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn every_reaped_exit_goes_to_its_waiter_and_orphans_are_only_counted() {
        let w = Waiters::new();
        let mut service = w.watch(10);
        let mut shell = w.watch(11);
        let mut later = w.watch(12);
        // 99 is an orphan reparented to PID 1: reaped, nobody told.
        let mut zombies: VecDeque<(i32, ExitStatus)> =
            [(10, exited(3)), (99, exited(0)), (11, killed(9))].into();
        assert_eq!(w.reap(|| zombies.pop_front()), 3);
        assert_eq!(code(service.try_recv().unwrap()), 3);
        assert_eq!(code(shell.try_recv().unwrap()), 128 + 9);
        assert!(later.try_recv().is_err(), "12 has not exited yet");
        // A second exit of the same pid (reused) has no waiter left.
        let mut again = VecDeque::from([(10, exited(1))]);
        assert_eq!(w.reap(|| again.pop_front()), 1);
        assert_eq!(w.lock().keys().copied().collect::<Vec<_>>(), [12]);
    }

    #[test]
    fn a_waiter_that_gave_up_does_not_stop_the_reaping() {
        let w = Waiters::new();
        drop(w.watch(10));
        let mut kept = w.watch(11);
        let mut zombies = VecDeque::from([(10, exited(0)), (11, exited(4))]);
        assert_eq!(w.reap(|| zombies.pop_front()), 2);
        assert_eq!(code(kept.try_recv().unwrap()), 4);
        assert!(w.lock().is_empty());
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(code(exited(0)), 0);
        assert_eq!(code(exited(42)), 42);
        assert_eq!(code(killed(15)), 143);
    }

    #[test]
    fn a_spawned_child_starts_with_no_blocked_signals() {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        // Block SIGTERM in this test's thread, as PID 1 blocks the signals it
        // handles: a child that inherited the mask would survive its own TERM.
        let mut term = SigSet::empty();
        term.add(Signal::SIGTERM);
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&term), Some(&mut old)).unwrap();
        let w = Waiters::new();
        let spawned =
            w.spawn(std::process::Command::new("sh").args(["-c", "kill -TERM $$; exit 0"]));
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
        let mut child = spawned.unwrap();
        // Reap only our child: waitpid(-1) would steal other tests' children.
        let mut once = Some(child.pid);
        w.reap(|| {
            let pid = nix::unistd::Pid::from_raw(once.take()?);
            match nix::sys::wait::waitpid(pid, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(p, c) => Some((p.as_raw(), exited(c))),
                nix::sys::wait::WaitStatus::Signaled(p, s, _) => {
                    Some((p.as_raw(), killed(s as i32)))
                }
                other => panic!("{other:?}"),
            }
        });
        assert_eq!(code(child.exit.try_recv().unwrap()), 143);
    }
}
