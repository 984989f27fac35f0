//! Getting `/` off the initramfs mount.
//!
//! runc cannot `pivot_root` while the caller's root is the initramfs
//! (`rootfs`, the one mount without a parent). Copying the tree into a tmpfs
//! would cost a second pass over every byte; instead osk-init bind-mounts the
//! initramfs onto a directory of itself, moves that bind mount onto `/` and
//! chroots into it. The new root is the same files on a mount that has a
//! parent, which is all `pivot_root` asks for. Nothing is copied.

use std::io;

use crate::sys::{MsFlags, Sys};

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where the bind mount of the initramfs is made before it is moved onto `/`.
pub const STAGING: &str = "/.osk-newroot";

/// True when `/` is the initramfs itself: a ramfs/tmpfs whose mount is the
/// root of the mount tree (after the switch `/` is a bind mount of it, with a
/// parent). `mountinfo` is `/proc/self/mountinfo`.
pub fn root_is_initramfs(sys: &dyn Sys, mountinfo: &str) -> bool {
    match sys.fs_magic("/") {
        Ok(magic) if magic == RAMFS_MAGIC || magic == TMPFS_MAGIC => {
            root_is_unattached_rootfs(mountinfo)
        }
        _ => false,
    }
}

/// Whether the mount at `/` in a mountinfo text is `rootfs` and its own
/// parent (the initial root, which `pivot_root` refuses).
pub fn root_is_unattached_rootfs(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut f = line.split(' ');
        let (Some(id), Some(parent), Some(mount_point)) = (f.next(), f.next(), f.nth(2)) else {
            return false;
        };
        if mount_point != "/" || id != parent {
            return false;
        }
        // Optional fields end at "-", then fstype.
        let mut rest = f.skip_while(|x| *x != "-");
        rest.next();
        rest.next() == Some("rootfs")
    })
}

/// The step of [`switch_root`] that failed, and on which path.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {cause}")]
pub struct SwitchRootError {
    pub step: &'static str,
    pub path: String,
    #[source]
    pub cause: io::Error,
}

/// Mounts already made under `/` that move along into the new root.
const CARRIED: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// Makes a bind mount of the initramfs the root and chroots into it.
/// Mounts already made under `/` (`/dev`, `/proc`...) are moved along.
/// Stops at the first failure: `/` is then left where it was.
pub fn switch_root(sys: &dyn Sys) -> Result<(), SwitchRootError> {
    let step = |step: &'static str, path: &str| {
        let path = path.to_string();
        move |cause| SwitchRootError { step, path, cause }
    };
    sys.mkdir_p(STAGING).map_err(step("creating", STAGING))?;
    sys.mount("/", STAGING, None, MsFlags::MS_BIND, None)
        .map_err(step("bind-mounting / on", STAGING))?;
    for m in CARRIED {
        if sys.is_mountpoint(m) {
            let target = format!("{STAGING}{m}");
            sys.mkdir_p(&target).map_err(step("creating", &target))?;
            sys.mount(m, &target, None, MsFlags::MS_MOVE, None)
                .map_err(step("moving mount", m))?;
        }
    }
    sys.chdir(STAGING).map_err(step("entering", STAGING))?;
    sys.mount(".", "/", None, MsFlags::MS_MOVE, None)
        .map_err(step("moving the bind mount onto", "/"))?;
    sys.chroot(".").map_err(step("chroot into", STAGING))?;
    sys.chdir("/").map_err(step("entering", "/"))?;
    // The staging directory shows up (empty) inside the new root too.
    let _ = sys.rmdir(STAGING);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::Recorder;

    #[test]
    fn tells_the_initial_rootfs_from_a_bind_mount_of_it() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n22 1 0:5 / /dev rw shared:2 - devtmpfs dev rw\n";
        assert!(root_is_unattached_rootfs(initramfs));
        let switched = "25 1 0:2 / / rw shared:1 - rootfs rootfs rw\n";
        assert!(!root_is_unattached_rootfs(switched));
        let disk = "20 20 8:1 / / rw - ext4 /dev/sda1 rw\n";
        assert!(!root_is_unattached_rootfs(disk));
    }

    #[test]
    fn only_a_ram_filesystem_at_the_top_of_the_tree_needs_the_switch() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw\n";
        let sys = Recorder::default();
        assert!(
            !root_is_initramfs(&sys, initramfs),
            "statfs failed: no switch"
        );
        sys.set_fs_magic(RAMFS_MAGIC);
        assert!(root_is_initramfs(&sys, initramfs));
        assert!(!root_is_initramfs(
            &sys,
            "25 1 0:2 / / rw - rootfs rootfs rw\n"
        ));
        sys.set_fs_magic(0xEF53);
        assert!(!root_is_initramfs(&sys, initramfs), "ext4 root");
    }

    #[test]
    fn switch_moves_the_mounted_ones_along_then_chroots() {
        let sys = Recorder::default();
        sys.set_mounted("/dev");
        sys.set_mounted("/proc");
        switch_root(&sys).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mkdir /.osk-newroot",
                "mount / /.osk-newroot - MS_BIND -",
                "mkdir /.osk-newroot/dev",
                "mount /dev /.osk-newroot/dev - MS_MOVE -",
                "mkdir /.osk-newroot/proc",
                "mount /proc /.osk-newroot/proc - MS_MOVE -",
                "chdir /.osk-newroot",
                "mount . / - MS_MOVE -",
                "chroot .",
                "chdir /",
                "rmdir /.osk-newroot",
            ]
        );
    }

    #[test]
    fn a_failed_move_stops_before_the_root_is_touched_and_names_the_mount() {
        let sys = Recorder::default();
        sys.set_mounted("/proc");
        sys.fail("mount /proc", libc::EINVAL);
        let err = switch_root(&sys).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "moving mount /proc: {}",
                std::io::Error::from_raw_os_error(libc::EINVAL)
            )
        );
        let calls = sys.calls();
        assert!(
            !calls
                .iter()
                .any(|c| c.starts_with("chroot") || c.starts_with("mount . /")),
            "{calls:?}"
        );
    }
}
