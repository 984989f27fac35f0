//! One container's settings to its spec, in named steps: process, mounts, namespaces, linux, runtime.

use std::collections::BTreeMap;

use oci_spec::runtime::Spec;
use osk_layout::Runtime;
use serde_json::{json, Map, Value};

use super::parse::{self, parse_bind, parse_rlimit, parse_tmpfs};
use super::{ImageDefaults, SpecError, DEFAULT_PATH, OCI_VERSION};
use crate::manifest::{ContainerKind, Id, ImageConfig, ImageEntry, MountConfig};

/// Later value wins: manifest over label.
fn pick<'a, T>(entry: &'a Option<T>, label: Option<&'a Option<T>>) -> Option<&'a T> {
    entry.as_ref().or(label.and_then(|l| l.as_ref()))
}

/// The manifest entry's value of a field, else its image label's.
macro_rules! pick {
    ($c:expr, $f:ident) => {
        pick(&$c.entry.config.$f, $c.label.map(|l| &l.$f))
    };
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

/// What every step reads: the entry, its image's label and config, and which list it is in.
struct Container<'a> {
    entry: &'a ImageEntry,
    label: Option<&'a ImageConfig>,
    defaults: &'a ImageDefaults,
    kind: ContainerKind,
}

impl Container<'_> {
    fn fail(&self, msg: String) -> SpecError {
        SpecError {
            kind: self.kind,
            name: self.entry.name.clone(),
            at: if self.entry.origin.file.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.entry.origin)
            },
            msg,
        }
    }

    /// A non-empty string setting: the entry's, else the label's.
    fn string(&self, f: impl Fn(&ImageConfig) -> &Option<String>) -> Option<String> {
        nonempty(f(&self.entry.config).as_ref())
            .or_else(|| nonempty(self.label.and_then(|l| f(l).as_ref())))
            .map(str::to_owned)
    }

    fn readonly(&self) -> bool {
        pick!(self, readonly).copied().unwrap_or(false)
    }
}

/// Builds `config.json` and `runtime.json` for `entry`.
pub fn generate(
    entry: &ImageEntry,
    label: Option<&ImageConfig>,
    defaults: &ImageDefaults,
    kind: ContainerKind,
) -> Result<(Spec, Runtime), SpecError> {
    let c = Container {
        entry,
        label,
        defaults,
        kind,
    };
    let process = process(&c)?;
    let mounts = mounts(&c)?;
    let linux = linux(&c)?;
    let mut spec = json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": osk_layout::ROOTFS_DIR, "readonly": c.readonly()},
        "mounts": mounts,
        "linux": linux,
    });
    if let Some(h) = c.string(|l| &l.hostname) {
        spec["hostname"] = json!(h);
    }
    if let Some(a) = pick!(c, annotations).filter(|a| !a.is_empty()) {
        spec["annotations"] = json!(a);
    }
    let spec: Spec = serde_json::from_value(spec)
        .map_err(|e| c.fail(format!("settings do not form a valid OCI spec: {e}")))?;
    Ok((spec, runtime(&c)?))
}

/// `process`: command, environment, working directory, user, capabilities, rlimits.
fn process(c: &Container) -> Result<Value, SpecError> {
    let d = c.defaults;
    let args: Vec<String> = match pick!(c, command) {
        Some(cmd) => cmd.clone(),
        None => d.entrypoint.iter().chain(&d.cmd).cloned().collect(),
    };
    if args.is_empty() {
        return Err(
            c.fail("no command: set `command`, or use an image with an Entrypoint or Cmd".into())
        );
    }
    let mut env = pick!(c, env).cloned().unwrap_or_else(|| d.env.clone());
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    let cwd = nonempty(c.entry.config.cwd.as_ref())
        .or_else(|| nonempty(c.label.and_then(|l| l.cwd.as_ref())))
        .or_else(|| nonempty(d.working_dir.as_ref()))
        .unwrap_or("/");

    let (image_uid, image_gid) = parse::image_user(d.user.as_deref());
    let id = |v: &Id| parse::numeric_id(v, &d.id_map).map_err(|e| c.fail(e.to_string()));
    let uid = match pick!(c, uid) {
        Some(v) => id(v)?,
        None => image_uid.unwrap_or(0),
    };
    let gid = match pick!(c, gid) {
        Some(v) => id(v)?,
        None => image_gid.unwrap_or(0),
    };
    let additional_gids = pick!(c, additional_gids)
        .map(|v| v.iter().map(id).collect::<Result<Vec<_>, _>>())
        .transpose()?
        .unwrap_or_default();

    let m = &c.entry.config;
    let caps = with_adds(
        &m.capabilities,
        &m.capabilities_add,
        c.label.map(|l| (&l.capabilities, &l.capabilities_add)),
    );
    let caps = parse::capabilities(&caps).map_err(|e| c.fail(e.to_string()))?;
    let ambient = parse::capabilities(pick!(c, ambient).map(Vec::as_slice).unwrap_or(&[]))
        .map_err(|e| c.fail(e.to_string()))?;
    let mut bounding: Vec<String> = caps.iter().chain(&ambient).cloned().collect();
    bounding.sort();
    bounding.dedup();

    let rlimits = pick!(c, rlimits)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|s| parse_rlimit(s).map_err(|e| c.fail(e.to_string())))
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
        "noNewPrivileges": pick!(c, no_new_privileges).copied().unwrap_or(false),
    });
    if !rlimits.is_empty() {
        process["rlimits"] = json!(rlimits
            .iter()
            .map(|r| json!({"type": r.kind, "soft": r.soft, "hard": r.hard}))
            .collect::<Vec<_>>());
    }
    if let Some(adj) = pick!(c, oom_score_adj) {
        process["oomScoreAdj"] = json!(adj);
    }
    Ok(process)
}

/// `mounts`: defaults, then tmpfs, binds and mounts; a later one replaces an
/// earlier one at the same destination. Sorted by destination so `/dev`
/// comes before `/dev/pts`.
fn mounts(c: &Container) -> Result<Vec<Value>, SpecError> {
    let readonly = c.readonly();
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
    for t in pick!(c, tmpfs).map(Vec::as_slice).unwrap_or(&[]) {
        let (dest, opts) = parse_tmpfs(t).map_err(|e| c.fail(e.to_string()))?;
        put(&dest, "tmpfs", "tmpfs", opts);
    }
    let m = &c.entry.config;
    let binds = with_adds(
        &m.binds,
        &m.binds_add,
        c.label.map(|l| (&l.binds, &l.binds_add)),
    );
    let volumes = &c.defaults.volumes;
    for b in &binds {
        let bind = parse_bind(b).map_err(|e| c.fail(e.to_string()))?;
        let source = parse::volume_source(&bind.source, &bind.options, volumes)
            .map_err(|e| c.fail(format!("bind `{b}`: {e}")))?;
        put(&bind.destination, "bind", &source, bind.options);
    }
    for mc in pick!(c, mounts).map(Vec::as_slice).unwrap_or(&[]) {
        let mount = parse::mount(mc).map_err(|e| c.fail(e.to_string()))?;
        let source = if mount.kind == "bind" {
            parse::volume_source(&mount.source, &mount.options, volumes)
                .map_err(|e| c.fail(format!("mount at `{}`: {e}", mount.destination)))?
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
    Ok(mounts.into_values().collect())
}

/// `linux.namespaces`: host net/ipc/uts/user unless asked, new pid and mount.
fn namespaces(c: &Container) -> Result<Vec<Value>, SpecError> {
    let mut namespaces = Vec::new();
    for (typ, key, value, default) in [
        ("network", "net", c.string(|l| &l.net), "root"),
        ("ipc", "ipc", c.string(|l| &l.ipc), "root"),
        ("uts", "uts", c.string(|l| &l.uts), "root"),
        ("pid", "pid", c.string(|l| &l.pid), "new"),
        ("user", "userns", c.string(|l| &l.userns), "root"),
    ] {
        if let Some(ns) = parse::namespace(typ, key, value.as_deref().unwrap_or(default))
            .map_err(|e| c.fail(e.to_string()))?
        {
            namespaces.push(ns);
        }
    }
    namespaces.push(json!({"type": "mount"}));
    Ok(namespaces)
}

/// `linux.resources` and `linux.devices`: device nodes plus their device-cgroup rules.
fn resources_and_devices(c: &Container) -> Result<(Value, Vec<Value>), SpecError> {
    let mut resources = match pick!(c, resources) {
        Some(r) => serde_json::to_value(r).expect("resources serialize"),
        None => json!({}),
    };
    let mut devices = Vec::new();
    let mut rules: Vec<Value> = Vec::new();
    for d in pick!(c, devices).map(Vec::as_slice).unwrap_or(&[]) {
        if !matches!(d.kind.as_str(), "a" | "b" | "c" | "u" | "p") {
            return Err(c.fail(format!(
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
                c.fail(format!(
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
    Ok((resources, devices))
}

/// `linux`: namespaces, resources, devices and the settings passed through; empty ones left out.
fn linux(c: &Container) -> Result<Map<String, Value>, SpecError> {
    let namespaces = namespaces(c)?;
    let (resources, devices) = resources_and_devices(c)?;
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
    set("uidMappings", json!(pick!(c, uid_mappings)));
    set("gidMappings", json!(pick!(c, gid_mappings)));
    set("sysctl", json!(pick!(c, sysctl)));
    set("cgroupsPath", json!(pick!(c, cgroups_path)));
    set("rootfsPropagation", json!(pick!(c, rootfs_propagation)));
    set("maskedPaths", json!(pick!(c, masked_paths)));
    set("readonlyPaths", json!(pick!(c, readonly_paths)));
    Ok(linux)
}

/// `runtime.json`: osk-init's host-side actions and the supervision settings.
fn runtime(c: &Container) -> Result<Runtime, SpecError> {
    let m = c.entry.config.runtime.as_ref();
    let l = c.label.and_then(|l| l.runtime.as_ref());
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
        rt.mounts.push(
            runtime_mount(mc)
                .ok_or_else(|| c.fail("runtime mount needs a `destination`".into()))?,
        );
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
    let entry = c.entry;
    if c.kind == ContainerKind::Service {
        rt.restart = entry.restart;
        rt.depends_on = entry.depends_on.clone();
        rt.stop_grace_period = entry.stop_grace_period;
    } else {
        rt.timeout = entry.timeout;
    }
    Ok(rt)
}

/// A runtime mount, or None when it has no destination.
fn runtime_mount(mc: &MountConfig) -> Option<osk_layout::Mount> {
    let destination = mc.destination.clone().filter(|d| !d.is_empty())?;
    Some(osk_layout::Mount {
        destination,
        kind: mc.kind.clone(),
        source: mc.source.clone(),
        options: mc.options.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::manifest;

    fn entry(yaml: &str) -> ImageEntry {
        let m = manifest::from_str(yaml, "t.yml", Path::new("/")).unwrap();
        m.services.into_iter().chain(m.onboot).next().unwrap()
    }

    fn with<T>(
        yaml: &str,
        label: Option<&str>,
        kind: ContainerKind,
        f: impl FnOnce(&Container) -> T,
    ) -> T {
        let e = entry(yaml);
        let l = label.map(|j| ImageConfig::from_label(j, "img").unwrap());
        let d = ImageDefaults::default();
        f(&Container {
            entry: &e,
            label: l.as_ref(),
            defaults: &d,
            kind,
        })
    }

    const SVC: &str = "services:\n  - name: a\n    image: x\n";

    #[test]
    fn process_without_any_command_fails_naming_the_service() {
        let err = with(SVC, None, ContainerKind::Service, process).unwrap_err();
        assert_eq!(err.name, "a");
        assert!(err.msg.starts_with("no command"), "{}", err.msg);
        assert!(err.at.contains("t.yml"), "{}", err.at);
    }

    #[test]
    fn process_adds_a_path_and_ambient_caps_to_bounding() {
        let p = with(
            "services:\n  - name: a\n    image: x\n    command: [/x]\n    env: [A=1]\n    ambient: [CAP_NET_RAW]\n    capabilities: [CAP_CHOWN]\n",
            None,
            ContainerKind::Service,
            process,
        )
        .unwrap();
        assert_eq!(p["env"], json!(["A=1", DEFAULT_PATH]));
        assert_eq!(
            p["capabilities"]["bounding"],
            json!(["CAP_CHOWN", "CAP_NET_RAW"])
        );
        assert_eq!(p["capabilities"]["effective"], json!(["CAP_CHOWN"]));
    }

    #[test]
    fn mounts_readonly_marks_dev_and_sys_and_sorts_by_destination() {
        let m = with(
            "services:\n  - name: a\n    image: x\n    readonly: true\n    tmpfs: [/dev/shm]\n",
            None,
            ContainerKind::Service,
            mounts,
        )
        .unwrap();
        let dests: Vec<&str> = m
            .iter()
            .map(|v| v["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/proc",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(m[0]["options"].as_array().unwrap().last().unwrap(), "ro");
        assert_eq!(m[4]["options"].as_array().unwrap().last().unwrap(), "ro");
        assert_ne!(m[3]["options"].as_array().unwrap().last().unwrap(), "ro");
    }

    #[test]
    fn namespaces_default_to_host_but_a_new_pid_and_mount() {
        let ns = with(SVC, None, ContainerKind::Service, namespaces).unwrap();
        assert_eq!(ns, [json!({"type": "pid"}), json!({"type": "mount"})]);
    }

    #[test]
    fn namespaces_take_the_label_when_the_entry_says_nothing() {
        let ns = with(
            SVC,
            Some(r#"{"net": "new", "uts": "new"}"#),
            ContainerKind::Service,
            namespaces,
        )
        .unwrap();
        let types: Vec<&str> = ns.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["network", "uts", "pid", "mount"]);
    }

    #[test]
    fn devices_become_nodes_and_cgroup_rules() {
        let (res, devs) = with(
            "services:\n  - name: a\n    image: x\n    devices:\n      - {path: all, type: c}\n      - {path: /dev/kmsg, type: c, major: 1, minor: 11, mode: \"0644\"}\n",
            None,
            ContainerKind::Service,
            resources_and_devices,
        )
        .unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0]["fileMode"], json!(0o644));
        assert_eq!(res["devices"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_device_with_a_bad_type_is_refused() {
        let err = with(
            "services:\n  - name: a\n    image: x\n    devices:\n      - {path: /dev/x, type: z, major: 1, minor: 1}\n",
            None,
            ContainerKind::Service,
            resources_and_devices,
        )
        .unwrap_err();
        assert!(err.msg.contains("type `z`"), "{}", err.msg);
    }

    #[test]
    fn linux_leaves_out_empty_settings() {
        let l = with(SVC, None, ContainerKind::Service, linux).unwrap();
        assert_eq!(l.keys().collect::<Vec<_>>(), ["namespaces"]);
    }

    #[test]
    fn runtime_keeps_supervision_for_services_and_timeout_for_onboot() {
        let svc = with(
            "services:\n  - name: a\n    image: x\n    restart: always\n",
            None,
            ContainerKind::Service,
            runtime,
        )
        .unwrap();
        assert_eq!(svc.timeout, None);
        assert_ne!(svc.restart, Runtime::default().restart);
        let onboot = with(
            "onboot:\n  - name: a\n    image: x\n    timeout: 5\n",
            None,
            ContainerKind::Onboot,
            runtime,
        )
        .unwrap();
        assert_eq!(onboot.timeout, Some(5));
        assert_eq!(onboot.restart, Runtime::default().restart);
    }

    #[test]
    fn a_runtime_mount_without_destination_is_refused() {
        let err = with(
            SVC,
            Some(r#"{"runtime": {"mounts": [{"type": "bind", "source": "/x"}]}}"#),
            ContainerKind::Service,
            runtime,
        )
        .unwrap_err();
        assert!(err.msg.contains("destination"), "{}", err.msg);
    }
}
