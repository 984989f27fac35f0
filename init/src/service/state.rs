//! A service's state as the supervisor tracks it, and its `oskctl ps` row.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Where a service is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Not started yet: waiting for onboot, containerd or its `dependsOn`.
    Waiting,
    /// Its task is being created and started.
    Starting,
    /// Its task runs; `since` is when this run's start began.
    Running { pid: u32, since: Instant },
    /// Its task exited with `code`; it starts again at `until`.
    Backoff { code: u32, until: Instant },
    /// Its task exited with `code` and the restart policy says no.
    Exited { code: u32 },
    /// Being stopped: SIGTERM, the grace period, SIGKILL.
    Stopping,
    /// Stopped on request; stays so until started.
    Stopped,
    /// Cannot run at all (its log FIFOs cannot be made).
    Failed { reason: String },
}

impl ServiceState {
    pub fn pid(&self) -> Option<u32> {
        match self {
            ServiceState::Running { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// When the current run started, while it runs.
    pub fn since(&self) -> Option<Instant> {
        match self {
            ServiceState::Running { since, .. } => Some(*since),
            _ => None,
        }
    }
}

/// The names `oskctl ps` shows and the control protocol carries.
impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceState::Waiting => f.write_str("waiting"),
            ServiceState::Starting => f.write_str("starting"),
            ServiceState::Running { .. } => f.write_str("running"),
            ServiceState::Backoff { .. } => f.write_str("backoff"),
            ServiceState::Exited { code } => write!(f, "exited({code})"),
            ServiceState::Stopping => f.write_str("stopping"),
            ServiceState::Stopped => f.write_str("stopped"),
            ServiceState::Failed { .. } => f.write_str("failed"),
        }
    }
}

/// One row of `oskctl ps` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    /// [`ServiceState`]'s display name, e.g. `running` or `exited(3)`.
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Seconds since the current run started.
    pub uptime: Option<u64>,
}

impl Status {
    /// The row for a service in `state`, as seen at `now`.
    pub fn new(name: &str, state: &ServiceState, restarts: u32, now: Instant) -> Status {
        Status {
            name: name.to_string(),
            state: state.to_string(),
            pid: state.pid(),
            restarts,
            uptime: state.since().map(|t| now.duration_since(t).as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn states_keep_the_names_oskctl_has_always_shown() {
        let t = Instant::now();
        let shown: Vec<String> = [
            ServiceState::Waiting,
            ServiceState::Starting,
            ServiceState::Running { pid: 7, since: t },
            ServiceState::Backoff { code: 1, until: t },
            ServiceState::Exited { code: 3 },
            ServiceState::Stopping,
            ServiceState::Stopped,
            ServiceState::Failed {
                reason: "no fifo".into(),
            },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            shown,
            [
                "waiting",
                "starting",
                "running",
                "backoff",
                "exited(3)",
                "stopping",
                "stopped",
                "failed"
            ]
        );
    }

    #[test]
    fn a_row_is_the_same_json_as_before() {
        let t = Instant::now();
        let row = Status::new(
            "web",
            &ServiceState::Running { pid: 42, since: t },
            2,
            t + Duration::from_millis(5900),
        );
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"name":"web","state":"running","pid":42,"restarts":2,"uptime":5}"#
        );
        let row = Status::new("db", &ServiceState::Exited { code: 137 }, 0, t);
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            r#"{"name":"db","state":"exited(137)","pid":null,"restarts":0,"uptime":null}"#
        );
    }
}
