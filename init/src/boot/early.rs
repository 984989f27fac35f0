//! The early setup every osk machine gets: PID 1's process settings and
//! the early mounts, as data, applied through [`Sys`].

use std::io;

use crate::paths;
use crate::sys::{MsFlags, Sys};

/// Open files PID 1 and what it starts may hold (containerd and its shims
/// hold many).
pub const NOFILE: u64 = 1 << 20;

/// One early step that failed; the boot goes on without it.
#[derive(Debug, thiserror::Error)]
pub enum EarlyError {
    #[error("becoming the child subreaper: {0}")]
    Subreaper(#[source] io::Error),
    #[error("routing Ctrl-Alt-Del to init: {0}")]
    CtrlAltDel(#[source] io::Error),
    #[error("mounting {target}: {cause}")]
    Mount {
        target: String,
        #[source]
        cause: io::Error,
    },
    #[error("raising RLIMIT_NOFILE to {limit}: {cause}")]
    NoFile {
        limit: u64,
        #[source]
        cause: io::Error,
    },
}

/// `/proc` and `/dev` before anything else: the command line (in /proc)
/// says where the consoles (in /dev) are. Failures are silent: there is no
/// console to report them on yet, and the full plan retries both.
pub fn first_mounts(sys: &dyn Sys) {
    for (src, target, fstype) in [("proc", "/proc", "proc"), ("dev", "/dev", "devtmpfs")] {
        if !sys.is_mountpoint(target) {
            let _ = sys.mkdir_p(target);
            let _ = sys.mount(src, target, Some(fstype), MsFlags::MS_NOSUID, None);
        }
    }
}

/// PID 1's settings and the early mounts, in order: subreaper (orphans of
/// services are reaped here), Ctrl-Alt-Del to SIGINT, [`mount_all`], the
/// open-file limit. Every step is tried; the failed ones are returned.
pub fn setup(sys: &dyn Sys) -> Vec<EarlyError> {
    let mut failed = Vec::new();
    if let Err(e) = sys.set_child_subreaper() {
        failed.push(EarlyError::Subreaper(e));
    }
    if let Err(e) = sys.disable_cad() {
        failed.push(EarlyError::CtrlAltDel(e));
    }
    for (target, cause) in mount_all(sys) {
        failed.push(EarlyError::Mount { target, cause });
    }
    if let Err(cause) = sys.set_nofile_limit(NOFILE) {
        failed.push(EarlyError::NoFile {
            limit: NOFILE,
            cause,
        });
    }
    failed
}

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
            paths::CGROUP_ROOT,
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
    paths::RUN_OSK,
    paths::CONTAINERD_STATE,
    paths::CONTAINERD_ROOT,
    paths::ONBOOT_LOG_DIR,
    paths::ONSHUTDOWN_LOG_DIR,
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
        sys.set_mounted("/dev");
        assert!(mount_all(&sys).is_empty());
        let calls = sys.calls();
        let mounts = sys.calls_starting("mount ");
        assert!(mounts.iter().all(|c| !c.contains(" /dev devtmpfs")));
        assert!(mounts.contains(
            &"mount cgroup2 /sys/fs/cgroup cgroup2 MS_NOSUID|MS_NODEV|MS_NOEXEC nsdelegate".into()
        ));
        assert_eq!(mounts.last().unwrap(), "mount none / - MS_REC|MS_SHARED -");
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

    #[test]
    fn setup_runs_process_settings_around_the_mounts_in_order() {
        let sys = Recorder::default();
        assert!(setup(&sys).is_empty());
        let calls = sys.calls();
        assert_eq!(calls[..2], ["subreaper", "cad-off"]);
        assert_eq!(calls[2], "mkdir /proc");
        assert_eq!(calls.last().unwrap(), &format!("setrlimit NOFILE {NOFILE}"));
    }

    #[test]
    fn a_failed_mount_is_reported_by_target_and_the_rest_still_happen() {
        let sys = Recorder::default();
        sys.fail("mount securityfs", libc::ENODEV);
        sys.fail("cad-off", libc::EPERM);
        let failed = setup(&sys);
        let msgs: Vec<String> = failed.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs[0].starts_with("routing Ctrl-Alt-Del"), "{msgs:?}");
        assert!(
            msgs[1].starts_with("mounting /sys/kernel/security:"),
            "{msgs:?}"
        );
        assert!(!sys.is_mountpoint("/sys/kernel/security"));
        // Later mounts and the limit still happened.
        assert!(sys.is_mountpoint("/sys/fs/bpf") && sys.is_mountpoint("/var"));
        assert!(sys.calls().last().unwrap().starts_with("setrlimit"));
    }

    #[test]
    fn first_mounts_are_proc_and_dev_unless_already_there() {
        let sys = Recorder::default();
        sys.set_mounted("/proc");
        first_mounts(&sys);
        assert_eq!(
            sys.calls(),
            ["mkdir /dev", "mount dev /dev devtmpfs MS_NOSUID -"]
        );
    }
}
