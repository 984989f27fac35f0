//! The last steps of shutdown, once services, onshutdown containers and
//! containerd are gone: kill what is left, sync, unmount, reboot(2).

use std::time::Duration;

use crate::sys::{MntFlags, MsFlags, PowerAction, Signal, Sys};

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
}
