//! Getting `/` off the initramfs mount.
//!
//! runc cannot `pivot_root` while the caller's root is the initramfs
//! (`rootfs`, the one mount without a parent). Copying the tree into a tmpfs
//! would cost a second pass over every byte; instead osk-init bind-mounts the
//! initramfs onto a directory of itself, moves that bind mount onto `/` and
//! chroots into it. The new root is the same files on a mount that has a
//! parent, which is all `pivot_root` asks for. Nothing is copied.

use std::fs;
use std::io;
use std::path::Path;

use nix::mount::MsFlags;

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where the bind mount of the initramfs is made before it is moved onto `/`.
pub const STAGING: &str = "/.osk-newroot";

/// True when `/` is the initramfs itself: a ramfs/tmpfs whose mount is the
/// root of the mount tree (after the switch `/` is a bind mount of it, with a
/// parent).
pub fn root_is_initramfs() -> bool {
    let Ok(st) = nix::sys::statfs::statfs("/") else {
        return false;
    };
    let magic = st.filesystem_type().0;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return false;
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    root_is_unattached_rootfs(&info)
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

fn ctx(e: nix::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{what} {}: {e}", path.display()),
    )
}

/// Makes a bind mount of the initramfs the root and chroots into it.
/// Mounts already made under `/` (`/dev`, `/proc`...) are moved along.
pub fn switch_root() -> io::Result<()> {
    let staging = Path::new(STAGING);
    fs::create_dir_all(staging)?;
    nix::mount::mount(
        Some("/"),
        staging,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| ctx(e, "bind-mounting / on", staging))?;
    for m in ["/dev", "/proc", "/sys", "/run"] {
        if crate::sys::is_mountpoint(Path::new(m)) {
            let target = staging.join(&m[1..]);
            fs::create_dir_all(&target)?;
            nix::mount::mount(
                Some(m),
                &target,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            )
            .map_err(|e| ctx(e, "moving mount", Path::new(m)))?;
        }
    }
    std::env::set_current_dir(staging)?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| ctx(e, "moving the bind mount onto", Path::new("/")))?;
    nix::unistd::chroot(".").map_err(|e| ctx(e, "chroot into", staging))?;
    std::env::set_current_dir("/")?;
    // The staging directory shows up (empty) inside the new root too.
    let _ = fs::remove_dir(STAGING);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_initial_rootfs_from_a_bind_mount_of_it() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n22 1 0:5 / /dev rw shared:2 - devtmpfs dev rw\n";
        assert!(root_is_unattached_rootfs(initramfs));
        let switched = "25 1 0:2 / / rw shared:1 - rootfs rootfs rw\n";
        assert!(!root_is_unattached_rootfs(switched));
        let disk = "20 20 8:1 / / rw - ext4 /dev/sda1 rw\n";
        assert!(!root_is_unattached_rootfs(disk));
    }
}
