//! The seam between the supervisor and containerd: the task operations a
//! service needs, and containerd's client behind them.

use std::future::Future;

pub use crate::containerd::client::TaskState;
use crate::containerd::client::{self as containerd, Containerd};

use super::Error;

/// Where a task's stdout and stderr go (FIFO paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIo {
    pub stdout: String,
    pub stderr: String,
}

/// An error from a [`TaskRuntime`].
pub trait RuntimeError: std::error::Error + Send + Sync + 'static {
    /// The runtime itself is gone (containerd died), as opposed to refusing
    /// the request: the task may well live on.
    fn is_unavailable(&self) -> bool;
}

/// What the supervisor asks of containerd, for one namespace. A value is
/// one connection: when containerd dies, its calls fail with an
/// unavailable error and the next connection comes through the
/// supervisor's watch channel. Tasks outlive the connection.
pub trait TaskRuntime: Clone + Send + Sync + 'static {
    type Error: RuntimeError;

    /// The same connection in another namespace.
    fn in_namespace(&self, ns: &str) -> Self;

    /// Creates the container record `id` from an OCI spec, removing a stale
    /// one of the same name. Nothing runs yet.
    fn create(
        &self,
        id: &str,
        spec_json: Vec<u8>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Creates the task of container `id`, runs `before_start` with its pid
    /// (namespaces exist, nothing exec'd yet) and starts it; returns the pid.
    /// When `before_start` fails the task and container are removed.
    fn start<F>(
        &self,
        id: &str,
        io: &TaskIo,
        before_start: F,
    ) -> impl Future<Output = Result<u32, Self::Error>> + Send
    where
        F: FnOnce(u32) -> Result<(), Error> + Send;

    /// Waits until the task exits; its exit status (128+N for signal N).
    /// An already exited task answers at once.
    fn wait(&self, id: &str) -> impl Future<Output = Result<u32, Self::Error>> + Send;

    /// Sends `signal` to every process of the task.
    fn kill(&self, id: &str, signal: i32) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Removes the task (SIGKILL if it runs) and the container; absent is
    /// fine.
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The task's pid and state; `None` without a task.
    fn state(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<(u32, TaskState)>, Self::Error>> + Send;
}

impl RuntimeError for containerd::Error {
    fn is_unavailable(&self) -> bool {
        containerd::Error::is_unavailable(self)
    }
}

impl TaskRuntime for Containerd {
    type Error = containerd::Error;

    fn in_namespace(&self, ns: &str) -> Self {
        Containerd::in_namespace(self, ns)
    }

    async fn create(&self, id: &str, spec_json: Vec<u8>) -> Result<(), Self::Error> {
        self.create_container(id, spec_json).await
    }

    async fn start<F>(&self, id: &str, io: &TaskIo, before_start: F) -> Result<u32, Self::Error>
    where
        F: FnOnce(u32) -> Result<(), Error> + Send,
    {
        self.start_task(id, &io.stdout, &io.stderr, before_start)
            .await
    }

    async fn wait(&self, id: &str) -> Result<u32, Self::Error> {
        self.wait_exit(id).await
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), Self::Error> {
        Containerd::kill(self, id, signal).await
    }

    async fn delete(&self, id: &str) -> Result<(), Self::Error> {
        self.remove(id).await
    }

    async fn state(&self, id: &str) -> Result<Option<(u32, TaskState)>, Self::Error> {
        self.task(id).await
    }
}
