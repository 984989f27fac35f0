//! The early mounts every osk machine gets, as data, applied through [`Sys`].

use std::io;

use nix::mount::MsFlags;

use crate::sys::Sys;

/// One filesystem to mount at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

const fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> MountSpec {
    MountSpec {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

/// The early mounts, parents before children.
pub fn plan() -> Vec<MountSpec> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID
        .union(MsFlags::MS_NODEV)
        .union(MsFlags::MS_NOEXEC);
    let nosuid_noexec = MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC);
    let nosuid_nodev = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
    vec![
        m("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        m("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        m(
            "dev",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid_noexec,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        m("shm", "/dev/shm", "tmpfs", nosuid_nodev, Some("mode=1777")),
        m("mqueue", "/dev/mqueue", "mqueue", nosuid_nodev_noexec, None),
        m(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            Some("nsdelegate"),
        ),
        m(
            "securityfs",
            "/sys/kernel/security",
            "securityfs",
            nosuid_nodev_noexec,
            None,
        ),
        m(
            "bpf",
            "/sys/fs/bpf",
            "bpf",
            nosuid_nodev_noexec,
            Some("mode=0700"),
        ),
        m("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755")),
        m("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777")),
        m("tmpfs", "/var", "tmpfs", nosuid_nodev, Some("mode=0755")),
    ]
}

/// Directories created on the fresh tmpfs mounts.
pub const DIRS: &[&str] = &[
    "/run/osk",
    "/run/containerd",
    "/var/lib/containerd",
    "/var/log/onboot",
    "/var/log/onshutdown",
    "/var/run",
    "/tmp",
];

/// Applies [`plan`]: skips targets already mounted, logs and skips failures
/// (a missing securityfs must not stop the boot), then makes `/` rshared so
/// containers' mount propagation works. Returns the targets that failed.
pub fn mount_all(sys: &dyn Sys) -> Vec<(String, io::Error)> {
    let mut failed = Vec::new();
    for spec in plan() {
        if sys.is_mountpoint(spec.target) {
            continue;
        }
        let res = sys.mkdir_p(spec.target).and_then(|()| {
            sys.mount(
                spec.source,
                spec.target,
                Some(spec.fstype),
                spec.flags,
                spec.data,
            )
        });
        if let Err(e) = res {
            failed.push((spec.target.to_string(), e));
        }
    }
    if let Err(e) = sys.mount(
        "none",
        "/",
        None,
        MsFlags::MS_REC | MsFlags::MS_SHARED,
        None,
    ) {
        failed.push(("/ (rshared)".into(), e));
    }
    for d in DIRS {
        if let Err(e) = sys.mkdir_p(d) {
            failed.push((d.to_string(), e));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::Recorder;

    #[test]
    fn parents_are_mounted_before_children() {
        let p = plan();
        for (i, spec) in p.iter().enumerate() {
            for earlier_child in &p[..i] {
                assert!(
                    !earlier_child
                        .target
                        .starts_with(&format!("{}/", spec.target)),
                    "{} mounted before its parent {}",
                    earlier_child.target,
                    spec.target
                );
            }
        }
    }

    #[test]
    fn skips_mounted_targets_and_ends_with_rshared_root() {
        let sys = Recorder::default();
        sys.mounted.borrow_mut().insert("/dev".into());
        assert!(mount_all(&sys).is_empty());
        let calls = sys.calls();
        let mounts: Vec<&String> = calls.iter().filter(|c| c.starts_with("mount")).collect();
        assert!(mounts.iter().all(|c| !c.contains(" /dev devtmpfs")));
        assert!(mounts
            .iter()
            .any(|c| c.starts_with("mount cgroup2 /sys/fs/cgroup cgroup2")));
        let last = mounts.last().unwrap();
        assert_eq!(
            **last,
            format!(
                "mount none / - {:#x}",
                (MsFlags::MS_REC | MsFlags::MS_SHARED).bits()
            )
        );
        // /var/log/onboot is created after /var is mounted.
        let var = calls
            .iter()
            .position(|c| c.contains(" /var tmpfs"))
            .unwrap();
        let log = calls
            .iter()
            .position(|c| c == "mkdir /var/log/onboot")
            .unwrap();
        assert!(var < log);
    }
}
