//! containerd's gRPC API in osk terms. The only module that knows protobuf.
//!
//! A service is one container plus one task, both named after the service,
//! in a containerd namespace. The container's spec is the bundle's
//! config.json with `root.path` made absolute; no snapshotter, no image: the
//! task is created with no rootfs mounts, so runc uses the unpacked rootfs.

use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::{self, transport::Channel, Code, Request};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNTIME: &str = "io.containerd.runc.v2";
/// containerd's runc shim serves every container whose spec carries the same
/// value here from one process.
pub const SHIM_GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
pub const SHIM_GROUP: &str = "osk";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to containerd at {path}: {cause}")]
    Connect {
        path: String,
        cause: tonic::transport::Error,
    },
    #[error("containerd {op} {id}: {status}")]
    Rpc {
        op: &'static str,
        id: String,
        status: Box<tonic::Status>,
    },
    /// The caller's step between create and start failed; the task was removed.
    #[error("{id}: cannot prepare the task before start: {cause}")]
    Prepare {
        id: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc { status, .. } => Some(status.code()),
            Error::Connect { .. } | Error::Prepare { .. } => None,
        }
    }
    /// containerd itself is gone (as opposed to refusing the request).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Prepare { .. } => false,
            _ => matches!(
                self.code(),
                None | Some(Code::Unavailable) | Some(Code::Unknown) | Some(Code::Cancelled)
            ),
        }
    }
}

/// State of a service's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Stopped,
    Other,
}

/// A connection to containerd, bound to one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    ns: String,
}

fn req<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = ns.parse() {
        r.metadata_mut().insert("containerd-namespace", v);
    }
    r
}

fn rpc(op: &'static str, id: &str) -> impl FnOnce(tonic::Status) -> Error {
    let id = id.to_string();
    move |status| Error::Rpc {
        op,
        id,
        status: Box::new(status),
    }
}

impl Containerd {
    pub async fn connect(socket: &Path, ns: &str) -> Result<Containerd, Error> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|cause| Error::Connect {
                path: socket.display().to_string(),
                cause,
            })?;
        Ok(Containerd {
            channel,
            ns: ns.to_string(),
        })
    }

    /// The same connection in another namespace.
    pub fn in_namespace(&self, ns: &str) -> Containerd {
        Containerd {
            channel: self.channel.clone(),
            ns: ns.to_string(),
        }
    }

    pub async fn version(&self) -> Result<String, Error> {
        let v = VersionClient::new(self.channel.clone())
            .version(Request::new(()))
            .await
            .map_err(rpc("version", ""))?;
        Ok(v.into_inner().version)
    }

    /// The container record alone (removing a stale one of the same name):
    /// metadata in containerd's database, nothing runs and nothing is
    /// mounted, so it can be made before the rootfs' binds are ready.
    pub async fn create_container(&self, id: &str, spec_json: Vec<u8>) -> Result<(), Error> {
        self.remove(id).await?;
        let container = Container {
            id: id.to_string(),
            runtime: Some(Runtime {
                name: RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(req(
                &self.ns,
                CreateContainerRequest {
                    container: Some(container),
                },
            ))
            .await
            .map_err(rpc("create container", id))?;
        tracing::debug!("{id}: container created");
        Ok(())
    }

    /// Creates the task of an existing container (the shim runs `runc
    /// create`), runs `before_start` with its pid and starts it. Returns
    /// the pid. If `before_start` fails, the task and container are removed.
    pub async fn start_task<E>(
        &self,
        id: &str,
        stdout: &str,
        stderr: &str,
        before_start: impl FnOnce(u32) -> Result<(), E>,
    ) -> Result<u32, Error>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let created = TasksClient::new(self.channel.clone())
            .create(req(
                &self.ns,
                CreateTaskRequest {
                    container_id: id.to_string(),
                    stdout: stdout.to_string(),
                    stderr: stderr.to_string(),
                    ..Default::default()
                },
            ))
            .await
            .map_err(rpc("create task", id))?
            .into_inner();
        tracing::debug!("{id}: task created, pid {}", created.pid);
        if let Err(cause) = before_start(created.pid) {
            let _ = self.remove(id).await;
            return Err(Error::Prepare {
                id: id.to_string(),
                cause: Box::new(cause),
            });
        }
        TasksClient::new(self.channel.clone())
            .start(req(
                &self.ns,
                StartRequest {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            ))
            .await
            .map_err(rpc("start task", id))?;
        Ok(created.pid)
    }

    /// Waits until the task exits; returns its exit status (128+N for
    /// signal N).
    pub async fn wait_exit(&self, id: &str) -> Result<u32, Error> {
        let r = TasksClient::new(self.channel.clone())
            .wait(req(
                &self.ns,
                WaitRequest {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            ))
            .await
            .map_err(rpc("wait", id))?;
        Ok(r.into_inner().exit_status)
    }

    /// Sends `signal` to every process of the task.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), Error> {
        TasksClient::new(self.channel.clone())
            .kill(req(
                &self.ns,
                KillRequest {
                    container_id: id.to_string(),
                    signal: signal as u32,
                    all: true,
                    ..Default::default()
                },
            ))
            .await
            .map_err(rpc("kill", id))?;
        Ok(())
    }

    /// The task's pid and state, `None` without a task.
    pub async fn task(&self, id: &str) -> Result<Option<(u32, TaskState)>, Error> {
        match TasksClient::new(self.channel.clone())
            .get(req(
                &self.ns,
                GetRequest {
                    container_id: id.to_string(),
                    ..Default::default()
                },
            ))
            .await
        {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                let state = match p.status {
                    1 => TaskState::Created,
                    2 => TaskState::Running,
                    3 => TaskState::Stopped,
                    _ => TaskState::Other,
                };
                (p.pid, state)
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(rpc("get task", id)(s)),
        }
    }

    /// Removes the task (killing it) and the container; absent is fine.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        if let Some((_, state)) = self.task(id).await? {
            if state != TaskState::Stopped {
                let _ = self.kill(id, libc::SIGKILL).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), self.wait_exit(id)).await;
            }
            match TasksClient::new(self.channel.clone())
                .delete(req(
                    &self.ns,
                    DeleteTaskRequest {
                        container_id: id.to_string(),
                    },
                ))
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(rpc("delete task", id)(s)),
            }
        }
        match ContainersClient::new(self.channel.clone())
            .delete(req(&self.ns, DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(rpc("delete container", id)(s)),
        }
    }
}

/// Sets `root.path` of an OCI spec to `rootfs` (absolute), keeping the rest.
pub fn spec_with_root(config_json: &[u8], rootfs: &Path) -> Result<Vec<u8>, serde_json::Error> {
    let mut spec: serde_json::Value = serde_json::from_slice(config_json)?;
    if !spec.get("root").is_some_and(|r| r.is_object()) {
        spec["root"] = serde_json::json!({});
    }
    spec["root"]["path"] = serde_json::Value::String(rootfs.display().to_string());
    // One shim for every service instead of one each: a shim is a Go daemon
    // of several MiB, and starting it is a Go start-up on the boot's critical
    // path. A service that wants its own sets this annotation itself.
    if !spec.get("annotations").is_some_and(|a| a.is_object()) {
        spec["annotations"] = serde_json::json!({});
    }
    if spec["annotations"].get(SHIM_GROUP_ANNOTATION).is_none() {
        spec["annotations"][SHIM_GROUP_ANNOTATION] = SHIM_GROUP.into();
    }
    serde_json::to_vec(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_root_becomes_absolute_and_rest_is_kept() {
        let out = spec_with_root(
            br#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},"process":{"args":["sh"]}}"#,
            Path::new("/containers/services/x/rootfs"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["root"]["path"], "/containers/services/x/rootfs");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["args"][0], "sh");
        assert_eq!(v["annotations"][SHIM_GROUP_ANNOTATION], SHIM_GROUP);
    }

    #[test]
    fn a_service_can_keep_its_own_shim() {
        let out = spec_with_root(
            br#"{"annotations":{"io.containerd.runc.v2.group":"alone","x":"y"}}"#,
            Path::new("/r"),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["annotations"][SHIM_GROUP_ANNOTATION], "alone");
        assert_eq!(v["annotations"]["x"], "y");
    }
}
