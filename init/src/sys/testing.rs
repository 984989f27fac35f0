//! A recording double for [`Sys`]: each call is recorded as one line with
//! its arguments, and any call can be told to fail with an errno.

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;

use super::{MntFlags, MsFlags, PowerAction, Signal, Sys};

/// Records calls as text, e.g. `mount proc /proc proc MS_NOSUID -` or
/// `kill -1 SIGTERM`; flags print by name so a test reads like the plan.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<String>>,
    mounted: Mutex<HashSet<String>>,
    failures: Mutex<Vec<(String, i32)>>,
    magic: Mutex<Option<i64>>,
}

impl Recorder {
    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls so far that start with `prefix` (e.g. `"mount "`).
    pub fn calls_starting(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }

    /// Makes `path` a mount point for [`Sys::is_mountpoint`].
    pub fn set_mounted(&self, path: &str) {
        self.mounted.lock().unwrap().insert(path.to_string());
    }

    /// Every later call whose recorded line is `prefix` or starts with
    /// `prefix` and a space fails with `errno` (still recorded, and without
    /// the effect of a success): `"umount /var"` hits `umount /var` and
    /// `umount /var detach`, not `umount /var/lib`.
    pub fn fail(&self, prefix: &str, errno: i32) {
        self.failures
            .lock()
            .unwrap()
            .push((prefix.to_string(), errno));
    }

    /// What [`Sys::fs_magic`] answers (default: an error, ENOSYS).
    pub fn set_fs_magic(&self, magic: i64) {
        *self.magic.lock().unwrap() = Some(magic);
    }

    fn rec(&self, line: String) -> io::Result<()> {
        let failed = self
            .failures
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| {
                line.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
            })
            .map(|(_, errno)| *errno);
        self.calls.lock().unwrap().push(line);
        match failed {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

fn ms(flags: MsFlags) -> String {
    if flags.is_empty() {
        "0".into()
    } else {
        let names: Vec<&str> = flags.iter_names().map(|(name, _)| name).collect();
        names.join("|")
    }
}

impl Sys for Recorder {
    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        self.rec(format!(
            "mount {source} {target} {} {} {}",
            fstype.unwrap_or("-"),
            ms(flags),
            data.unwrap_or("-")
        ))?;
        self.mounted.lock().unwrap().insert(target.to_string());
        Ok(())
    }
    fn umount(&self, target: &str, flags: MntFlags) -> io::Result<()> {
        if flags.contains(MntFlags::MNT_DETACH) {
            self.rec(format!("umount {target} detach"))
        } else {
            self.rec(format!("umount {target}"))
        }
    }
    fn is_mountpoint(&self, path: &str) -> bool {
        self.mounted.lock().unwrap().contains(path)
    }
    fn fs_magic(&self, path: &str) -> io::Result<i64> {
        self.rec(format!("statfs {path}"))?;
        self.magic
            .lock()
            .unwrap()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOSYS))
    }
    fn mkdir_p(&self, path: &str) -> io::Result<()> {
        self.rec(format!("mkdir {path}"))
    }
    fn rmdir(&self, path: &str) -> io::Result<()> {
        self.rec(format!("rmdir {path}"))
    }
    fn touch(&self, path: &str) -> io::Result<()> {
        self.rec(format!("touch {path}"))
    }
    fn mkfifo(&self, path: &str, mode: u32) -> io::Result<()> {
        self.rec(format!("mkfifo {path} {mode:o}"))
    }
    fn chdir(&self, path: &str) -> io::Result<()> {
        self.rec(format!("chdir {path}"))
    }
    fn chroot(&self, path: &str) -> io::Result<()> {
        self.rec(format!("chroot {path}"))
    }
    fn sethostname(&self, name: &str) -> io::Result<()> {
        self.rec(format!("sethostname {name}"))
    }
    fn set_nofile_limit(&self, n: u64) -> io::Result<()> {
        self.rec(format!("setrlimit NOFILE {n}"))
    }
    fn set_child_subreaper(&self) -> io::Result<()> {
        self.rec("subreaper".into())
    }
    fn kill(&self, pid: i32, signal: Signal) -> io::Result<()> {
        self.rec(format!("kill {pid} {signal}"))
    }
    fn sync(&self) {
        let _ = self.rec("sync".into());
    }
    fn disable_cad(&self) -> io::Result<()> {
        self.rec("cad-off".into())
    }
    fn console_loglevel(&self, level: i32) -> io::Result<()> {
        self.rec(format!("loglevel {level}"))
    }
    fn reboot(&self, action: PowerAction) -> io::Result<()> {
        self.rec(format!("reboot {action:?}"))
    }
}

/// The recorder doubles as rtnetlink, so link changes and mounts of one
/// bundle land in one ordered list.
impl crate::net::Links for Recorder {
    fn delete_link(&self, name: &str) -> io::Result<()> {
        self.rec(format!("link delete {name}"))
    }
    fn create_veth(&self, name: &str, peer: &str, pid: u32) -> io::Result<()> {
        self.rec(format!("link veth {name} {peer} {pid}"))
    }
    fn move_link(&self, name: &str, pid: u32) -> io::Result<()> {
        self.rec(format!("link move {name} {pid}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_injected_failure_hits_only_matching_calls_and_leaves_no_mount() {
        let r = Recorder::default();
        r.fail("mount a /x", libc::EBUSY);
        let err = r
            .mount("a", "/x", None, MsFlags::MS_BIND, None)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        assert!(!r.is_mountpoint("/x"));
        r.mount(
            "b",
            "/y",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=755"),
        )
        .unwrap();
        assert!(r.is_mountpoint("/y"));
        assert_eq!(
            r.calls(),
            [
                "mount a /x - MS_BIND -",
                "mount b /y tmpfs MS_NOSUID|MS_NODEV mode=755"
            ]
        );
    }
}
