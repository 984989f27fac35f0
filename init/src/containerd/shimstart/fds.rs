//! The shim front's raw descriptor work: the leaf under `shimstart` that
//! talks to the kernel directly (socket probe, lock, fd passing, stdin).

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Takes an exclusive flock(2) on `file`, held until the guard drops.
pub(super) fn lock_exclusive(file: fs::File) -> io::Result<nix::fcntl::Flock<fs::File>> {
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::from(e))
}

/// Whether a process listens on the socket at `path`. The connect does not
/// block: a full backlog still means a live shim.
pub(super) fn served(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let Ok(addr) = UnixAddr::new(path) else {
        return false;
    };
    matches!(
        connect(fd.as_raw_fd(), &addr),
        Ok(()) | Err(nix::errno::Errno::EAGAIN)
    )
}

/// Makes `fd` the child's fd 3 (without close-on-exec) between fork and exec.
pub(super) fn pass_as_fd3(cmd: &mut Command, fd: i32) {
    // SAFETY: between fork and exec only dup2/fcntl, which are
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Puts `data` back as fd 0, through a memfd (the pipe containerd gave is
/// drained, and a memfd needs no writer).
pub(super) fn restore_stdin(data: &[u8]) -> io::Result<()> {
    let fd = nix::sys::memfd::memfd_create(c"shim-stdin", nix::sys::memfd::MFdFlags::empty())
        .map_err(io::Error::from)?;
    let mut f = fs::File::from(fd);
    f.write_all(data)?;
    // SAFETY: plain syscalls on a descriptor this process owns.
    unsafe {
        if libc::lseek(f.as_raw_fd(), 0, libc::SEEK_SET) < 0 || libc::dup2(f.as_raw_fd(), 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
