//! Shutdown: services, onshutdown containers and containerd stop in that
//! order, each within its limit; then the last steps: kill what is left,
//! sync, unmount, reboot(2).

use std::future::Future;
use std::time::Duration;

use crate::sys::{MntFlags, MsFlags, PowerAction, Signal, Sys};

/// The stages that stop before [`finish`], as a seam for the sequence.
pub trait Stages {
    /// Every service, dependents first.
    fn stop_services(&self) -> impl Future<Output = ()>;
    /// The onshutdown containers, one after the other.
    fn run_onshutdown(&self) -> impl Future<Output = ()>;
    /// containerd itself.
    fn stop_containerd(&self) -> impl Future<Output = ()>;
}

/// How long [`stop_stages`] waits for a stage before going on without it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub services: Duration,
    pub containerd: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            services: Duration::from_secs(120),
            containerd: Duration::from_secs(15),
        }
    }
}

/// Stops services (within `limits.services`), runs onshutdown containers
/// (each has its own timeout), then stops containerd (within
/// `limits.containerd`). A stage that overruns is logged and left behind:
/// [`finish`] kills whatever still runs.
pub async fn stop_stages(stages: &impl Stages, limits: Limits) {
    if tokio::time::timeout(limits.services, stages.stop_services())
        .await
        .is_err()
    {
        tracing::error!(
            "services did not stop within {}s; going on",
            limits.services.as_secs()
        );
    }
    stages.run_onshutdown().await;
    if tokio::time::timeout(limits.containerd, stages.stop_containerd())
        .await
        .is_err()
    {
        tracing::error!(
            "containerd did not stop within {}s; going on",
            limits.containerd.as_secs()
        );
    }
}

/// Mount points from a /proc/mounts text, innermost (last mounted) first,
/// skipping the ones that cannot or need not be unmounted.
pub fn unmount_order(mounts: &str) -> Vec<String> {
    let keep = ["/", "/proc", "/sys", "/dev"];
    mounts
        .lines()
        .rev()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| !keep.contains(&m.as_str()))
        .collect()
}

/// Kills every remaining process (SIGTERM, `grace`, SIGKILL), syncs,
/// unmounts (remounting `/` read-only), syncs again and powers off or
/// reboots. `sleep` is injectable so tests run instantly.
pub fn finish(
    sys: &dyn Sys,
    action: PowerAction,
    mounts: &str,
    grace: Duration,
    sleep: &dyn Fn(Duration),
) {
    let _ = sys.kill(-1, Signal::SIGTERM);
    sleep(grace);
    let _ = sys.kill(-1, Signal::SIGKILL);
    sys.sync();
    for m in unmount_order(mounts) {
        if sys.umount(&m, MntFlags::empty()).is_err() {
            let _ = sys.umount(&m, MntFlags::MNT_DETACH);
        }
    }
    let _ = sys.mount(
        "none",
        "/",
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    );
    sys.sync();
    let _ = sys.reboot(action);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::Recorder;

    const MOUNTS: &str = "rootfs / tmpfs rw 0 0\nproc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\ntmpfs /var tmpfs rw 0 0\n/dev/x /var/lib/my\\040data ext4 rw 0 0\n";

    #[test]
    fn unmounts_innermost_first_and_keeps_kernel_filesystems() {
        assert_eq!(
            unmount_order(MOUNTS),
            ["/var/lib/my data", "/var", "/sys/fs/cgroup"]
        );
    }

    fn finish_with(sys: &Recorder) -> Duration {
        let slept = std::cell::Cell::new(Duration::ZERO);
        finish(
            sys,
            PowerAction::PowerOff,
            MOUNTS,
            Duration::from_secs(2),
            &|d| slept.set(slept.get() + d),
        );
        slept.get()
    }

    #[test]
    fn sequence_kills_syncs_unmounts_then_powers_off() {
        let sys = Recorder::default();
        let slept = finish_with(&sys);
        assert_eq!(
            sys.calls(),
            [
                "kill -1 SIGTERM",
                "kill -1 SIGKILL",
                "sync",
                "umount /var/lib/my data",
                "umount /var",
                "umount /sys/fs/cgroup",
                "mount none / - MS_RDONLY|MS_REMOUNT -",
                "sync",
                "reboot PowerOff",
            ]
        );
        assert_eq!(
            slept,
            Duration::from_secs(2),
            "the grace period between the signals"
        );
    }

    #[test]
    fn a_busy_mount_is_detached_and_the_rest_still_unmount() {
        let sys = Recorder::default();
        sys.fail("umount /var", libc::EBUSY);
        finish_with(&sys);
        let umounts = sys.calls_starting("umount");
        assert_eq!(
            umounts,
            [
                "umount /var/lib/my data",
                "umount /var",
                "umount /var detach",
                "umount /sys/fs/cgroup",
            ]
        );
        assert_eq!(sys.calls().last().unwrap(), "reboot PowerOff");
    }

    #[test]
    fn failing_kills_and_remount_do_not_stop_the_power_off() {
        let sys = Recorder::default();
        sys.fail("kill", libc::ESRCH);
        sys.fail("mount none /", libc::EBUSY);
        finish_with(&sys);
        let calls = sys.calls();
        assert_eq!(
            calls.iter().filter(|c| *c == "sync").count(),
            2,
            "{calls:?}"
        );
        assert_eq!(calls.last().unwrap(), "reboot PowerOff");
    }

    /// Stages that log their start and end; `hang` never ends.
    struct FakeStages {
        log: std::sync::Mutex<Vec<String>>,
        hang: &'static str,
    }

    impl FakeStages {
        async fn stage(&self, name: &str) {
            self.log.lock().unwrap().push(format!("{name} begins"));
            if self.hang == name {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.log.lock().unwrap().push(format!("{name} ends"));
        }
    }

    impl Stages for FakeStages {
        async fn stop_services(&self) {
            self.stage("services").await
        }
        async fn run_onshutdown(&self) {
            self.stage("onshutdown").await
        }
        async fn stop_containerd(&self) {
            self.stage("containerd").await
        }
    }

    const SHORT: Limits = Limits {
        services: Duration::from_millis(100),
        containerd: Duration::from_millis(100),
    };

    #[tokio::test]
    async fn stages_run_one_after_the_other_in_order() {
        let f = FakeStages {
            log: Default::default(),
            hang: "",
        };
        stop_stages(&f, SHORT).await;
        assert_eq!(
            *f.log.lock().unwrap(),
            [
                "services begins",
                "services ends",
                "onshutdown begins",
                "onshutdown ends",
                "containerd begins",
                "containerd ends",
            ]
        );
    }

    #[tokio::test]
    async fn hung_services_or_containerd_do_not_hold_up_the_power_off() {
        for hang in ["services", "containerd"] {
            let f = FakeStages {
                log: Default::default(),
                hang,
            };
            tokio::time::timeout(Duration::from_secs(5), stop_stages(&f, SHORT))
                .await
                .expect("a hung stage held up shutdown");
            let log = f.log.lock().unwrap();
            assert!(!log.contains(&format!("{hang} ends")), "{log:?}");
            assert!(log.contains(&"onshutdown ends".to_string()), "{log:?}");
            assert!(log.last().unwrap().starts_with("containerd"), "{log:?}");
        }
    }
}
