//! The last steps of shutdown, once services, onshutdown containers and
//! containerd are gone: kill what is left, sync, unmount, reboot(2).

use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

use crate::sys::{PowerAction, Sys};

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
    let _ = sys.kill(-1, libc::SIGTERM);
    sleep(grace);
    let _ = sys.kill(-1, libc::SIGKILL);
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

    #[test]
    fn sequence_kills_syncs_unmounts_then_powers_off() {
        let sys = Recorder::default();
        let slept = std::cell::Cell::new(Duration::ZERO);
        finish(
            &sys,
            PowerAction::PowerOff,
            MOUNTS,
            Duration::from_secs(2),
            &|d| slept.set(slept.get() + d),
        );
        let calls = sys.calls();
        assert_eq!(calls[0], format!("kill -1 {}", libc::SIGTERM));
        assert_eq!(calls[1], format!("kill -1 {}", libc::SIGKILL));
        assert_eq!(calls[2], "sync");
        assert_eq!(calls[3], "umount /var/lib/my data");
        assert_eq!(calls.last().unwrap(), "reboot PowerOff");
        assert_eq!(calls[calls.len() - 2], "sync");
        assert_eq!(slept.get(), Duration::from_secs(2));
    }
}
