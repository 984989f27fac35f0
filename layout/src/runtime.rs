//! `runtime.json`: what osk-init does around a container besides running it.
//!
//! The first six fields are LinuxKit's `runtime` section, kept field for field
//! so LinuxKit users' manifests and labels mean the same thing. The rest are
//! osk's supervision extras (restart policy, ordering, timeouts).

use serde::{Deserialize, Serialize};

/// A mount as in the OCI runtime spec (`destination`, `type`, `source`, `options`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A network interface to create or move into the container's namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Interface {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Type of interface to create (`veth`, ...); empty moves an existing one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub add: String,
    /// The other end of a veth pair.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    #[serde(default)]
    pub create_in_root: bool,
}

/// Namespaces to bind-mount to a path so other containers can join them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindNs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mnt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
}

impl BindNs {
    pub fn is_empty(&self) -> bool {
        *self == BindNs::default()
    }
}

/// When osk-init restarts a service whose task exited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Restart when the task exits non-zero or is killed by a signal.
    #[default]
    OnFailure,
    /// Restart whenever the task exits (unless osk-init stopped it).
    Always,
}

impl RestartPolicy {
    pub const NAMES: &'static [&'static str] = &["no", "on-failure", "always"];

    pub fn parse(s: &str) -> Option<RestartPolicy> {
        match s {
            "no" => Some(RestartPolicy::No),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "always" => Some(RestartPolicy::Always),
            _ => None,
        }
    }
}

/// The contents of a bundle's `runtime.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Runtime {
    /// Host directories to create before the container starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mkdir: Vec<String>,
    /// Host mounts to make before the container starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// cgroups (below the root) to create for this container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroups: Vec<String>,
    /// Interfaces to create or move into the container's network namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Namespaces to bind to host paths once the task exists.
    #[serde(default, rename = "bindNS", skip_serializing_if = "BindNs::is_empty")]
    pub bind_ns: BindNs,
    /// containerd namespace override (default [`crate::CONTAINERD_NAMESPACE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    // osk extras below; LinuxKit has no equivalent.
    /// Restart policy for a service (ignored for onboot/onshutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// Services that must be running before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Seconds an onboot/onshutdown container may run before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when the service is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<u64>,
}

impl Runtime {
    /// Default seconds an onboot/onshutdown container may run.
    pub const DEFAULT_TIMEOUT: u64 = 300;
    /// Default seconds between SIGTERM and SIGKILL.
    pub const DEFAULT_STOP_GRACE_PERIOD: u64 = 10;

    pub fn restart_policy(&self) -> RestartPolicy {
        self.restart.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_linuxkit_runtime_json() {
        let json = r#"{"mkdir":["/var/lib/x"],"mounts":[{"destination":"/x","type":"bind","source":"/y","options":["rbind"]}],
            "interfaces":[{"name":"eth1","add":"veth","peer":"eth1p","createInRoot":true}],
            "bindNS":{"net":"/run/netns/x"},"namespace":"other"}"#;
        let rt: Runtime = serde_json::from_str(json).unwrap();
        assert_eq!(rt.mkdir, ["/var/lib/x"]);
        assert_eq!(rt.mounts[0].kind.as_deref(), Some("bind"));
        assert!(rt.interfaces[0].create_in_root);
        assert_eq!(rt.bind_ns.net.as_deref(), Some("/run/netns/x"));
        assert_eq!(rt.restart_policy(), RestartPolicy::OnFailure);
    }

    #[test]
    fn writes_osk_extras_and_omits_empty() {
        let rt = Runtime {
            restart: Some(RestartPolicy::Always),
            depends_on: vec!["dhcpcd".into()],
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&rt).unwrap(),
            r#"{"restart":"always","dependsOn":["dhcpcd"]}"#
        );
    }

    #[test]
    fn unknown_field_is_an_error() {
        assert!(serde_json::from_str::<Runtime>(r#"{"mkdirs":[]}"#).is_err());
    }
}
