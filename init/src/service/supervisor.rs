//! The handle to the running services: start them all, list them, send
//! one a command, stop them all in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::host::{RealHost, ServiceHost};
use super::lifecycle::Service;
use super::runtime::TaskRuntime;
use super::state::{ServiceState, Status};
use super::stop;
use super::Error;
use crate::bundle::prepare::Bundle;
use crate::containerd::client::Containerd;
use crate::log::sink::SharedSink;

/// A request to one service, from `oskctl` or the shutdown.
#[derive(Debug)]
pub enum Cmd {
    Start,
    /// Stop; the sender, if any, hears when it is stopped.
    Stop(Option<oneshot::Sender<()>>),
    Restart,
}

/// A service's row in the supervisor's table.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub state: ServiceState,
    pub restarts: u32,
}

pub(super) type Table = Arc<Mutex<BTreeMap<String, Entry>>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

impl Supervisor {
    /// Supervises `bundles` through containerd on the real machine. See
    /// [`Supervisor::start_with`].
    pub fn start(
        bundles: Vec<Bundle>,
        cd: watch::Receiver<Option<Containerd>>,
        onboot: watch::Receiver<bool>,
        debug: bool,
        first: mpsc::UnboundedSender<String>,
    ) -> Supervisor {
        Supervisor::start_with(bundles, cd, onboot, first, Arc::new(RealHost { debug }))
    }

    /// Starts a supervising task per bundle. Each service reports its first
    /// start (or failure to start) on `first`. `cd` carries the current
    /// runtime connection, `None` while containerd is down.
    ///
    /// Tasks start once `onboot` turns true; the container records are made
    /// as soon as the runtime answers, while onboot still runs.
    pub fn start_with<R: TaskRuntime>(
        bundles: Vec<Bundle>,
        cd: watch::Receiver<Option<R>>,
        onboot: watch::Receiver<bool>,
        first: mpsc::UnboundedSender<String>,
        host: Arc<dyn ServiceHost>,
    ) -> Supervisor {
        let table: Table = Arc::default();
        let (running, _) = watch::channel(BTreeSet::<String>::new());
        let running = Arc::new(running);
        let mut cmds = HashMap::new();
        let mut sinks = HashMap::new();
        let mut depends_on = BTreeMap::new();
        for b in bundles {
            let name = b.name.clone();
            depends_on.insert(name.clone(), b.runtime.depends_on.clone());
            lock(&table).insert(
                name.clone(),
                Entry {
                    state: ServiceState::Waiting,
                    restarts: 0,
                },
            );
            let sink = host.log_sink(&name);
            let (tx, rx) = mpsc::channel(8);
            cmds.insert(name.clone(), tx);
            sinks.insert(name.clone(), sink.clone());
            let svc = Service {
                b,
                cd: cd.clone(),
                host: host.clone(),
                table: table.clone(),
                running: running.clone(),
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

    /// Every service's row, by name.
    pub fn ps(&self) -> Vec<Status> {
        let now = Instant::now();
        lock(&self.table)
            .iter()
            .map(|(name, e)| Status::new(name, &e.state, e.restarts, now))
            .collect()
    }

    /// A service's state and restart count.
    pub fn state(&self, name: &str) -> Option<(ServiceState, u32)> {
        lock(&self.table)
            .get(name)
            .map(|e| (e.state.clone(), e.restarts))
    }

    pub fn sink(&self, name: &str) -> Option<SharedSink> {
        self.sinks.get(name).cloned()
    }

    pub async fn send(&self, name: &str, cmd: Cmd) -> Result<(), Error> {
        let tx = self.cmds.get(name).ok_or_else(|| Error::Unknown {
            service: name.to_string(),
        })?;
        tx.send(cmd).await.map_err(|_| Error::Gone {
            service: name.to_string(),
        })
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
