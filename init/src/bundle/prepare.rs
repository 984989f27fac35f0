//! Applying a bundle's runtime.json around its container: host directories,
//! host mounts and cgroups before it starts; interfaces and namespace bind
//! mounts once its task exists (pid known, not yet exec'd).

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use osk_layout::Runtime;

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

fn io_ctx(what: String) -> impl FnOnce(nix::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Host-side preparation before the container is created. Errors name the
/// bundle and the failing entry.
pub fn before_create(b: &Bundle) -> Result<(), String> {
    let rt = &b.runtime;
    for d in &rt.mkdir {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: mkdir {d}: {e}", b.name))?;
    }
    for m in &rt.mounts {
        let (flags, prop, data) = parse_options(&m.options);
        let _ = std::fs::create_dir_all(&m.destination);
        let src = m.source.as_deref().unwrap_or("none");
        let data = (!data.is_empty()).then_some(data.as_str());
        nix::mount::mount(
            Some(src),
            m.destination.as_str(),
            m.kind.as_deref(),
            flags,
            data,
        )
        .map_err(io_ctx(format!(
            "{}: mount {src} on {}",
            b.name, m.destination
        )))?;
        if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
            // A bind mount ignores MS_RDONLY until remounted.
            nix::mount::mount(
                None::<&str>,
                m.destination.as_str(),
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(io_ctx(format!("{}: remount ro {}", b.name, m.destination)))?;
        }
        if !prop.is_empty() {
            nix::mount::mount(
                None::<&str>,
                m.destination.as_str(),
                None::<&str>,
                prop,
                None::<&str>,
            )
            .map_err(io_ctx(format!(
                "{}: propagation of {}",
                b.name, m.destination
            )))?;
        }
    }
    for c in &rt.cgroups {
        let p = Path::new("/sys/fs/cgroup").join(c.trim_start_matches('/'));
        std::fs::create_dir_all(&p)
            .map_err(|e| format!("{}: cgroup {}: {e}", b.name, p.display()))?;
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

/// Preparation that needs the task's pid: interfaces into its network
/// namespace, then namespace bind mounts.
pub fn after_create(b: &Bundle, pid: u32) -> Result<(), String> {
    for i in &b.runtime.interfaces {
        let res = if i.add == "veth" {
            let peer = if i.peer.is_empty() {
                format!("{}p", i.name)
            } else {
                i.peer.clone()
            };
            // A previous run's pair survives while its namespace is still
            // bound (bindNS): remove it first.
            crate::net::delete_link(&peer)
                .and_then(|()| crate::net::create_veth(&i.name, &peer, pid))
        } else if i.add.is_empty() {
            crate::net::move_link(&i.name, pid)
        } else {
            Err(std::io::Error::other(format!(
                "interface type {:?} is not supported (use veth)",
                i.add
            )))
        };
        res.map_err(|e| format!("{}: interface {}: {e}", b.name, i.name))?;
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
        if let Some(parent) = Path::new(path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        // The path may still be bound to the previous run's namespace
        // (opening that for writing fails): only create it when missing.
        if !Path::new(path).exists() {
            std::fs::File::create(path)
                .map_err(|e| format!("{}: bindNS {kind} {path}: {e}", b.name))?;
        }
        // Drop the previous run's namespace, if it is still bound here.
        let _ = nix::mount::umount2(path.as_str(), nix::mount::MntFlags::MNT_DETACH);
        let src = format!("/proc/{pid}/ns/{kind}");
        nix::mount::mount(
            Some(src.as_str()),
            path.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io_ctx(format!("{}: bindNS {src} on {path}", b.name)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
