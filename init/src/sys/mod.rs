//! The privileged calls PID 1 makes, behind a trait so the plans that use
//! them can be tested against a recording double.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// What `reboot(2)` should do at the very end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

/// Privileged system calls used by the boot and shutdown plans.
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
    fn mkdir_p(&self, path: &str) -> io::Result<()>;
    fn kill(&self, pid: i32, signal: i32) -> io::Result<()>;
    fn sync(&self);
    /// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
    fn disable_cad(&self) -> io::Result<()>;
    /// syslog(2) SYSLOG_ACTION_CONSOLE_LEVEL: which kernel messages reach the console.
    fn console_loglevel(&self, level: i32) -> io::Result<()>;
    fn reboot(&self, action: PowerAction) -> io::Result<()>;
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The real thing.
pub struct RealSys;

impl Sys for RealSys {
    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(Some(source), target, fstype, flags, data).map_err(errno)
    }

    fn umount(&self, target: &str, flags: MntFlags) -> io::Result<()> {
        nix::mount::umount2(target, flags).map_err(errno)
    }

    fn is_mountpoint(&self, path: &str) -> bool {
        is_mountpoint(Path::new(path))
    }

    fn mkdir_p(&self, path: &str) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn disable_cad(&self) -> io::Result<()> {
        nix::sys::reboot::set_cad_enabled(false).map_err(errno)
    }

    fn console_loglevel(&self, level: i32) -> io::Result<()> {
        const SYSLOG_ACTION_CONSOLE_LEVEL: libc::c_int = 8;
        // SAFETY: this action reads no buffer; a null pointer and the level
        // as length are what syslog(2) documents.
        let rc = unsafe { libc::klogctl(SYSLOG_ACTION_CONSOLE_LEVEL, std::ptr::null_mut(), level) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn reboot(&self, action: PowerAction) -> io::Result<()> {
        let mode = match action {
            PowerAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        };
        match nix::sys::reboot::reboot(mode) {
            Ok(never) => match never {},
            Err(e) => Err(errno(e)),
        }
    }
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

/// `path` as a C string (paths with NUL bytes cannot exist on Linux).
pub fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Seconds since boot, the same clock as the first field of /proc/uptime but
/// readable before /proc is mounted.
pub fn uptime() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

#[cfg(test)]
pub mod testing {
    //! A recording double for [`Sys`].
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<String>>,
        pub mounted: RefCell<HashSet<String>>,
    }

    impl Recorder {
        pub fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
        fn rec(&self, s: String) {
            self.calls.borrow_mut().push(s);
        }
    }

    impl Sys for Recorder {
        fn mount(
            &self,
            source: &str,
            target: &str,
            fstype: Option<&str>,
            flags: MsFlags,
            _data: Option<&str>,
        ) -> io::Result<()> {
            self.rec(format!(
                "mount {source} {target} {} {:#x}",
                fstype.unwrap_or("-"),
                flags.bits()
            ));
            self.mounted.borrow_mut().insert(target.to_string());
            Ok(())
        }
        fn umount(&self, target: &str, _flags: MntFlags) -> io::Result<()> {
            self.rec(format!("umount {target}"));
            Ok(())
        }
        fn is_mountpoint(&self, path: &str) -> bool {
            self.mounted.borrow().contains(path)
        }
        fn mkdir_p(&self, path: &str) -> io::Result<()> {
            self.rec(format!("mkdir {path}"));
            Ok(())
        }
        fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
            self.rec(format!("kill {pid} {signal}"));
            Ok(())
        }
        fn sync(&self) {
            self.rec("sync".into());
        }
        fn disable_cad(&self) -> io::Result<()> {
            self.rec("cad-off".into());
            Ok(())
        }
        fn console_loglevel(&self, level: i32) -> io::Result<()> {
            self.rec(format!("loglevel {level}"));
            Ok(())
        }
        fn reboot(&self, action: PowerAction) -> io::Result<()> {
            self.rec(format!("reboot {action:?}"));
            Ok(())
        }
    }
}
