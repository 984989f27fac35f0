//! OCI runtime specs (`config.json`) and `runtime.json` for one container,
//! with LinuxKit's defaults and precedence: the manifest entry wins over the
//! image's `org.mobyproject.config` label, the label over the image config
//! (command, env, working dir, user), that over built-in defaults.
//!
//! Differences from LinuxKit, on purpose: `binds.add` and
//! `capabilities.add` always append (LinuxKit drops them when the manifest
//! also sets `binds`/`capabilities`), a missing `PATH` gets the usual
//! default, and a numeric image `User` is honoured.

mod generate;
mod parse;

use std::collections::BTreeMap;

use oci_spec::runtime::Spec;
use osk_layout::Runtime;
use serde_json::Value;

use crate::manifest::{ContainerKind, Manifest};

pub use generate::generate;
pub use parse::{parse_bind, parse_rlimit, parse_tmpfs, Bind, Rlimit, SettingError};

/// The OCI runtime-spec version written into `config.json`.
pub const OCI_VERSION: &str = "1.0.2";

/// `PATH` for containers whose image and manifest set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every capability the kernel knows, as LinuxKit's `all` expands.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// What the image itself says, and what the rest of the manifest provides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// The image config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The image config's `Cmd`.
    pub cmd: Vec<String>,
    /// The image config's `Env`.
    pub env: Vec<String>,
    /// The image config's `WorkingDir`.
    pub working_dir: Option<String>,
    /// The image config's `User` (`uid[:gid]`; names are not resolved).
    pub user: Option<String>,
    /// Container name → id, for `uid: <container name>` ([`Manifest::id_map`]).
    pub id_map: BTreeMap<String, u32>,
    /// Volume name → read-only, for binds and mounts whose source is a volume.
    pub volumes: BTreeMap<String, bool>,
}

impl ImageDefaults {
    /// Fills what comes from the manifest (ids and volumes).
    pub fn with_manifest(mut self, m: &Manifest) -> ImageDefaults {
        self.id_map = m.id_map();
        self.volumes = m
            .volumes
            .iter()
            .map(|v| (v.name.clone(), v.readonly))
            .collect();
        self
    }
}

/// A container's settings cannot become a spec.
#[derive(Debug, thiserror::Error)]
#[error("{kind} `{name}`{at}: {msg}")]
pub struct SpecError {
    pub kind: ContainerKind,
    pub name: String,
    /// ` (file:line:col)` of the entry, or empty.
    pub at: String,
    pub msg: String,
}

/// Recursively rebuilds objects with keys inserted in sorted order, so the
/// output is sorted whether or not serde_json's `preserve_order` is on.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut entries: Vec<(String, Value)> = o.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn json_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let v = sorted(serde_json::to_value(v).expect("spec types serialize to JSON"));
    let mut out = serde_json::to_vec_pretty(&v).expect("JSON values serialize");
    out.push(b'\n');
    out
}

/// `config.json` bytes: keys sorted, pretty, trailing newline.
pub fn to_json_bytes(spec: &Spec) -> Vec<u8> {
    let mut v = serde_json::to_value(spec).expect("spec types serialize to JSON");
    // oci-spec keeps capability sets in HashSets: order them.
    if let Some(Value::Object(caps)) = v.pointer_mut("/process/capabilities") {
        for set in caps.values_mut() {
            if let Value::Array(a) = set {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    json_bytes(&v)
}

/// `runtime.json` bytes, in the same form as [`to_json_bytes`].
pub fn runtime_json_bytes(runtime: &Runtime) -> Vec<u8> {
    json_bytes(runtime)
}

#[cfg(test)]
mod tests;
