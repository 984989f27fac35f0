//! The privileged calls PID 1 makes, behind one trait so the plans that use
//! them (boot, switchroot, bundle host actions, volumes, shutdown) are
//! unit-tested against a recording double.
//!
//! Process-level calls that are not a plan's steps sit beside it as free
//! functions of the real side: the debug shell's controlling terminal, a
//! child's signal reset and non-blocking reaping (used by [`crate::reaper`]).
//!
//! Module loading has its own small trait ([`crate::kmod::modules::Kmod`]),
//! its real side here ([`RealKmod`]); so do the helpers `osk-binfmt`
//! ([`crate::binfmt::BinfmtSys`], [`RealBinfmt`]) and `osk-timesync`
//! ([`crate::timesync::TimeSys`], [`RealClock`]). Leaves that keep their own raw calls:
//! rtnetlink ([`crate::net::Links`]),
//! uevents ([`crate::kmod::uevent`]), the shim front's descriptors
//! (`containerd/shimstart/fds.rs`) and evdev ([`crate::power::button`]).

mod clock;
mod real;
#[cfg(test)]
pub mod testing;

use std::io;
use std::path::Path;

pub use clock::RealClock;
pub use nix::mount::{MntFlags, MsFlags};
pub use nix::sys::signal::Signal;
pub use real::{
    reap_any_child, reset_signals_on_exec, set_controlling_tty, RealBinfmt, RealKmod, RealSys,
};

/// What `reboot(2)` should do at the very end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// Privileged system calls used by the boot and shutdown plans. Paths are
/// paths on the running system; errors are the raw OS errors, callers name
/// what they were doing.
pub trait Sys {
    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn umount(&self, target: &str, flags: MntFlags) -> io::Result<()>;
    fn is_mountpoint(&self, path: &str) -> bool;
    /// statfs(2) `f_type` of the filesystem holding `path`.
    fn fs_magic(&self, path: &str) -> io::Result<i64>;
    fn mkdir_p(&self, path: &str) -> io::Result<()>;
    fn rmdir(&self, path: &str) -> io::Result<()>;
    /// Creates an empty file when `path` does not exist yet (a target for a
    /// file bind mount); an existing one is left as it is.
    fn touch(&self, path: &str) -> io::Result<()>;
    fn mkfifo(&self, path: &str, mode: u32) -> io::Result<()>;
    fn chdir(&self, path: &str) -> io::Result<()>;
    fn chroot(&self, path: &str) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Raises RLIMIT_NOFILE (soft and hard) to `n`.
    fn set_nofile_limit(&self, n: u64) -> io::Result<()>;
    /// prctl(PR_SET_CHILD_SUBREAPER): orphans of services are reparented here.
    fn set_child_subreaper(&self) -> io::Result<()>;
    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()>;
    fn sync(&self);
    /// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
    fn disable_cad(&self) -> io::Result<()>;
    /// syslog(2) SYSLOG_ACTION_CONSOLE_LEVEL: which kernel messages reach the console.
    fn console_loglevel(&self, level: i32) -> io::Result<()>;
    fn reboot(&self, action: PowerAction) -> io::Result<()>;
}

/// True when `path` is the root of a mount (its device differs from its
/// parent's, or it is `/`).
pub fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Ok(parent)) = (
        std::fs::symlink_metadata(path),
        std::fs::symlink_metadata(path.join("..")),
    ) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

/// Points `link` at `target`, replacing what was there in one rename (a
/// reader sees the old link or the new one, never none); creates the
/// directory. Errors name the path.
pub fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    let named = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    let dir = link.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| named("creating", dir, e))?;
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| named("linking", &tmp, e))?;
    std::fs::rename(&tmp, link).map_err(|e| named("renaming to", link, e))
}

/// Seconds since boot, the same clock as the first field of /proc/uptime but
/// readable before /proc is mounted.
pub fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}
