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

/// What the restart loop does to the outside world; the real one runs
/// containerd, the tests' fake scripts exits and readiness.
pub trait Daemon {
    /// What is published while the daemon answers.
    type Client: Send + Sync;
    /// Starts the daemon process.
    fn spawn(&mut self) -> std::io::Result<reaper::Child>;
    /// A client once the daemon answers; `None` if it does not within 60 s.
    fn wait_ready(&mut self) -> impl std::future::Future<Output = Option<Self::Client>>;
    fn kill(&self, pid: i32, signal: Signal);
    fn mark(&self, event: Event);
}

/// containerd itself.
pub struct RealDaemon {
    pub debug: bool,
}

impl Daemon for RealDaemon {
    type Client = Containerd;
    fn spawn(&mut self) -> std::io::Result<reaper::Child> {
        spawn(self.debug)
    }
    async fn wait_ready(&mut self) -> Option<Containerd> {
        let c = wait_ready(Duration::from_secs(60)).await;
        if c.is_none() {
            tracing::error!(
                "containerd did not answer on {} within 60s",
                paths::CONTAINERD_SOCKET
            );
        }
        c
    }
    fn kill(&self, pid: i32, signal: Signal) {
        let _ = RealSys.kill(pid, signal);
    }
    fn mark(&self, event: Event) {
        mark(event);
    }
}

/// Runs containerd for the life of the machine; see [`supervise`].
pub async fn run_supervised(
    cd_tx: watch::Sender<Option<Containerd>>,
    debug: bool,
    stop: mpsc::Receiver<StopRequest>,
) {
    supervise(RealDaemon { debug }, cd_tx, stop).await
}

/// Answers a stop request (if the sender still waits).
fn reply(s: Option<StopRequest>) {
    if let Some(s) = s {
        let _ = s.send(());
    }
}

/// The restart loop: restarts the daemon with back-off when it exits,
/// publishes a client on `cd_tx` while it answers (`None` while it is down),
/// and on a stop request terminates it (SIGKILL after 10 s) and replies.
pub async fn supervise<D: Daemon>(
    mut daemon: D,
    cd_tx: watch::Sender<Option<D::Client>>,
    mut stop: mpsc::Receiver<StopRequest>,
) {
    let mut backoff = Backoff::default();
    // Boot markers: the first start and the first answer, once each.
    let (mut start_marked, mut first) = (false, true);
    loop {
        // tokio's clock: the tests pause and advance it.
        let started = tokio::time::Instant::now();
        let mut child = match daemon.spawn() {
            Ok(c) => {
                if !start_marked {
                    daemon.mark(Event::ContainerdStart);
                    start_marked = true;
                }
                c
            }
            Err(e) => {
                tracing::error!("cannot start {}: {e}", BINARY);
                let delay = backoff.delay_after(Duration::ZERO);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    s = stop.recv() => { reply(s); return; }
                }
            }
        };
        // A daemon that dies before it answers has its exit taken here: the
        // receiver cannot be polled again below.
        let died_early = tokio::select! {
            ready = daemon.wait_ready() => {
                if let Some(c) = ready {
                    if first {
                        daemon.mark(Event::ContainerdReady);
                        first = false;
                    }
                    let _ = cd_tx.send(Some(c));
                }
                None
            },
            status = &mut child.exit => Some(status),
        };
        let status = match died_early {
            Some(status) => status,
            None => tokio::select! {
                status = &mut child.exit => status,
                s = stop.recv() => {
                    let _ = cd_tx.send(None);
                    daemon.kill(child.pid, Signal::SIGTERM);
                    if tokio::time::timeout(Duration::from_secs(10), &mut child.exit).await.is_err() {
                        daemon.kill(child.pid, Signal::SIGKILL);
                        let _ = tokio::time::timeout(Duration::from_secs(2), &mut child.exit).await;
                    }
                    reply(s);
                    return;
                }
            },
        };
        let _ = cd_tx.send(None);
        let code = status.map(reaper::code).unwrap_or(-1);
        let delay = backoff.delay_after(started.elapsed());
        tracing::error!(
            "containerd exited ({code}); restarting in {}s (log: {}/containerd.log)",
            delay.as_secs(),
            osk_layout::LOG_DIR
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            s = stop.recv() => { reply(s); return; }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    /// What the fake daemon saw and what it is told to do.
    #[derive(Default)]
    struct Script {
        spawns: Vec<Instant>,
        /// The exit of each spawned process, taken when it exits.
        exits: Vec<Option<oneshot::Sender<ExitStatus>>>,
        kills: Vec<(i32, Signal)>,
        marks: Vec<Event>,
        /// How many spawns fail before one works.
        failing_spawns: usize,
        /// The daemon answers once started.
        answers: bool,
        /// The daemon exits on SIGTERM (it always does on SIGKILL).
        obeys_term: bool,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Script>>);

    impl Fake {
        fn with(f: impl FnOnce(&mut Script)) -> Fake {
            let fake = Fake::default();
            f(&mut fake.s());
            fake
        }
        fn s(&self) -> std::sync::MutexGuard<'_, Script> {
            self.0.lock().unwrap()
        }
        /// Makes process `n` (0 = the first spawned) exit with `code`.
        fn exit(&self, n: usize, code: i32) {
            let tx = self.s().exits[n].take().expect("still running");
            tx.send(ExitStatus::from_raw(code << 8)).unwrap();
        }
        fn spawned(&self) -> usize {
            self.s().spawns.len()
        }
        /// Lets the loop run until `n` processes were started.
        async fn until_spawned(&self, n: usize) {
            for _ in 0..1_000_000 {
                if self.spawned() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("never spawned {n} times");
        }
    }

    fn pid(n: usize) -> i32 {
        100 + n as i32
    }

    impl Daemon for Fake {
        type Client = usize;
        fn spawn(&mut self) -> std::io::Result<reaper::Child> {
            let mut s = self.s();
            s.spawns.push(Instant::now());
            if s.failing_spawns > 0 {
                s.failing_spawns -= 1;
                s.exits.push(None);
                return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
            }
            let (tx, rx) = oneshot::channel();
            s.exits.push(Some(tx));
            Ok(reaper::Child {
                pid: pid(s.exits.len() - 1),
                exit: rx,
            })
        }
        async fn wait_ready(&mut self) -> Option<usize> {
            if !self.s().answers {
                std::future::pending::<()>().await;
            }
            Some(self.spawned() - 1)
        }
        fn kill(&self, pid: i32, signal: Signal) {
            let mut s = self.s();
            s.kills.push((pid, signal));
            if signal == Signal::SIGKILL || s.obeys_term {
                let n = (pid - 100) as usize;
                if let Some(tx) = s.exits[n].take() {
                    let _ = tx.send(ExitStatus::from_raw(signal as i32));
                }
            }
        }
        fn mark(&self, event: Event) {
            self.s().marks.push(event);
        }
    }

    /// Starts the loop over `fake`; the client channel and the stop sender.
    fn start(
        fake: &Fake,
    ) -> (
        watch::Receiver<Option<usize>>,
        mpsc::Sender<StopRequest>,
        tokio::task::JoinHandle<()>,
    ) {
        let (cd_tx, cd_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let task = tokio::spawn(supervise(fake.clone(), cd_tx, stop_rx));
        (cd_rx, stop_tx, task)
    }

    async fn stop(stop_tx: &mpsc::Sender<StopRequest>) {
        let (tx, rx) = oneshot::channel();
        stop_tx.send(tx).await.unwrap();
        rx.await.expect("the loop replies");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_containerd_restarts_with_back_off_that_resets_after_a_healthy_minute() {
        let fake = Fake::with(|s| s.answers = true);
        let (cd, _stop, _task) = start(&fake);
        fake.until_spawned(1).await;
        tokio::task::yield_now().await;
        assert_eq!(*cd.borrow(), Some(0));

        // Each quick death doubles the wait: 1 s, 2 s, 4 s.
        for (n, wait) in [(0, 1), (1, 2), (2, 4)] {
            let died = Instant::now();
            fake.exit(n, 1);
            tokio::task::yield_now().await;
            assert_eq!(*cd.borrow(), None, "no client while containerd is down");
            fake.until_spawned(n + 2).await;
            assert_eq!(
                fake.s().spawns[n + 1] - died,
                Duration::from_secs(wait),
                "restart {}",
                n + 1
            );
            tokio::task::yield_now().await;
            assert_eq!(*cd.borrow(), Some(n + 1), "the new client is published");
        }

        // A minute of health: the next restart waits 1 s again.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let died = Instant::now();
        fake.exit(3, 2);
        fake.until_spawned(5).await;
        assert_eq!(fake.s().spawns[4] - died, Duration::from_secs(1));
        // Start and ready are marked for the first run only.
        assert_eq!(
            fake.s().marks,
            [Event::ContainerdStart, Event::ContainerdReady]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spawn_that_fails_is_retried_with_back_off() {
        let fake = Fake::with(|s| {
            s.answers = true;
            s.failing_spawns = 2;
        });
        let t0 = Instant::now();
        let (cd, _stop, _task) = start(&fake);
        fake.until_spawned(3).await;
        tokio::task::yield_now().await;
        let s = fake.s();
        let at: Vec<Duration> = s.spawns.iter().map(|t| *t - t0).collect();
        assert_eq!(
            at,
            [0, 1, 3].map(Duration::from_secs),
            "tries at 0 s, +1 s, +2 s"
        );
        assert_eq!(*cd.borrow(), Some(2));
        assert_eq!(s.marks, [Event::ContainerdStart, Event::ContainerdReady]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_sends_sigterm_then_sigkill_after_ten_seconds() {
        let fake = Fake::with(|s| s.answers = true);
        let (cd, stop_tx, task) = start(&fake);
        fake.until_spawned(1).await;
        let asked = Instant::now();
        stop(&stop_tx).await;
        assert_eq!(Instant::now() - asked, Duration::from_secs(10));
        assert_eq!(
            fake.s().kills,
            [(pid(0), Signal::SIGTERM), (pid(0), Signal::SIGKILL)]
        );
        assert_eq!(*cd.borrow(), None);
        task.await.unwrap();
        assert_eq!(fake.spawned(), 1, "not restarted after a stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_containerd_that_obeys_sigterm_is_not_killed() {
        let fake = Fake::with(|s| {
            s.answers = true;
            s.obeys_term = true;
        });
        let (_cd, stop_tx, task) = start(&fake);
        fake.until_spawned(1).await;
        let asked = Instant::now();
        stop(&stop_tx).await;
        assert_eq!(Instant::now(), asked);
        assert_eq!(fake.s().kills, [(pid(0), Signal::SIGTERM)]);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_back_off_ends_the_loop_without_a_restart() {
        let fake = Fake::with(|s| s.answers = true);
        let (_cd, stop_tx, task) = start(&fake);
        fake.until_spawned(1).await;
        fake.exit(0, 1);
        tokio::task::yield_now().await;
        stop(&stop_tx).await;
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(fake.spawned(), 1);
        assert!(fake.s().kills.is_empty(), "nothing left to kill");
    }

    #[tokio::test(start_paused = true)]
    async fn a_containerd_that_never_answers_publishes_no_client_and_still_restarts() {
        let fake = Fake::default();
        let (cd, _stop, _task) = start(&fake);
        fake.until_spawned(1).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(*cd.borrow(), None);
        fake.exit(0, 1);
        fake.until_spawned(2).await;
        assert_eq!(*cd.borrow(), None);
        assert_eq!(fake.s().marks, [Event::ContainerdStart]);
    }

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
