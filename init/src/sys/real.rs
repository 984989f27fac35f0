//! [`Sys`] on the running kernel: the one place its calls are made.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;

use super::{PowerAction, Sys};
use crate::kmod::modules::Kmod;

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
        super::is_mountpoint(Path::new(path))
    }

    fn fs_magic(&self, path: &str) -> io::Result<i64> {
        let st = nix::sys::statfs::statfs(path).map_err(errno)?;
        Ok(st.filesystem_type().0 as i64)
    }

    fn mkdir_p(&self, path: &str) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn rmdir(&self, path: &str) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn touch(&self, path: &str) -> io::Result<()> {
        // Opening for writing fails on a path still bound to a namespace
        // file: create only what is missing.
        if Path::new(path).exists() {
            return Ok(());
        }
        std::fs::File::create(path).map(drop)
    }

    fn mkfifo(&self, path: &str, mode: u32) -> io::Result<()> {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(mode)).map_err(errno)
    }

    fn chdir(&self, path: &str) -> io::Result<()> {
        std::env::set_current_dir(path)
    }

    fn chroot(&self, path: &str) -> io::Result<()> {
        nix::unistd::chroot(path).map_err(errno)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(errno)
    }

    fn set_nofile_limit(&self, n: u64) -> io::Result<()> {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
            .map_err(errno)
    }

    fn set_child_subreaper(&self) -> io::Result<()> {
        nix::sys::prctl::set_child_subreaper(true).map_err(errno)
    }

    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(errno)
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

/// Makes the child `cmd` starts a session leader whose controlling
/// terminal is its stdin (the debug shell on a console).
pub fn set_controlling_tty(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only setsid
    // and ioctl(TIOCSCTTY), both async-signal-safe, touching no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 1);
            Ok(())
        });
    }
}

/// Makes the child `cmd` starts begin with PID 1's blocked signals cleared
/// and ignored dispositions back to default (exec resets only handlers).
pub fn reset_signals_on_exec(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe calls (sigemptyset, sigprocmask, signal) on a zeroed
    // local sigset, touching no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
}

/// Reaps one exited child of this process without blocking: its pid and
/// status, or `None` when no child has exited.
pub fn reap_any_child() -> Option<(i32, std::process::ExitStatus)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: waitpid writes only to the provided status integer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then(|| (pid, std::process::ExitStatus::from_raw(status)))
}

/// Kernel modules loaded for real: the one `finit_module(2)` of init.
pub struct RealKmod;

impl Kmod for RealKmod {
    fn finit_module(&self, path: &Path, params: &str) -> io::Result<()> {
        let f = File::open(path)?;
        let params = std::ffi::CString::new(params)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in module parameters"))?;
        let started = std::time::Instant::now();
        let result = nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty())
            .map_err(|e| io::Error::from_raw_os_error(e as i32));
        // Which driver holds up a boot: the load includes its device probes.
        tracing::debug!(
            "finit_module {}: {} ms{}",
            path.display(),
            started.elapsed().as_millis(),
            result
                .as_ref()
                .err()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        result
    }

    fn is_loaded(&self, name: &str) -> bool {
        // Built-in modules have a /sys/module entry too, but no initstate.
        Path::new("/sys/module")
            .join(name)
            .join("initstate")
            .exists()
    }
}

/// binfmt_misc for real: the mount and the writes to `register` of `osk-binfmt`.
pub struct RealBinfmt;

/// statfs(2) `f_type` of binfmt_misc (BINFMTFS_MAGIC).
const BINFMTFS_MAGIC: i64 = 0x4249_4e4d;

impl crate::binfmt::BinfmtSys for RealBinfmt {
    fn is_mounted(&self, dir: &Path) -> bool {
        RealSys
            .fs_magic(&dir.to_string_lossy())
            .is_ok_and(|m| m == BINFMTFS_MAGIC)
    }

    fn mount(&self, dir: &Path) -> io::Result<()> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        nix::mount::mount(
            Some("binfmt_misc"),
            dir,
            Some("binfmt_misc"),
            flags,
            None::<&str>,
        )
        .map_err(errno)
    }

    fn umount(&self, dir: &Path) -> io::Result<()> {
        nix::mount::umount2(dir, MntFlags::empty()).map_err(errno)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn register(&self, dir: &Path, line: &str) -> io::Result<()> {
        use std::io::Write;
        // One write(2): the kernel parses each write as one whole line.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("register"))?;
        f.write_all(line.as_bytes())
    }
}
