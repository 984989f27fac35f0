//! One service's life: wait for onboot and its dependencies, start its
//! task, watch it, restart it by policy after a back-off, stop it on
//! request.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use osk_layout::marker::Event;
use osk_layout::Runtime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::backoff::{should_restart, Backoff, Exit};
use super::host::ServiceHost;
use super::runtime::{RuntimeError, TaskIo, TaskRuntime, TaskState};
use super::state::ServiceState;
use super::stop;
use super::supervisor::{lock, Cmd, Table};
use super::Error;
use crate::bundle::prepare::Bundle;
use crate::log::sink::SharedSink;

/// The exit status recorded when a task could not start or was lost.
const LOST: u32 = 255;

pub(super) struct Service<R: TaskRuntime> {
    pub b: Bundle,
    pub cd: watch::Receiver<Option<R>>,
    pub host: Arc<dyn ServiceHost>,
    pub table: Table,
    /// The services whose task runs, for `dependsOn`.
    pub running: Arc<watch::Sender<BTreeSet<String>>>,
    pub cmds: mpsc::Receiver<Cmd>,
    pub sink: SharedSink,
    pub first: Option<mpsc::UnboundedSender<String>>,
    /// The container record exists already: the next start only creates
    /// the task.
    pub precreated: bool,
}

enum Outcome {
    Exited(u32),
    Stop(Option<oneshot::Sender<()>>),
    Restart,
}

fn reply(done: Option<oneshot::Sender<()>>) {
    if let Some(d) = done {
        let _ = d.send(());
    }
}

impl<R: TaskRuntime> Service<R> {
    fn set(&self, state: ServiceState) {
        if let Some(e) = lock(&self.table).get_mut(&self.b.name) {
            e.state = state;
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

    fn runtime_error(&self, cause: R::Error) -> Error {
        Error::Runtime {
            service: self.b.name.clone(),
            cause: Box::new(cause),
        }
    }

    /// The current runtime connection, in the service's namespace; waits
    /// while containerd is down.
    async fn runtime(&mut self) -> R {
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
            if self.cd.changed().await.is_err() {
                // No runtime will ever come: wait for nothing rather than spin.
                std::future::pending::<()>().await;
            }
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

    /// Makes the container record ahead of the first start, off the boot's
    /// critical path. A failure only means the first start makes it.
    async fn precreate(&mut self) {
        let spec = match self.host.spec(&self.b) {
            Ok(s) => s,
            Err(e) => return tracing::debug!("{}: not created ahead: {e}", self.b.name),
        };
        let rt = self.runtime().await;
        match rt.create(&self.b.name, spec).await {
            Ok(()) => self.precreated = true,
            Err(e) => tracing::debug!("{}: not created ahead: {e}", self.b.name),
        }
    }

    /// Starts the task; returns its pid.
    async fn start_once(&mut self, io: &TaskIo) -> Result<u32, Error> {
        let rt = self.runtime().await;
        if !std::mem::take(&mut self.precreated) {
            let spec = self.host.spec(&self.b)?;
            rt.create(&self.b.name, spec)
                .await
                .map_err(|e| self.runtime_error(e))?;
        }
        let (b, host) = (&self.b, &self.host);
        rt.start(&b.name, io, |pid| host.after_create(b, pid))
            .await
            .map_err(|e| self.runtime_error(e))
    }

    /// Turns a command received while the task runs into an outcome;
    /// `None` for a start (it runs already).
    fn outcome_of(cmd: Option<Cmd>) -> Option<Outcome> {
        match cmd {
            Some(Cmd::Stop(done)) => Some(Outcome::Stop(done)),
            Some(Cmd::Restart) => Some(Outcome::Restart),
            Some(Cmd::Start) => None,
            None => Some(Outcome::Stop(None)),
        }
    }

    /// Waits for the running task to exit, re-attaching if containerd
    /// restarts meanwhile; or for a command.
    async fn watch_task(&mut self) -> Outcome {
        let name = self.b.name.clone();
        loop {
            let rt = self.runtime().await;
            let res = tokio::select! {
                r = rt.wait(&name) => r,
                cmd = self.cmds.recv() => match Self::outcome_of(cmd) {
                    Some(out) => return out,
                    None => continue,
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
    /// next) runtime connection. `None` means it still runs: wait on it
    /// again.
    async fn reattach(&mut self) -> Option<Outcome> {
        let name = self.b.name.clone();
        loop {
            let rt = self.runtime().await;
            match rt.state(&name).await {
                Ok(Some((pid, TaskState::Running | TaskState::Created))) => {
                    tracing::info!("{name}: re-attached, pid {pid} still running");
                    return None;
                }
                Ok(Some((_, TaskState::Stopped))) => {
                    // Exited while containerd was away; its status is kept.
                    let code = rt.wait(&name).await.unwrap_or(LOST);
                    return Some(Outcome::Exited(code));
                }
                Ok(_) => {
                    tracing::warn!("{name}: its task is gone after the containerd restart");
                    return Some(Outcome::Exited(LOST));
                }
                Err(e) if e.is_unavailable() => {
                    // Not back yet: the next connection, or a second's
                    // retry if the daemon loop has not noticed the death.
                    tokio::select! {
                        _ = self.cd.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        cmd = self.cmds.recv() => if let Some(out) = Self::outcome_of(cmd) {
                            return Some(out);
                        },
                    }
                }
                Err(e) => {
                    tracing::error!("{name}: {e}");
                    return Some(Outcome::Exited(LOST));
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
        self.set(ServiceState::Stopping);
        let rt = self.runtime().await;
        if let Err(e) = stop::stop_task(&rt, &self.b.name, grace).await {
            tracing::error!("stopping {}: {e}", self.b.name);
        }
        self.set_running(false);
        self.set(ServiceState::Stopped);
        reply(done);
    }

    pub(super) async fn run(mut self, mut onboot: watch::Receiver<bool>) {
        let name = self.b.name.clone();
        let io = match self.host.open_io(&name, &self.sink) {
            Ok(io) => io,
            Err(e) => {
                tracing::error!("{e}");
                self.set(ServiceState::Failed {
                    reason: e.to_string(),
                });
                self.report_first();
                return;
            }
        };
        // Onboot may mount what runtime.json and the task's binds use: only
        // the container record is made before it is done.
        self.precreate().await;
        let _ = onboot.wait_for(|done| *done).await;
        if let Err(e) = self.host.before_create(&self.b) {
            tracing::error!("{e}");
        }
        let mut backoff = Backoff::default();
        let mut want_up = true;
        loop {
            if !want_up {
                match self.cmds.recv().await {
                    Some(Cmd::Start | Cmd::Restart) => want_up = true,
                    Some(Cmd::Stop(done)) => reply(done),
                    None => return,
                }
                continue;
            }
            if let Some(cmd) = self.wait_deps().await {
                if let Cmd::Stop(done) = cmd {
                    want_up = false;
                    self.set(ServiceState::Stopped);
                    reply(done);
                }
                continue;
            }
            self.set(ServiceState::Starting);
            let started = Instant::now();
            let exit = match self.start_once(&io).await {
                Ok(pid) => {
                    self.set(ServiceState::Running {
                        pid,
                        since: started,
                    });
                    self.set_running(true);
                    if self.first.is_some() {
                        self.host.mark(Event::ServiceStarted(name.clone()));
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
                    Exit { code: LOST }
                }
            };
            self.set_running(false);
            let ran = started.elapsed();
            if !should_restart(self.b.runtime.restart_policy(), exit) {
                tracing::info!("{name} exited {}; restart policy says no", exit.code);
                self.set(ServiceState::Exited { code: exit.code });
                want_up = false;
                continue;
            }
            let delay = backoff.delay_after(ran);
            tracing::warn!(
                "{name} exited {}; restarting in {}s",
                exit.code,
                delay.as_secs()
            );
            self.set(ServiceState::Backoff {
                code: exit.code,
                until: Instant::now() + delay,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                cmd = self.cmds.recv() => {
                    if let Some(Cmd::Stop(done)) = cmd {
                        let rt = self.runtime().await;
                        let _ = rt.delete(&name).await;
                        self.set(ServiceState::Stopped);
                        want_up = false;
                        reply(done);
                        continue;
                    }
                }
            }
            if let Some(e) = lock(&self.table).get_mut(&name) {
                e.restarts += 1;
            }
        }
    }
}
