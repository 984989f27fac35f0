//! Moving the initramfs root into a tmpfs.
//!
//! runc cannot `pivot_root` out of the initramfs (rootfs can never be
//! unmounted), so before any container starts osk-init copies the whole root
//! into a fresh tmpfs, freeing each initramfs file as soon as it is copied
//! (peak memory stays ~one copy), moves the tmpfs onto `/`, chroots into it
//! and re-executes itself. Hard links are kept (images are stored once and
//! linked), as are modes, owners, times, symlinks and device nodes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::mount::MsFlags;

use crate::sys::cstr;

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Where the new root is assembled before it is moved onto `/`.
pub const STAGING: &str = "/.osk-newroot";

/// True when `/` is the initramfs: a ramfs/tmpfs that `/proc/self/mountinfo`
/// reports as `rootfs` (after the switch it reports `tmpfs`).
pub fn root_is_initramfs() -> bool {
    let Ok(st) = nix::sys::statfs::statfs("/") else {
        return false;
    };
    let magic = st.filesystem_type().0;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return false;
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    root_fstype(&info).is_some_and(|t| t == "rootfs")
}

/// The filesystem type of the mount at `/` in a mountinfo text.
pub fn root_fstype(mountinfo: &str) -> Option<&str> {
    mountinfo.lines().find_map(|line| {
        let mut f = line.split(' ');
        let mount_point = f.nth(4)?;
        if mount_point != "/" {
            return None;
        }
        // Optional fields end at "-", then fstype.
        let mut rest = f.skip_while(|x| *x != "-");
        rest.next()?;
        rest.next()
    })
}

/// Counts of what was copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
    pub hardlinks: u64,
    pub dirs: u64,
    pub other: u64,
}

struct Copier {
    dev: u64,
    skip: PathBuf,
    move_source: bool,
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn mtime(md: &fs::Metadata) -> SystemTime {
    UNIX_EPOCH
        + Duration::new(
            md.mtime().max(0) as u64,
            md.mtime_nsec().clamp(0, 999_999_999) as u32,
        )
}

impl Copier {
    fn copy_dir(&mut self, src: &Path, dst: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(|e| ctx(e, "reading", src))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let s = src.join(&name);
            if s == self.skip {
                continue;
            }
            self.copy_entry(&s, &dst.join(&name))?;
        }
        Ok(())
    }

    fn copy_entry(&mut self, s: &Path, d: &Path) -> io::Result<()> {
        let md = fs::symlink_metadata(s).map_err(|e| ctx(e, "stat", s))?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(d).or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(ctx(e, "mkdir", d)),
            })?;
            // Another filesystem mounted here (e.g. /proc): keep the mount
            // point, not its contents.
            if md.dev() == self.dev {
                self.copy_dir(s, d)?;
            }
            std::os::unix::fs::lchown(d, Some(md.uid()), Some(md.gid()))
                .map_err(|e| ctx(e, "chown", d))?;
            fs::set_permissions(d, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(|e| ctx(e, "chmod", d))?;
            if let Ok(f) = File::open(d) {
                let _ = f.set_modified(mtime(&md));
            }
            self.stats.dirs += 1;
            if self.move_source && md.dev() == self.dev {
                let _ = fs::remove_dir(s);
            }
            return Ok(());
        }
        if ft.is_file() {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                fs::hard_link(first, d).map_err(|e| ctx(e, "linking", d))?;
                self.stats.hardlinks += 1;
            } else {
                self.copy_file(s, d, &md)?;
                if md.nlink() > 1 {
                    self.links.insert(key, d.to_path_buf());
                }
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(s).map_err(|e| ctx(e, "readlink", s))?;
            std::os::unix::fs::symlink(&target, d).map_err(|e| ctx(e, "symlink", d))?;
            std::os::unix::fs::lchown(d, Some(md.uid()), Some(md.gid()))
                .map_err(|e| ctx(e, "chown", d))?;
            self.stats.other += 1;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() || ft.is_socket() {
            let c = cstr(d)?;
            // SAFETY: c is a valid NUL-terminated path; mknod has no other
            // memory preconditions.
            let rc = unsafe { libc::mknod(c.as_ptr(), md.mode(), md.rdev()) };
            if rc != 0 {
                return Err(ctx(io::Error::last_os_error(), "mknod", d));
            }
            std::os::unix::fs::lchown(d, Some(md.uid()), Some(md.gid()))
                .map_err(|e| ctx(e, "chown", d))?;
            fs::set_permissions(d, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(|e| ctx(e, "chmod", d))?;
            self.stats.other += 1;
        }
        if self.move_source {
            let _ = fs::remove_file(s);
        }
        Ok(())
    }

    fn copy_file(&mut self, s: &Path, d: &Path, md: &fs::Metadata) -> io::Result<()> {
        let src = File::open(s).map_err(|e| ctx(e, "opening", s))?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(d)
            .map_err(|e| ctx(e, "creating", d))?;
        let mut left = md.len() as usize;
        while left > 0 {
            // In-kernel copy: no user-space buffer, no page-cache round trip.
            let n = nix::sys::sendfile::sendfile(&dst, &src, None, left.min(1 << 30))
                .map_err(|e| ctx(io::Error::from_raw_os_error(e as i32), "copying", s))?;
            if n == 0 {
                break;
            }
            left -= n;
        }
        // Owner first: chown clears set-uid bits, chmod restores them.
        std::os::fd::AsFd::as_fd(&dst);
        std::os::unix::fs::fchown(&dst, Some(md.uid()), Some(md.gid()))
            .map_err(|e| ctx(e, "chown", d))?;
        dst.set_permissions(fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| ctx(e, "chmod", d))?;
        let _ = dst.set_modified(mtime(md));
        self.stats.files += 1;
        self.stats.bytes += md.len();
        Ok(())
    }
}

/// Copies the tree under `src` into the existing directory `dst`, staying on
/// `src`'s filesystem and leaving out `skip`. With `move_source`, each source
/// entry is removed once copied.
pub fn copy_tree(src: &Path, dst: &Path, skip: &Path, move_source: bool) -> io::Result<CopyStats> {
    let dev = fs::symlink_metadata(src)
        .map_err(|e| ctx(e, "stat", src))?
        .dev();
    let mut c = Copier {
        dev,
        skip: skip.to_path_buf(),
        move_source,
        links: HashMap::new(),
        stats: CopyStats::default(),
    };
    c.copy_dir(src, dst)?;
    Ok(c.stats)
}

/// Moves the initramfs into a tmpfs, makes it `/` and chroots into it.
/// Mounts already made under `/` (`/dev`, `/proc`...) are moved along.
/// The caller re-executes `/init` afterwards.
pub fn switch_root() -> io::Result<CopyStats> {
    let staging = Path::new(STAGING);
    fs::create_dir_all(staging)?;
    nix::mount::mount(
        Some("rootfs"),
        staging,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| {
        ctx(
            io::Error::from_raw_os_error(e as i32),
            "mounting tmpfs on",
            staging,
        )
    })?;
    let stats = copy_tree(Path::new("/"), staging, staging, true)?;
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
            .map_err(|e| {
                ctx(
                    io::Error::from_raw_os_error(e as i32),
                    "moving mount",
                    Path::new(m),
                )
            })?;
        }
    }
    std::env::set_current_dir(staging)?;
    nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(
        |e| {
            ctx(
                io::Error::from_raw_os_error(e as i32),
                "moving new root onto",
                Path::new("/"),
            )
        },
    )?;
    nix::unistd::chroot(".").map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    std::env::set_current_dir("/")?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_root_fstype_in_mountinfo() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n22 1 0:5 / /dev rw shared:2 - devtmpfs dev rw\n";
        assert_eq!(root_fstype(initramfs), Some("rootfs"));
        let after = "25 1 0:22 / / rw shared:1 - tmpfs rootfs rw\n";
        assert_eq!(root_fstype(after), Some("tmpfs"));
    }

    #[test]
    fn copies_and_moves_tree_keeping_hardlinks_symlinks_and_modes() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("a/b")).unwrap();
        fs::write(s.join("a/b/file"), vec![7u8; 100_000]).unwrap();
        fs::hard_link(s.join("a/b/file"), s.join("a/link")).unwrap();
        fs::hard_link(s.join("a/b/file"), s.join("z-link")).unwrap();
        std::os::unix::fs::symlink("b/file", s.join("a/sym")).unwrap();
        fs::set_permissions(s.join("a/b/file"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::create_dir(s.join("skipme")).unwrap();
        fs::write(s.join("skipme/x"), b"x").unwrap();
        nix::unistd::mkfifo(
            &s.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();

        let stats = copy_tree(s, dst.path(), &s.join("skipme"), true).unwrap();
        let d = dst.path();
        assert_eq!(stats.files, 1);
        assert_eq!(stats.hardlinks, 2);
        assert_eq!(stats.bytes, 100_000);
        let md = fs::metadata(d.join("a/b/file")).unwrap();
        assert_eq!(md.nlink(), 3);
        assert_eq!(md.mode() & 0o7777, 0o751);
        assert_eq!(md.ino(), fs::metadata(d.join("z-link")).unwrap().ino());
        assert_eq!(fs::read_link(d.join("a/sym")).unwrap(), Path::new("b/file"));
        assert!(fs::symlink_metadata(d.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!d.join("skipme").exists());
        // Moved: the source is empty except for the skipped directory.
        let left: Vec<_> = fs::read_dir(s)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["skipme"]);
    }
}
