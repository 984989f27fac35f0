//! One sealed copy of runc for the life of the machine.
//!
//! Before `runc init` sets up a container it makes sure it runs from a copy
//! of its binary that the container cannot overwrite (CVE-2019-5736): runc
//! 1.1 copies its 8.7 MB binary into a fresh memfd and re-executes itself
//! from it, for every container start. Unless the binary it was started
//! from is already a memfd carrying the write/grow/shrink/seal seals: runc
//! then trusts it as is. PID 1 makes that copy once at boot, keeps it open,
//! and `/run/osk/bin/runc` links to it through `/proc/<pid1>/fd/N`;
//! `/run/osk/bin` comes first in the PATH of containerd, its shims and the
//! onboot runner. Every container start saves the copy and the re-exec, and
//! all runc processes share the same pages (under emulation, also the same
//! translated code).

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// The seals runc checks for (all four, or it copies again).
fn seals() -> SealFlag {
    SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

/// Copies `src` into a sealed, executable memfd.
pub fn sealed_copy(src: &Path) -> io::Result<OwnedFd> {
    let mut from = fs::File::open(src)?;
    let fd = memfd_create(c"runc", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut to = fs::File::from(fd);
    io::copy(&mut from, &mut to)?;
    to.set_permissions(fs::Permissions::from_mode(0o755))?;
    fcntl(&to, FcntlArg::F_ADD_SEALS(seals()))?;
    Ok(OwnedFd::from(to))
}

/// Makes the sealed copy of `src` and links `bin_dir/runc` to it. The
/// memfd stays open for as long as this process lives (PID 1: always).
pub fn install(src: &Path, bin_dir: &Path) -> io::Result<PathBuf> {
    let fd = sealed_copy(src)
        .map_err(|e| io::Error::new(e.kind(), format!("copying {}: {e}", src.display())))?;
    let link = bin_dir.join("runc");
    let target = format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd());
    crate::sys::replace_symlink(Path::new(&target), &link)?;
    // Kept open on purpose: the link is only valid while the fd is.
    let _ = fd.into_raw_fd();
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_copy_is_sealed_as_runc_expects() {
        let fd = sealed_copy(Path::new("/bin/true")).unwrap();
        let got = fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap();
        assert_eq!(SealFlag::from_bits_truncate(got), seals());
        let mut f = fs::File::from(fd);
        use std::io::Write;
        assert!(
            f.write_all(b"x").is_err(),
            "a sealed copy must refuse writes"
        );
    }

    #[test]
    fn the_link_executes_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let link = install(Path::new("/bin/true"), dir.path()).unwrap();
        let target = fs::read_link(&link).unwrap();
        assert!(target.starts_with(format!("/proc/{}/fd/", std::process::id())));
        assert_eq!(fs::read(&link).unwrap(), fs::read("/bin/true").unwrap());
        let st = Command::new(&link).status().unwrap();
        assert!(st.success());
        // Installing again replaces the link.
        let again = install(Path::new("/bin/true"), dir.path()).unwrap();
        assert_ne!(fs::read_link(&again).unwrap(), target);
    }

    #[test]
    fn a_missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = install(Path::new("/nonexistent/runc"), dir.path()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/runc"), "{e}");
        assert!(!dir.path().join("runc").exists());
    }
}
