//! A scripted stand-in for containerd and the machine: tasks whose run
//! times, exit codes and answers to SIGTERM the test sets, a daemon the
//! test can crash, and a log of every call with its time on tokio's
//! paused clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osk_layout::marker::Event;
use tokio::sync::watch;
use tokio::time::Instant;

use super::host::ServiceHost;
use super::runtime::{RuntimeError, TaskIo, TaskRuntime, TaskState};
use super::Error;
use crate::bundle::prepare::{Bundle, HostActionError};
use crate::log::sink::{SharedSink, Sink};

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("containerd is gone")]
    Unavailable,
    #[error("containerd refused {0}")]
    Refused(String),
}

impl RuntimeError for FakeError {
    fn is_unavailable(&self) -> bool {
        matches!(self, FakeError::Unavailable)
    }
}

/// How one run of a task behaves.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Exits on its own this long after its start, with this status;
    /// `None` runs until killed.
    pub exits: Option<(Duration, u32)>,
    /// Exits this long after SIGTERM (status 143); `None` ignores it.
    pub on_term: Option<Duration>,
}

impl Run {
    pub fn forever() -> Run {
        Run {
            exits: None,
            on_term: Some(Duration::ZERO),
        }
    }
    pub fn exits_after(secs: u64, code: u32) -> Run {
        Run {
            exits: Some((Duration::from_secs(secs), code)),
            ..Run::forever()
        }
    }
    pub fn term_takes(self, d: Duration) -> Run {
        Run {
            on_term: Some(d),
            ..self
        }
    }
    pub fn ignores_term(self) -> Run {
        Run {
            on_term: None,
            ..self
        }
    }
}

/// A service's runs: `runs` in turn, then `then` for ever.
#[derive(Debug, Clone)]
pub struct Script {
    pub runs: VecDeque<Run>,
    pub then: Run,
    /// How many container creations fail before one succeeds.
    pub create_failures: u32,
}

impl Script {
    pub fn always(run: Run) -> Script {
        Script {
            runs: VecDeque::new(),
            then: run,
            create_failures: 0,
        }
    }
    pub fn runs(runs: impl IntoIterator<Item = Run>, then: Run) -> Script {
        Script {
            runs: runs.into_iter().collect(),
            then,
            create_failures: 0,
        }
    }
    pub fn failing_creates(self, n: u32) -> Script {
        Script {
            create_failures: n,
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Exited(u32),
}

struct Task {
    pid: u32,
    phase: watch::Sender<Phase>,
    on_term: Option<Duration>,
}

struct Inner {
    t0: Instant,
    /// containerd's generation: bumped when it dies.
    generation: watch::Sender<u64>,
    containers: BTreeSet<String>,
    tasks: BTreeMap<String, Task>,
    next_pid: u32,
    scripts: BTreeMap<String, Script>,
    /// (time since the fake was made, "op service [arg]").
    log: Vec<(Duration, String)>,
}

impl Inner {
    fn note(&mut self, what: String) {
        self.log.push((self.t0.elapsed(), what));
    }

    /// Ends the task `id` with `code` if it is still the run `pid`.
    fn exit(&mut self, id: &str, pid: u32, code: u32) {
        if let Some(t) = self.tasks.get(id).filter(|t| t.pid == pid) {
            if !matches!(*t.phase.borrow(), Phase::Exited(_)) {
                t.phase.send_replace(Phase::Exited(code));
                self.note(format!("exit {id} {code}"));
            }
        }
    }
}

/// One connection to the fake containerd; clones share its state.
#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
    generation: u64,
    ns: String,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends task `id`'s run `pid` with `code` after `after`.
fn exit_later(inner: &Arc<Mutex<Inner>>, id: &str, pid: u32, after: Duration, code: u32) {
    let (inner, id) = (inner.clone(), id.to_string());
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        lock(&inner).exit(&id, pid, code);
    });
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime {
            inner: Arc::new(Mutex::new(Inner {
                t0: Instant::now(),
                generation: watch::channel(0).0,
                containers: BTreeSet::new(),
                tasks: BTreeMap::new(),
                next_pid: 100,
                scripts: BTreeMap::new(),
                log: Vec::new(),
            })),
            generation: 0,
            ns: osk_layout::CONTAINERD_NAMESPACE.into(),
        }
    }

    pub fn script(&self, id: &str, script: Script) {
        lock(&self.inner).scripts.insert(id.into(), script);
    }

    /// containerd dies: every call and wait on older connections fails as
    /// unavailable; tasks live on.
    pub fn crash(&self) {
        let mut i = lock(&self.inner);
        i.generation.send_modify(|g| *g += 1);
        i.note("crash containerd".into());
    }

    /// A connection to the current containerd.
    pub fn connect(&self) -> FakeRuntime {
        let generation = *lock(&self.inner).generation.borrow();
        FakeRuntime {
            generation,
            ..self.clone()
        }
    }

    /// The running task of `id` exits now (whether containerd is up or not).
    pub fn exit(&self, id: &str, code: u32) {
        let mut i = lock(&self.inner);
        if let Some(pid) = i.tasks.get(id).map(|t| t.pid) {
            i.exit(id, pid, code);
        }
    }

    /// The task and container of `id` vanish (containerd lost its state).
    pub fn forget(&self, id: &str) {
        let mut i = lock(&self.inner);
        i.tasks.remove(id);
        i.containers.remove(id);
    }

    /// Every call so far: (time, "op service [arg]").
    pub fn log(&self) -> Vec<(Duration, String)> {
        lock(&self.inner).log.clone()
    }

    /// The times of the calls that are exactly `what` (e.g. "start web").
    pub fn times(&self, what: &str) -> Vec<Duration> {
        self.log()
            .into_iter()
            .filter(|(_, w)| w == what || w.starts_with(&format!("{what} ")))
            .map(|(t, _)| t)
            .collect()
    }

    fn check(&self) -> Result<std::sync::MutexGuard<'_, Inner>, FakeError> {
        let i = lock(&self.inner);
        if *i.generation.borrow() == self.generation {
            Ok(i)
        } else {
            Err(FakeError::Unavailable)
        }
    }
}

impl TaskRuntime for FakeRuntime {
    type Error = FakeError;

    fn in_namespace(&self, ns: &str) -> Self {
        FakeRuntime {
            ns: ns.into(),
            ..self.clone()
        }
    }

    async fn create(&self, id: &str, _spec_json: Vec<u8>) -> Result<(), FakeError> {
        let mut i = self.check()?;
        if let Some(s) = i.scripts.get_mut(id).filter(|s| s.create_failures > 0) {
            s.create_failures -= 1;
            i.note(format!("create-failed {id}"));
            return Err(FakeError::Refused(format!("create container {id}")));
        }
        if let Some(t) = i.tasks.remove(id) {
            t.phase.send_replace(Phase::Exited(137));
        }
        i.containers.insert(id.into());
        i.note(format!("create {id} in {}", self.ns));
        Ok(())
    }

    async fn start<F>(&self, id: &str, _io: &TaskIo, before_start: F) -> Result<u32, FakeError>
    where
        F: FnOnce(u32) -> Result<(), Error> + Send,
    {
        let pid = {
            let mut i = self.check()?;
            if !i.containers.contains(id) || i.tasks.contains_key(id) {
                return Err(FakeError::Refused(format!("create task {id}")));
            }
            let pid = i.next_pid;
            i.next_pid += 1;
            i.tasks.insert(
                id.into(),
                Task {
                    pid,
                    phase: watch::channel(Phase::Created).0,
                    on_term: None,
                },
            );
            pid
        };
        if let Err(e) = before_start(pid) {
            let mut i = lock(&self.inner);
            i.tasks.remove(id);
            i.containers.remove(id);
            i.note(format!("prepare-failed {id}"));
            return Err(FakeError::Refused(e.to_string()));
        }
        let mut i = self.check()?;
        let script = i
            .scripts
            .entry(id.into())
            .or_insert_with(|| Script::always(Run::forever()));
        let run = script.runs.pop_front().unwrap_or(script.then);
        if let Some(t) = i.tasks.get_mut(id) {
            t.on_term = run.on_term;
            t.phase.send_replace(Phase::Running);
        }
        i.note(format!("start {id} {pid}"));
        if let Some((after, code)) = run.exits {
            exit_later(&self.inner, id, pid, after, code);
        }
        Ok(pid)
    }

    async fn wait(&self, id: &str) -> Result<u32, FakeError> {
        let (mut phase, mut generation) = {
            let i = self.check()?;
            let t = i
                .tasks
                .get(id)
                .ok_or_else(|| FakeError::Refused(format!("wait {id}")))?;
            (t.phase.subscribe(), i.generation.subscribe())
        };
        tokio::select! {
            p = phase.wait_for(|p| matches!(p, Phase::Exited(_))) => match p.as_deref() {
                Ok(Phase::Exited(code)) => Ok(*code),
                _ => Err(FakeError::Refused(format!("wait {id}: task deleted"))),
            },
            _ = generation.wait_for(|g| *g != self.generation) => Err(FakeError::Unavailable),
        }
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), FakeError> {
        let mut i = self.check()?;
        i.note(format!("kill {id} {signal}"));
        let Some(t) = i.tasks.get(id) else {
            return Err(FakeError::Refused(format!("kill {id}: no task")));
        };
        let (pid, on_term) = (t.pid, t.on_term);
        if signal == libc::SIGKILL {
            i.exit(id, pid, 128 + libc::SIGKILL as u32);
        } else if let (libc::SIGTERM, Some(after)) = (signal, on_term) {
            exit_later(&self.inner, id, pid, after, 128 + libc::SIGTERM as u32);
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), FakeError> {
        let mut i = self.check()?;
        if let Some(t) = i.tasks.remove(id) {
            t.phase.send_replace(Phase::Exited(137));
        }
        i.containers.remove(id);
        i.note(format!("delete {id}"));
        Ok(())
    }

    async fn state(&self, id: &str) -> Result<Option<(u32, TaskState)>, FakeError> {
        let i = self.check()?;
        Ok(i.tasks.get(id).map(|t| {
            let state = match *t.phase.borrow() {
                Phase::Created => TaskState::Created,
                Phase::Running => TaskState::Running,
                Phase::Exited(_) => TaskState::Stopped,
            };
            (t.pid, state)
        }))
    }
}

/// The machine around the tasks: records markers and prepare calls.
#[derive(Default)]
pub struct FakeHost {
    /// Services whose log FIFOs cannot be made.
    pub no_fifos: BTreeSet<String>,
    /// Services whose runtime.json host side fails once the task exists.
    pub bad_prepare: BTreeSet<String>,
    /// Markers made, as shown on the console.
    pub marks: Mutex<Vec<String>>,
}

impl FakeHost {
    pub fn marks(&self) -> Vec<String> {
        self.marks.lock().unwrap().clone()
    }
}

impl ServiceHost for FakeHost {
    fn log_sink(&self, _service: &str) -> SharedSink {
        Sink::shared(None, None)
    }

    fn open_io(&self, service: &str, _sink: &SharedSink) -> Result<TaskIo, Error> {
        if self.no_fifos.contains(service) {
            return Err(Error::Fifos {
                service: service.into(),
                dir: "/fake/io".into(),
                cause: std::io::Error::from_raw_os_error(libc::EROFS),
            });
        }
        Ok(TaskIo {
            stdout: format!("/fake/io/{service}.stdout"),
            stderr: format!("/fake/io/{service}.stderr"),
        })
    }

    fn spec(&self, _b: &Bundle) -> Result<Vec<u8>, Error> {
        Ok(b"{}".to_vec())
    }

    fn before_create(&self, _b: &Bundle) -> Result<(), Error> {
        Ok(())
    }

    fn after_create(&self, b: &Bundle, _pid: u32) -> Result<(), Error> {
        if self.bad_prepare.contains(&b.name) {
            return Err(Error::Prepare {
                service: b.name.clone(),
                cause: HostActionError::Cgroup {
                    bundle: b.name.clone(),
                    path: format!("/sys/fs/cgroup/{}", b.name),
                    cause: std::io::Error::from_raw_os_error(libc::EROFS),
                },
            });
        }
        Ok(())
    }

    fn mark(&self, event: Event) {
        self.marks.lock().unwrap().push(event.to_string());
    }
}
