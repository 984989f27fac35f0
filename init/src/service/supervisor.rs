//! Keeps every service running: dependency ordering, restart policy with
//! back-off, re-attaching after a containerd restart, start/stop on request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use osk_layout::marker::Event;
use osk_layout::Runtime;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::bundle::prepare::{self, Bundle};
use crate::containerd::client::{self as containerd, Containerd, ServiceDef, TaskState};
use crate::log::rotating::{self, RotatingLog};
use crate::log::sink::{pump, SharedSink, Sink};
use crate::service::backoff::{should_restart, Backoff, Exit};
use crate::service::stop;

/// One row of `oskctl ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Seconds since the current run started.
    pub uptime: Option<u64>,
    #[serde(skip)]
    pub since: Option<Instant>,
}

#[derive(Debug)]
pub enum Cmd {
    Start,
    Stop(Option<oneshot::Sender<()>>),
    Restart,
}

type Table = Arc<Mutex<BTreeMap<String, Status>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Handle to the running services.
#[derive(Clone)]
pub struct Supervisor {
    table: Table,
    cmds: Arc<HashMap<String, mpsc::Sender<Cmd>>>,
    sinks: Arc<HashMap<String, SharedSink>>,
    /// Every service's `dependsOn`, for the shutdown order.
    depends_on: Arc<BTreeMap<String, Vec<String>>>,
}

/// Creates (once) the FIFO pair a service's task writes to and starts
/// copying it into the service's log. The FIFOs are held open read-write,
/// so a restarting task never sees a missing reader.
fn open_fifos(name: &str, sink: &SharedSink) -> std::io::Result<(String, String)> {
    let dir = PathBuf::from("/run/osk/io");
    std::fs::create_dir_all(&dir)?;
    let mut paths = Vec::new();
    for stream in ["stdout", "stderr"] {
        let p = dir.join(format!("{name}.{stream}"));
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&p)?;
        tokio::spawn(pump(rx, sink.clone()));
        paths.push(p.display().to_string());
    }
    Ok((paths.remove(0), paths.remove(0)))
}

impl Supervisor {
    /// Starts a supervising task per bundle. Each service reports its first
    /// start (or failure to start) on `first`.
    ///
    /// Tasks start once `onboot` turns true; the container records are made
    /// as soon as containerd answers, while onboot still runs.
    pub fn start(
        bundles: Vec<Bundle>,
        cd: watch::Receiver<Option<Containerd>>,
        onboot: watch::Receiver<bool>,
        debug: bool,
        first: mpsc::UnboundedSender<String>,
    ) -> Supervisor {
        let table: Table = Arc::default();
        let (running_tx, _) = watch::channel(BTreeSet::<String>::new());
        let running_tx = Arc::new(running_tx);
        let mut cmds = HashMap::new();
        let mut sinks = HashMap::new();
        let mut depends_on = BTreeMap::new();
        for b in bundles {
            let name = b.name.clone();
            depends_on.insert(name.clone(), b.runtime.depends_on.clone());
            lock(&table).insert(
                name.clone(),
                Status {
                    name: name.clone(),
                    state: "waiting".into(),
                    pid: None,
                    restarts: 0,
                    uptime: None,
                    since: None,
                },
            );
            let log = RotatingLog::open(
                format!("{}/{name}.log", osk_layout::LOG_DIR),
                rotating::DEFAULT_CAP,
            )
            .ok();
            let sink = Sink::shared(log, debug.then(|| format!("{name}: ")));
            let (tx, rx) = mpsc::channel(8);
            cmds.insert(name.clone(), tx);
            sinks.insert(name.clone(), sink.clone());
            let svc = Service {
                b,
                cd: cd.clone(),
                table: table.clone(),
                running: running_tx.clone(),
                cmds: rx,
                sink,
                first: Some(first.clone()),
                precreated: false,
            };
            tokio::spawn(svc.run(onboot.clone()));
        }
        Supervisor {
            table,
            cmds: Arc::new(cmds),
            sinks: Arc::new(sinks),
            depends_on: Arc::new(depends_on),
        }
    }

    pub fn ps(&self) -> Vec<Status> {
        let now = Instant::now();
        lock(&self.table)
            .values()
            .map(|s| Status {
                uptime: s.since.map(|t| now.duration_since(t).as_secs()),
                ..s.clone()
            })
            .collect()
    }

    pub fn sink(&self, name: &str) -> Option<SharedSink> {
        self.sinks.get(name).cloned()
    }

    pub async fn send(&self, name: &str, cmd: Cmd) -> Result<(), String> {
        let tx = self
            .cmds
            .get(name)
            .ok_or_else(|| format!("no service named {name:?} (see `oskctl ps`)"))?;
        tx.send(cmd)
            .await
            .map_err(|_| format!("{name}: supervisor gone"))
    }

    /// Stops every service, each with its grace period: dependents before
    /// what they depend on, independent ones in parallel (see
    /// [`stop::stop_plan`]).
    pub async fn stop_all(&self) {
        let plan = stop::stop_plan(&self.depends_on);
        if !plan.cyclic.is_empty() {
            let names: Vec<&str> = plan.cyclic.iter().map(String::as_str).collect();
            tracing::warn!(
                "dependsOn cycle among {}: stopping those without order",
                names.join(", ")
            );
        }
        let sup = self.clone();
        stop::stop_in_order(&plan, move |name| {
            let sup = sup.clone();
            async move {
                let (done, wait) = oneshot::channel();
                if sup.send(&name, Cmd::Stop(Some(done))).await.is_ok() {
                    let _ = wait.await;
                }
            }
        })
        .await;
    }
}

struct Service {
    b: Bundle,
    cd: watch::Receiver<Option<Containerd>>,
    table: Table,
    running: Arc<watch::Sender<BTreeSet<String>>>,
    cmds: mpsc::Receiver<Cmd>,
    sink: SharedSink,
    first: Option<mpsc::UnboundedSender<String>>,
    /// The container record exists already: the next start only creates
    /// the task.
    precreated: bool,
}

enum Outcome {
    Exited(u32),
    Stop(Option<oneshot::Sender<()>>),
    Restart,
}

impl Service {
    fn set(&self, state: &str, pid: Option<u32>, since: Option<Instant>) {
        if let Some(s) = lock(&self.table).get_mut(&self.b.name) {
            s.state = state.into();
            s.pid = pid;
            s.since = since;
        }
    }

    fn report_first(&mut self) {
        if let Some(tx) = self.first.take() {
            let _ = tx.send(self.b.name.clone());
        }
    }

    fn set_running(&self, up: bool) {
        self.running.send_modify(|r| {
            if up {
                r.insert(self.b.name.clone());
            } else {
                r.remove(&self.b.name);
            }
        });
    }

    async fn containerd(&mut self) -> Containerd {
        let ns = self
            .b
            .runtime
            .namespace
            .clone()
            .unwrap_or(osk_layout::CONTAINERD_NAMESPACE.into());
        loop {
            if let Some(c) = self.cd.borrow_and_update().clone() {
                return c.in_namespace(&ns);
            }
            let _ = self.cd.changed().await;
        }
    }

    /// Waits until every `dependsOn` service is running; a command cuts it short.
    async fn wait_deps(&mut self) -> Option<Cmd> {
        let deps = self.b.runtime.depends_on.clone();
        if deps.is_empty() {
            return None;
        }
        let mut rx = self.running.subscribe();
        loop {
            if deps.iter().all(|d| rx.borrow_and_update().contains(d)) {
                return None;
            }
            tokio::select! {
                _ = rx.changed() => {}
                cmd = self.cmds.recv() => return cmd,
            }
        }
    }

    fn spec(&self) -> Result<Vec<u8>, String> {
        let config = self.b.config_path();
        let raw = std::fs::read(&config).map_err(|e| format!("{}: {e}", config.display()))?;
        containerd::spec_with_root(&raw, &self.b.rootfs())
            .map_err(|e| format!("{}: invalid OCI spec: {e}", config.display()))
    }

    /// Makes the container record ahead of the first start, off the boot's
    /// critical path. A failure only means the first start makes it.
    async fn precreate(&mut self) {
        let spec = match self.spec() {
            Ok(s) => s,
            Err(e) => return tracing::debug!("{}: not created ahead: {e}", self.b.name),
        };
        let cd = self.containerd().await;
        match cd.create_container(&self.b.name, spec).await {
            Ok(()) => self.precreated = true,
            Err(e) => tracing::debug!("{}: not created ahead: {e}", self.b.name),
        }
    }

    /// Starts the task; returns its pid.
    async fn start_once(&mut self, fifos: &(String, String)) -> Result<u32, String> {
        let cd = self.containerd().await;
        let b = &self.b;
        let prepare = |pid| prepare::after_create(b, pid).map_err(|e| e.to_string());
        if std::mem::take(&mut self.precreated) {
            return cd
                .start_task(&b.name, &fifos.0, &fifos.1, prepare)
                .await
                .map_err(|e| e.to_string());
        }
        let def = ServiceDef {
            id: &b.name,
            spec_json: self.spec()?,
            stdout: &fifos.0,
            stderr: &fifos.1,
        };
        cd.start_service(def, prepare)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits for the running task to exit, re-attaching if containerd
    /// restarts meanwhile; or for a command.
    async fn watch_task(&mut self) -> Outcome {
        let name = self.b.name.clone();
        loop {
            let cd = self.containerd().await;
            let res = tokio::select! {
                r = cd.wait_exit(&name) => r,
                cmd = self.cmds.recv() => match cmd {
                    Some(Cmd::Stop(done)) => return Outcome::Stop(done),
                    Some(Cmd::Restart) => return Outcome::Restart,
                    Some(Cmd::Start) => continue,
                    None => return Outcome::Stop(None),
                },
            };
            match res {
                Ok(code) => return Outcome::Exited(code),
                // Whatever broke the wait (containerd killed, a reset
                // stream), the task itself may well be alive: its shim
                // outlives containerd. Ask again before calling it dead.
                Err(e) => {
                    tracing::warn!("{name}: lost containerd ({e}); re-attaching when it is back");
                    if let Some(out) = self.reattach().await {
                        return out;
                    }
                }
            }
        }
    }

    /// After a failed wait: finds the task again through the current (or
    /// next) containerd. `None` means it still runs: wait on it again.
    async fn reattach(&mut self) -> Option<Outcome> {
        let name = self.b.name.clone();
        loop {
            let cd = self.containerd().await;
            match cd.task(&name).await {
                Ok(Some((pid, TaskState::Running | TaskState::Created))) => {
                    tracing::info!("{name}: re-attached, pid {pid} still running");
                    return None;
                }
                Ok(Some((_, TaskState::Stopped))) => {
                    // Exited while containerd was away; its status is kept.
                    let code = cd.wait_exit(&name).await.unwrap_or(255);
                    return Some(Outcome::Exited(code));
                }
                Ok(_) => {
                    tracing::warn!("{name}: its task is gone after the containerd restart");
                    return Some(Outcome::Exited(255));
                }
                Err(e) if e.is_unavailable() => {
                    // Not back yet: the next containerd generation, or a
                    // second's retry if the loop has not noticed the death.
                    tokio::select! {
                        _ = self.cd.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        cmd = self.cmds.recv() => return Some(match cmd {
                            Some(Cmd::Stop(done)) => Outcome::Stop(done),
                            Some(Cmd::Restart) => Outcome::Restart,
                            Some(Cmd::Start) => continue,
                            None => Outcome::Stop(None),
                        }),
                    }
                }
                Err(e) => {
                    tracing::error!("{name}: {e}");
                    return Some(Outcome::Exited(255));
                }
            }
        }
    }

    async fn stop(&mut self, done: Option<oneshot::Sender<()>>) {
        let grace = Duration::from_secs(
            self.b
                .runtime
                .stop_grace_period
                .unwrap_or(Runtime::DEFAULT_STOP_GRACE_PERIOD),
        );
        self.set("stopping", None, None);
        let cd = self.containerd().await;
        if let Err(e) = cd.stop_service(&self.b.name, grace).await {
            tracing::error!("stopping {}: {e}", self.b.name);
        }
        self.set_running(false);
        self.set("stopped", None, None);
        if let Some(d) = done {
            let _ = d.send(());
        }
    }

    async fn run(mut self, mut onboot: watch::Receiver<bool>) {
        let name = self.b.name.clone();
        let fifos = match open_fifos(&name, &self.sink) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("{name}: cannot create its log FIFOs in /run/osk/io: {e}");
                self.set("failed", None, None);
                self.report_first();
                return;
            }
        };
        // Onboot may mount what runtime.json and the task's binds use: only
        // the container record is made before it is done.
        self.precreate().await;
        let _ = onboot.wait_for(|done| *done).await;
        if let Err(e) = prepare::before_create(&self.b) {
            tracing::error!("{e}");
        }
        let mut backoff = Backoff::default();
        let mut want_up = true;
        loop {
            if !want_up {
                match self.cmds.recv().await {
                    Some(Cmd::Start | Cmd::Restart) => want_up = true,
                    Some(Cmd::Stop(done)) => {
                        if let Some(d) = done {
                            let _ = d.send(());
                        }
                    }
                    None => return,
                }
                continue;
            }
            if let Some(cmd) = self.wait_deps().await {
                if let Cmd::Stop(done) = cmd {
                    want_up = false;
                    self.set("stopped", None, None);
                    if let Some(d) = done {
                        let _ = d.send(());
                    }
                }
                continue;
            }
            self.set("starting", None, None);
            let started = Instant::now();
            let exit = match self.start_once(&fifos).await {
                Ok(pid) => {
                    self.set("running", Some(pid), Some(started));
                    self.set_running(true);
                    if self.first.is_some() {
                        crate::log::console::mark(Event::ServiceStarted(name.clone()));
                    }
                    tracing::info!("{name} running, pid {pid}");
                    self.report_first();
                    match self.watch_task().await {
                        Outcome::Exited(code) => Exit { code },
                        Outcome::Stop(done) => {
                            self.stop(done).await;
                            want_up = false;
                            continue;
                        }
                        Outcome::Restart => {
                            self.stop(None).await;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!("{name}: cannot start: {e}");
                    self.report_first();
                    Exit { code: 255 }
                }
            };
            self.set_running(false);
            let ran = started.elapsed();
            if let Some(s) = lock(&self.table).get_mut(&name) {
                s.pid = None;
            }
            if !should_restart(self.b.runtime.restart_policy(), exit) {
                tracing::info!("{name} exited {}; restart policy says no", exit.code);
                self.set(&format!("exited({})", exit.code), None, None);
                want_up = false;
                continue;
            }
            let delay = backoff.delay_after(ran);
            tracing::warn!(
                "{name} exited {}; restarting in {}s",
                exit.code,
                delay.as_secs()
            );
            self.set("backoff", None, None);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                cmd = self.cmds.recv() => {
                    if let Some(Cmd::Stop(done)) = cmd {
                        let cd = self.containerd().await;
                        let _ = cd.remove(&name).await;
                        self.set("stopped", None, None);
                        want_up = false;
                        if let Some(d) = done { let _ = d.send(()); }
                        continue;
                    }
                }
            }
            if let Some(s) = lock(&self.table).get_mut(&name) {
                s.restarts += 1;
            }
        }
    }
}
