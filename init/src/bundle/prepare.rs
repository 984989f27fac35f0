//! Applying a bundle's runtime.json around its container: host directories,
//! host mounts and cgroups before it starts; interfaces and namespace bind
//! mounts once its task exists (pid known, not yet exec'd).

use std::path::{Path, PathBuf};

use osk_layout::Runtime;

use crate::net::{Links, Rtnetlink};
use crate::sys::{MntFlags, MsFlags, RealSys, Sys};

/// A bundle on the image.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub name: String,
    pub dir: PathBuf,
    pub runtime: Runtime,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: invalid runtime.json: {cause} (see osk_layout::Runtime for the fields)")]
    Runtime {
        path: PathBuf,
        cause: serde_json::Error,
    },
}

impl Bundle {
    /// Reads the bundle in `dir` (its name is the directory's name; a
    /// missing runtime.json means defaults).
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let rt_path = dir.join(osk_layout::RUNTIME_JSON);
        let runtime = match std::fs::read(&rt_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|cause| BundleError::Runtime {
                path: rt_path.clone(),
                cause,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Runtime::default(),
            Err(cause) => {
                return Err(BundleError::Read {
                    path: rt_path,
                    cause,
                })
            }
        };
        Ok(Bundle {
            name,
            dir: dir.to_path_buf(),
            runtime,
        })
    }

    /// Every bundle directly under `dir`, by name (missing dir: none).
    pub fn load_all(dir: &Path) -> Vec<Result<Bundle, BundleError>> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        dirs.iter().map(|d| Bundle::load(d)).collect()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(osk_layout::CONFIG_JSON)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(osk_layout::ROOTFS_DIR)
    }
}

/// Splits fstab-style options into mount flags, propagation flags (a
/// separate mount call) and the filesystem data string.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut prop = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "shared" => prop |= MsFlags::MS_SHARED,
            "rshared" => prop |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            "slave" => prop |= MsFlags::MS_SLAVE,
            "rslave" => prop |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "private" => prop |= MsFlags::MS_PRIVATE,
            "rprivate" => prop |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            other => data.push(other),
        }
    }
    (flags, prop, data.join(","))
}

/// A runtime.json host action that failed: names the bundle and the entry.
#[derive(Debug, thiserror::Error)]
pub enum HostActionError {
    #[error("{bundle}: mkdir {path}: {cause}")]
    Mkdir {
        bundle: String,
        path: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{bundle}: mount {source} on {target}: {cause}")]
    Mount {
        bundle: String,
        source: String,
        target: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{bundle}: remount ro {target}: {cause}")]
    RemountReadOnly {
        bundle: String,
        target: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{bundle}: propagation of {target}: {cause}")]
    Propagation {
        bundle: String,
        target: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{bundle}: cgroup {path}: {cause}")]
    Cgroup {
        bundle: String,
        path: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{bundle}: interface {name}: interface type {kind:?} is not supported (use veth)")]
    InterfaceKind {
        bundle: String,
        name: String,
        kind: String,
    },
    #[error("{bundle}: interface {name}: {cause}")]
    Interface {
        bundle: String,
        name: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{bundle}: bindNS {kind} {path}: {cause}")]
    BindTarget {
        bundle: String,
        kind: &'static str,
        path: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{bundle}: bindNS {source} on {path}: {cause}")]
    Bind {
        bundle: String,
        source: String,
        path: String,
        #[source]
        cause: std::io::Error,
    },
}

/// Host-side preparation before the container is created, on the running
/// system. See [`before_create_on`].
pub fn before_create(b: &Bundle) -> Result<(), HostActionError> {
    before_create_on(&RealSys, b)
}

/// `mkdir`, then `mounts` (each with a read-only remount for a read-only
/// bind and a propagation change when asked), then `cgroups`. Stops at the
/// first failure.
pub fn before_create_on(sys: &dyn Sys, b: &Bundle) -> Result<(), HostActionError> {
    let bundle = || b.name.clone();
    let rt = &b.runtime;
    for d in &rt.mkdir {
        sys.mkdir_p(d).map_err(|cause| HostActionError::Mkdir {
            bundle: bundle(),
            path: d.clone(),
            cause,
        })?;
    }
    for m in &rt.mounts {
        let (flags, prop, data) = parse_options(&m.options);
        let target = m.destination.as_str();
        let _ = sys.mkdir_p(target);
        let src = m.source.as_deref().unwrap_or("none");
        let data = (!data.is_empty()).then_some(data.as_str());
        sys.mount(src, target, m.kind.as_deref(), flags, data)
            .map_err(|cause| HostActionError::Mount {
                bundle: bundle(),
                source: src.into(),
                target: target.into(),
                cause,
            })?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            // A bind mount ignores MS_RDONLY until remounted.
            sys.mount("none", target, None, flags | MsFlags::MS_REMOUNT, None)
                .map_err(|cause| HostActionError::RemountReadOnly {
                    bundle: bundle(),
                    target: target.into(),
                    cause,
                })?;
        }
        if !prop.is_empty() {
            sys.mount("none", target, None, prop, None)
                .map_err(|cause| HostActionError::Propagation {
                    bundle: bundle(),
                    target: target.into(),
                    cause,
                })?;
        }
    }
    for c in &rt.cgroups {
        let p = Path::new(crate::paths::CGROUP_ROOT).join(c.trim_start_matches('/'));
        let p = p.display().to_string();
        sys.mkdir_p(&p).map_err(|cause| HostActionError::Cgroup {
            bundle: bundle(),
            path: p.clone(),
            cause,
        })?;
    }
    Ok(())
}

/// Whether [`after_create`] has work: then the task must be created and
/// started in two steps.
pub fn needs_pid(b: &Bundle) -> bool {
    let ns = &b.runtime.bind_ns;
    !b.runtime.interfaces.is_empty()
        || [
            &ns.cgroup, &ns.ipc, &ns.mnt, &ns.net, &ns.pid, &ns.user, &ns.uts,
        ]
        .iter()
        .any(|p| p.is_some())
}

/// Preparation that needs the task's pid, on the running system. See
/// [`after_create_on`].
pub fn after_create(b: &Bundle, pid: u32) -> Result<(), HostActionError> {
    after_create_on(&RealSys, &Rtnetlink, b, pid)
}

/// Interfaces into the task's network namespace, then namespace bind
/// mounts. Stops at the first failure.
pub fn after_create_on(
    sys: &dyn Sys,
    links: &dyn Links,
    b: &Bundle,
    pid: u32,
) -> Result<(), HostActionError> {
    let bundle = || b.name.clone();
    for i in &b.runtime.interfaces {
        let res = if i.add == "veth" {
            let peer = if i.peer.is_empty() {
                format!("{}p", i.name)
            } else {
                i.peer.clone()
            };
            // A previous run's pair survives while its namespace is still
            // bound (bindNS): remove it first.
            links
                .delete_link(&peer)
                .and_then(|()| links.create_veth(&i.name, &peer, pid))
        } else if i.add.is_empty() {
            links.move_link(&i.name, pid)
        } else {
            return Err(HostActionError::InterfaceKind {
                bundle: bundle(),
                name: i.name.clone(),
                kind: i.add.clone(),
            });
        };
        res.map_err(|cause| HostActionError::Interface {
            bundle: bundle(),
            name: i.name.clone(),
            cause,
        })?;
    }
    let ns = &b.runtime.bind_ns;
    for (kind, path) in [
        ("cgroup", &ns.cgroup),
        ("ipc", &ns.ipc),
        ("mnt", &ns.mnt),
        ("net", &ns.net),
        ("pid", &ns.pid),
        ("user", &ns.user),
        ("uts", &ns.uts),
    ] {
        let Some(path) = path else { continue };
        if let Some(parent) = Path::new(path).parent().and_then(Path::to_str) {
            let _ = sys.mkdir_p(parent);
        }
        // The path may still be bound to the previous run's namespace:
        // touch only creates it when missing.
        sys.touch(path)
            .map_err(|cause| HostActionError::BindTarget {
                bundle: bundle(),
                kind,
                path: path.clone(),
                cause,
            })?;
        // Drop the previous run's namespace, if it is still bound here.
        let _ = sys.umount(path, MntFlags::MNT_DETACH);
        let src = format!("/proc/{pid}/ns/{kind}");
        sys.mount(&src, path, None, MsFlags::MS_BIND, None)
            .map_err(|cause| HostActionError::Bind {
                bundle: bundle(),
                source: src.clone(),
                path: path.clone(),
                cause,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::Recorder;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let opts: Vec<String> = ["rbind", "ro", "rshared", "mode=0755", "size=1m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (f, p, d) = parse_options(&opts);
        assert_eq!(f, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(p, MsFlags::MS_SHARED | MsFlags::MS_REC);
        assert_eq!(d, "mode=0755,size=1m");
    }

    #[test]
    fn bundle_without_runtime_json_gets_defaults_and_bad_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("sshd");
        std::fs::create_dir(&b).unwrap();
        let bundle = Bundle::load(&b).unwrap();
        assert_eq!(bundle.name, "sshd");
        assert_eq!(bundle.runtime, Runtime::default());
        std::fs::write(b.join("runtime.json"), r#"{"restart":"sometimes"}"#).unwrap();
        let err = Bundle::load(&b).unwrap_err().to_string();
        assert!(err.contains("sshd/runtime.json"), "{err}");
    }

    #[test]
    fn only_interfaces_or_bind_ns_need_the_pid_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("dhcpcd");
        std::fs::create_dir(&b).unwrap();
        assert!(
            !needs_pid(&Bundle::load(&b).unwrap()),
            "defaults: one runc run"
        );
        std::fs::write(b.join("runtime.json"), r#"{"mkdir":["/run/x"]}"#).unwrap();
        assert!(
            !needs_pid(&Bundle::load(&b).unwrap()),
            "mkdir is done before create"
        );
        std::fs::write(
            b.join("runtime.json"),
            r#"{"bindNS":{"net":"/run/netns/x"}}"#,
        )
        .unwrap();
        assert!(needs_pid(&Bundle::load(&b).unwrap()));
        std::fs::write(
            b.join("runtime.json"),
            r#"{"interfaces":[{"name":"eth1"}]}"#,
        )
        .unwrap();
        assert!(needs_pid(&Bundle::load(&b).unwrap()));
    }

    #[test]
    fn before_create_makes_dirs_and_cgroup_errors_name_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let want = dir.path().join("a/b");
        let b = Bundle {
            name: "svc".into(),
            dir: dir.path().into(),
            runtime: Runtime {
                mkdir: vec![want.display().to_string()],
                ..Default::default()
            },
        };
        before_create(&b).unwrap();
        assert!(want.is_dir());
    }

    fn bundle(runtime_json: &str) -> Bundle {
        Bundle {
            name: "svc".into(),
            dir: "/containers/services/svc".into(),
            runtime: serde_json::from_str(runtime_json).unwrap(),
        }
    }

    #[test]
    fn host_actions_before_create_follow_runtime_json_in_order() {
        let b = bundle(
            r#"{"mkdir":["/run/a"],
                "mounts":[{"type":"tmpfs","source":"tmpfs","destination":"/run/t","options":["nosuid","size=1m"]},
                          {"source":"/var/data","destination":"/data","options":["rbind","ro","rshared"]}],
                "cgroups":["/osk/svc"]}"#,
        );
        let sys = Recorder::default();
        before_create_on(&sys, &b).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mkdir /run/a",
                "mkdir /run/t",
                "mount tmpfs /run/t tmpfs MS_NOSUID size=1m",
                "mkdir /data",
                "mount /var/data /data - MS_RDONLY|MS_BIND|MS_REC -",
                "mount none /data - MS_RDONLY|MS_REMOUNT|MS_BIND|MS_REC -",
                "mount none /data - MS_REC|MS_SHARED -",
                "mkdir /sys/fs/cgroup/osk/svc",
            ]
        );
    }

    #[test]
    fn a_failed_mount_names_bundle_and_target_and_stops_there() {
        let b = bundle(
            r#"{"mounts":[{"source":"/nope","destination":"/data","options":["bind"]}],
                "cgroups":["/osk/svc"]}"#,
        );
        let sys = Recorder::default();
        sys.fail("mount /nope /data", libc::ENOENT);
        let err = before_create_on(&sys, &b).unwrap_err();
        assert!(
            err.to_string().starts_with("svc: mount /nope on /data: "),
            "{err}"
        );
        assert!(sys.calls_starting("mkdir /sys/fs/cgroup").is_empty());
    }

    #[test]
    fn after_create_makes_interfaces_then_binds_namespaces() {
        let b = bundle(
            r#"{"interfaces":[{"name":"eth1","add":"veth"},{"name":"eth2"}],
                "bindNS":{"net":"/run/netns/svc"}}"#,
        );
        let sys = Recorder::default();
        after_create_on(&sys, &sys, &b, 42).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "link delete eth1p",
                "link veth eth1 eth1p 42",
                "link move eth2 42",
                "mkdir /run/netns",
                "touch /run/netns/svc",
                "umount /run/netns/svc detach",
                "mount /proc/42/ns/net /run/netns/svc - MS_BIND -",
            ]
        );
    }

    #[test]
    fn an_interface_failure_stops_before_any_namespace_is_bound() {
        let b = bundle(r#"{"interfaces":[{"name":"eth1"}],"bindNS":{"net":"/run/netns/svc"}}"#);
        let sys = Recorder::default();
        sys.fail("link move eth1", libc::ENODEV);
        let err = after_create_on(&sys, &sys, &b, 7).unwrap_err();
        assert!(
            err.to_string().starts_with("svc: interface eth1: "),
            "{err}"
        );
        assert!(sys.calls_starting("mount").is_empty(), "{:?}", sys.calls());

        let b = bundle(r#"{"interfaces":[{"name":"br0","add":"bridge"}]}"#);
        let err = after_create_on(&sys, &sys, &b, 7).unwrap_err();
        assert_eq!(
            err.to_string(),
            "svc: interface br0: interface type \"bridge\" is not supported (use veth)"
        );
    }
}
