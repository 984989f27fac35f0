//! OCI runtime specs (`config.json`) and `runtime.json` for one container,
//! with LinuxKit's defaults and precedence: the manifest entry wins over the
//! image's `org.mobyproject.config` label, the label over the image config
//! (command, env, working dir, user), that over built-in defaults.
//!
//! Differences from LinuxKit, on purpose: `binds.add` and
//! `capabilities.add` always append (LinuxKit drops them when the manifest
//! also sets `binds`/`capabilities`), a missing `PATH` gets the usual
//! default, and a numeric image `User` is honoured.

mod parse;

use std::collections::BTreeMap;

use oci_spec::runtime::Spec;
use osk_layout::Runtime;
use serde_json::{json, Map, Value};

use crate::manifest::{ContainerKind, Id, ImageConfig, ImageEntry, Manifest, MountConfig};

pub use parse::{parse_bind, parse_rlimit, parse_tmpfs, Bind, Rlimit};

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

/// Later value wins: manifest over label.
fn pick<'a, T>(entry: &'a Option<T>, label: Option<&'a Option<T>>) -> Option<&'a T> {
    entry.as_ref().or(label.and_then(|l| l.as_ref()))
}

/// A label's list and its `.add` companion.
type ListWithAdds<'a> = (&'a Option<Vec<String>>, &'a Option<Vec<String>>);

/// A list with an `.add` companion: each level's `.add` appends to that
/// level's list, the manifest's list replaces the label's, and the
/// manifest's `.add` appends to whatever results. Repeats are dropped.
fn with_adds(
    entry: &Option<Vec<String>>,
    entry_add: &Option<Vec<String>>,
    label: Option<ListWithAdds<'_>>,
) -> Vec<String> {
    let label_list = label.and_then(|(l, la)| {
        if l.is_none() && la.is_none() {
            return None;
        }
        let mut v = l.clone().unwrap_or_default();
        v.extend(la.iter().flatten().cloned());
        Some(v)
    });
    let mut out = entry.clone().or(label_list).unwrap_or_default();
    out.extend(entry_add.iter().flatten().cloned());
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|x| seen.insert(x.clone()));
    out
}

fn nonempty(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

/// Builds `config.json` and `runtime.json` for `entry`.
pub fn generate(
    entry: &ImageEntry,
    label: Option<&ImageConfig>,
    defaults: &ImageDefaults,
    kind: ContainerKind,
) -> Result<(Spec, Runtime), SpecError> {
    let fail = |msg: String| SpecError {
        kind,
        name: entry.name.clone(),
        at: if entry.origin.file.is_empty() {
            String::new()
        } else {
            format!(" ({})", entry.origin)
        },
        msg,
    };
    let m = &entry.config;
    macro_rules! pick {
        ($f:ident) => {
            pick(&m.$f, label.map(|l| &l.$f))
        };
    }

    // Process.
    let args: Vec<String> = match pick!(command) {
        Some(c) => c.clone(),
        None => defaults
            .entrypoint
            .iter()
            .chain(&defaults.cmd)
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(fail(
            "no command: set `command`, or use an image with an Entrypoint or Cmd".into(),
        ));
    }
    let mut env = pick!(env).cloned().unwrap_or_else(|| defaults.env.clone());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    let cwd = nonempty(m.cwd.as_ref())
        .or_else(|| nonempty(label.and_then(|l| l.cwd.as_ref())))
        .or_else(|| nonempty(defaults.working_dir.as_ref()))
        .unwrap_or("/");
    let readonly = pick!(readonly).copied().unwrap_or(false);

    let (image_uid, image_gid) = parse::image_user(defaults.user.as_deref());
    let id = |v: &Id| parse::numeric_id(v, &defaults.id_map).map_err(&fail);
    let uid = match pick!(uid) {
        Some(v) => id(v)?,
        None => image_uid.unwrap_or(0),
    };
    let gid = match pick!(gid) {
        Some(v) => id(v)?,
        None => image_gid.unwrap_or(0),
    };
    let additional_gids = pick!(additional_gids)
        .map(|v| v.iter().map(id).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();

    let caps = with_adds(
        &m.capabilities,
        &m.capabilities_add,
        label.map(|l| (&l.capabilities, &l.capabilities_add)),
    );
    let caps = parse::capabilities(&caps).map_err(&fail)?;
    let ambient =
        parse::capabilities(pick!(ambient).map(Vec::as_slice).unwrap_or(&[])).map_err(&fail)?;
    let mut bounding: Vec<String> = caps.iter().chain(&ambient).cloned().collect();
    bounding.sort();
    bounding.dedup();

    let rlimits = pick!(rlimits)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|s| parse_rlimit(s).map_err(&fail))
        .collect::<Result<Vec<_>, _>>()?;

    let mut user = json!({"uid": uid, "gid": gid});
    if !additional_gids.is_empty() {
        user["additionalGids"] = json!(additional_gids);
    }
    let mut process = json!({
        "terminal": false,
        "user": user,
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": bounding,
            "effective": caps,
            "inheritable": bounding,
            "permitted": bounding,
            "ambient": ambient,
        },
        "noNewPrivileges": pick!(no_new_privileges).copied().unwrap_or(false),
    });
    if !rlimits.is_empty() {
        process["rlimits"] = json!(rlimits
            .iter()
            .map(|r| json!({"type": r.kind, "soft": r.soft, "hard": r.hard}))
            .collect::<Vec<_>>());
    }
    if let Some(adj) = pick!(oom_score_adj) {
        process["oomScoreAdj"] = json!(adj);
    }

    // Mounts: defaults, then tmpfs, binds and mounts; a later one replaces
    // an earlier one at the same destination. Sorted by destination so
    // `/dev` comes before `/dev/pts`.
    let mut mounts: BTreeMap<String, Value> = BTreeMap::new();
    let mut put = |dest: &str, kind: &str, source: &str, options: Vec<String>| {
        let mut mount = json!({"destination": dest, "type": kind, "source": source});
        if !options.is_empty() {
            mount["options"] = json!(options);
        }
        mounts.insert(dest.to_owned(), mount);
    };
    let ro = |mut v: Vec<String>| {
        if readonly {
            v.push("ro".into());
        }
        v
    };
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    put(
        "/proc",
        "proc",
        "proc",
        strs(&["nosuid", "nodev", "noexec", "relatime"]),
    );
    put(
        "/dev",
        "tmpfs",
        "tmpfs",
        ro(strs(&["nosuid", "strictatime", "mode=755", "size=65536k"])),
    );
    put(
        "/dev/pts",
        "devpts",
        "devpts",
        strs(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ]),
    );
    put(
        "/sys",
        "sysfs",
        "sysfs",
        ro(strs(&["nosuid", "noexec", "nodev"])),
    );
    put(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        strs(&["nosuid", "noexec", "nodev", "relatime", "ro"]),
    );
    for t in pick!(tmpfs).map(Vec::as_slice).unwrap_or(&[]) {
        let (dest, opts) = parse_tmpfs(t).map_err(&fail)?;
        put(&dest, "tmpfs", "tmpfs", opts);
    }
    let binds = with_adds(
        &m.binds,
        &m.binds_add,
        label.map(|l| (&l.binds, &l.binds_add)),
    );
    for b in &binds {
        let bind = parse_bind(b).map_err(&fail)?;
        let source = parse::volume_source(&bind.source, &bind.options, &defaults.volumes)
            .map_err(|e| fail(format!("bind `{b}`: {e}")))?;
        put(&bind.destination, "bind", &source, bind.options);
    }
    for mc in pick!(mounts).map(Vec::as_slice).unwrap_or(&[]) {
        let mount = parse::mount(mc).map_err(&fail)?;
        let source = if mount.kind == "bind" {
            parse::volume_source(&mount.source, &mount.options, &defaults.volumes)
                .map_err(|e| fail(format!("mount at `{}`: {e}", mount.destination)))?
        } else {
            mount.source.clone()
        };
        let mut v = json!({"destination": mount.destination, "type": mount.kind, "source": source});
        if !mount.options.is_empty() {
            v["options"] = json!(mount.options);
        }
        if let Some(u) = &mc.uid_mappings {
            v["uidMappings"] = json!(u);
        }
        if let Some(g) = &mc.gid_mappings {
            v["gidMappings"] = json!(g);
        }
        mounts.insert(mount.destination.clone(), v);
    }

    // Namespaces: host net/ipc/uts/user unless asked, new pid and mount.
    let s = |f: &Option<String>, l: Option<&Option<String>>| {
        nonempty(f.as_ref())
            .or_else(|| nonempty(l.and_then(Option::as_ref)))
            .map(str::to_owned)
    };
    let mut namespaces = Vec::new();
    for (typ, key, value, default) in [
        ("network", "net", s(&m.net, label.map(|l| &l.net)), "root"),
        ("ipc", "ipc", s(&m.ipc, label.map(|l| &l.ipc)), "root"),
        ("uts", "uts", s(&m.uts, label.map(|l| &l.uts)), "root"),
        ("pid", "pid", s(&m.pid, label.map(|l| &l.pid)), "new"),
        (
            "user",
            "userns",
            s(&m.userns, label.map(|l| &l.userns)),
            "root",
        ),
    ] {
        if let Some(ns) =
            parse::namespace(typ, key, value.as_deref().unwrap_or(default)).map_err(&fail)?
        {
            namespaces.push(ns);
        }
    }
    namespaces.push(json!({"type": "mount"}));

    // Devices: nodes plus their device-cgroup rules.
    let mut resources = match pick!(resources) {
        Some(r) => serde_json::to_value(r).expect("resources serialize"),
        None => json!({}),
    };
    let mut devices = Vec::new();
    let mut rules: Vec<Value> = Vec::new();
    for d in pick!(devices).map(Vec::as_slice).unwrap_or(&[]) {
        if !matches!(d.kind.as_str(), "a" | "b" | "c" | "u" | "p") {
            return Err(fail(format!(
                "device `{}`: type `{}` must be one of a, b, c, u, p",
                d.path, d.kind
            )));
        }
        if d.path == "all" {
            rules.push(json!({"allow": true, "type": d.kind, "access": "rwm"}));
            continue;
        }
        let mut dev = json!({"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor});
        if let Some(mode) = &d.mode {
            let bits = u32::from_str_radix(mode, 8).map_err(|_| {
                fail(format!(
                    "device `{}`: mode `{mode}` is not octal like \"0666\"",
                    d.path
                ))
            })?;
            dev["fileMode"] = json!(bits);
        }
        devices.push(dev);
        rules.push(json!({"allow": true, "type": d.kind, "major": d.major, "minor": d.minor, "access": "rwm"}));
    }
    if !rules.is_empty() {
        let list = resources["devices"].as_array().cloned().unwrap_or_default();
        resources["devices"] = Value::Array(list.into_iter().chain(rules).collect());
    }

    let mut linux = Map::new();
    linux.insert("namespaces".into(), json!(namespaces));
    let mut set = |key: &str, v: Value| {
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            linux.insert(key.into(), v);
        }
    };
    set("resources", resources);
    set("devices", json!(devices));
    set("uidMappings", json!(pick!(uid_mappings)));
    set("gidMappings", json!(pick!(gid_mappings)));
    set("sysctl", json!(pick!(sysctl)));
    set("cgroupsPath", json!(pick!(cgroups_path)));
    set("rootfsPropagation", json!(pick!(rootfs_propagation)));
    set("maskedPaths", json!(pick!(masked_paths)));
    set("readonlyPaths", json!(pick!(readonly_paths)));

    let mut spec = json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": osk_layout::ROOTFS_DIR, "readonly": readonly},
        "mounts": mounts.into_values().collect::<Vec<_>>(),
        "linux": linux,
    });
    if let Some(h) = s(&m.hostname, label.map(|l| &l.hostname)) {
        spec["hostname"] = json!(h);
    }
    if let Some(a) = pick!(annotations).filter(|a| !a.is_empty()) {
        spec["annotations"] = json!(a);
    }
    let spec: Spec = serde_json::from_value(spec)
        .map_err(|e| fail(format!("settings do not form a valid OCI spec: {e}")))?;

    let runtime = runtime(entry, label, kind).map_err(&fail)?;
    Ok((spec, runtime))
}

fn runtime(
    entry: &ImageEntry,
    label: Option<&ImageConfig>,
    kind: ContainerKind,
) -> Result<Runtime, String> {
    let m = entry.config.runtime.as_ref();
    let l = label.and_then(|l| l.runtime.as_ref());
    macro_rules! pick {
        ($f:ident) => {
            m.and_then(|m| m.$f.as_ref())
                .or(l.and_then(|l| l.$f.as_ref()))
        };
    }
    let mut rt = Runtime {
        mkdir: pick!(mkdir).cloned().unwrap_or_default(),
        cgroups: pick!(cgroups).cloned().unwrap_or_default(),
        interfaces: pick!(interfaces).cloned().unwrap_or_default(),
        namespace: pick!(namespace).filter(|s| !s.is_empty()).cloned(),
        ..Runtime::default()
    };
    for mc in pick!(mounts).map(Vec::as_slice).unwrap_or(&[]) {
        rt.mounts.push(runtime_mount(mc)?);
    }
    let (mb, lb) = (
        m.and_then(|m| m.bind_ns.as_ref()),
        l.and_then(|l| l.bind_ns.as_ref()),
    );
    macro_rules! ns {
        ($f:ident) => {
            mb.and_then(|b| b.$f.clone())
                .or_else(|| lb.and_then(|b| b.$f.clone()))
                .filter(|s| !s.is_empty())
        };
    }
    rt.bind_ns = osk_layout::BindNs {
        cgroup: ns!(cgroup),
        ipc: ns!(ipc),
        mnt: ns!(mnt),
        net: ns!(net),
        pid: ns!(pid),
        user: ns!(user),
        uts: ns!(uts),
    };
    if kind == ContainerKind::Service {
        rt.restart = entry.restart;
        rt.depends_on = entry.depends_on.clone();
        rt.stop_grace_period = entry.stop_grace_period;
    } else {
        rt.timeout = entry.timeout;
    }
    Ok(rt)
}

fn runtime_mount(mc: &MountConfig) -> Result<osk_layout::Mount, String> {
    let destination = mc
        .destination
        .clone()
        .filter(|d| !d.is_empty())
        .ok_or("runtime mount needs a `destination`")?;
    Ok(osk_layout::Mount {
        destination,
        kind: mc.kind.clone(),
        source: mc.source.clone(),
        options: mc.options.clone().unwrap_or_default(),
    })
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
