//! Stopping a detached VM (`osk run qemu --stop STATE`), and telling whether a state directory's VM still runs.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::names::{CONSOLE_LOG, FORWARD_PID, FORWARD_TABLE, MONITOR_SOCKET, PID_FILE, REACH};
use super::{monitor_command, parse_helper_table, Error, Result};

/// A process's command line (`/proc/PID/cmdline`), None when there is no such process.
pub fn proc_cmdline(pid: i32) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// Whether a command line is QEMU's: its program's file name says qemu.
/// Only argv[0] counts: `osk run qemu` itself is not QEMU.
fn is_qemu(cmdline: &[u8]) -> bool {
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let name = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
    name.windows(4).any(|w| w == b"qemu")
}

/// Whether a command line is a forward helper's (`osk run forward`).
fn is_forward_helper(cmdline: &[u8]) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2).any(|w| w == [&b"run"[..], &b"forward"[..]])
}

/// Whether a command line is a virtiofsd's (`--share` over virtiofs).
fn is_virtiofsd(cmdline: &[u8]) -> bool {
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    argv0.rsplit(|&b| b == b'/').next() == Some(b"virtiofsd")
}

/// The virtiofsds a detached VM started: each share's index, and its pid
/// while it still runs.
fn virtiofsds(
    state: &Path,
    cmdline: &impl Fn(i32) -> Option<Vec<u8>>,
) -> Result<Vec<(usize, Option<i32>)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(state).map_err(Error::io(state))? {
        let name = entry.map_err(Error::io(state))?.file_name();
        let index = name.to_str().and_then(|n| {
            n.strip_prefix("virtiofs")?
                .strip_suffix(".pid")?
                .parse()
                .ok()
        });
        if let Some(i) = index {
            let pid = live_pid(&super::virtiofs::pid_path(state, i), cmdline, is_virtiofsd)?;
            out.push((i, pid));
        }
    }
    Ok(out)
}

/// The pid in `pid_file` when `cmdline` says it is a live process that
/// `pred` accepts: a pid recycled by another program never counts.
fn live_pid(
    pid_file: &Path,
    cmdline: &impl Fn(i32) -> Option<Vec<u8>>,
    pred: fn(&[u8]) -> bool,
) -> Result<Option<i32>> {
    let text = match fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(pid_file)(e)),
    };
    let pid = match text.trim().parse::<i32>() {
        Ok(p) if p > 0 => p,
        // Half-written or foreign: no VM of ours.
        _ => return Ok(None),
    };
    Ok(cmdline(pid).filter(|c| pred(c)).map(|_| pid))
}

/// The pid of the QEMU that `STATE/qemu.pid` names, when it still runs.
/// `cmdline` reads a process's command line ([`proc_cmdline`]).
pub fn live_qemu(state: &Path, cmdline: impl Fn(i32) -> Option<Vec<u8>>) -> Result<Option<i32>> {
    live_pid(&state.join(PID_FILE), &cmdline, is_qemu)
}

/// Refuses a state directory whose VM still runs: booting another VM in it
/// would remove the running one's monitor socket and pid file.
pub fn check_state_free(state: &Path) -> Result<()> {
    match live_qemu(state, proc_cmdline)? {
        Some(pid) => Err(Error::StateInUse {
            state: state.to_path_buf(),
            pid,
        }),
        None => Ok(()),
    }
}

/// How `stop` ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The guest shut down after `system_powerdown`.
    PoweredDown,
    /// It did not within the timeout; QEMU obeyed `quit`.
    Quit,
    /// QEMU ignored `quit` and was killed.
    Killed,
    /// No VM ran in STATE (it had already stopped); only leftovers were removed.
    AlreadyStopped,
}

/// Stops the detached VM of `state`: `system_powerdown`, up to `timeout`
/// for the guest to shut down, then `quit`, then SIGKILL. Then waits for the
/// forward helper and removes what it and QEMU left behind.
pub fn stop(state: &Path, timeout: Duration) -> Result<Stopped> {
    stop_with(state, timeout, proc_cmdline)
}

fn stop_with(
    state: &Path,
    timeout: Duration,
    cmdline: impl Fn(i32) -> Option<Vec<u8>>,
) -> Result<Stopped> {
    if !state.is_dir() {
        return Err(Error::NotAVm {
            state: state.to_path_buf(),
            reason: "no such directory".into(),
        });
    }
    // Read first: the helper removes its pid file as it ends, before it
    // has exited.
    let helper = live_pid(&state.join(FORWARD_PID), &cmdline, is_forward_helper)?;
    let daemons = virtiofsds(state, &cmdline)?;
    let how = match live_qemu(state, &cmdline)? {
        Some(pid) => Some(stop_qemu(state, pid, timeout, &cmdline)),
        None => {
            // A detached VM leaves its console log, even after it stops.
            let known = [CONSOLE_LOG, PID_FILE, MONITOR_SOCKET, FORWARD_PID]
                .iter()
                .any(|f| state.join(f).exists());
            if !known {
                return Err(Error::NotAVm {
                    state: state.to_path_buf(),
                    reason: format!(
                        "it holds no {PID_FILE} or {CONSOLE_LOG}; pass the --state of a VM started with `osk run qemu --detach`"
                    ),
                });
            }
            None
        }
    };
    clean_up(state, helper, &daemons, &cmdline)?;
    Ok(how.unwrap_or(Stopped::AlreadyStopped))
}

/// Waits up to `timeout` for `pid` to stop being a live `pred` process.
fn wait_gone(
    pid: i32,
    timeout: Duration,
    cmdline: &impl Fn(i32) -> Option<Vec<u8>>,
    pred: fn(&[u8]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        // A zombie's cmdline is empty: it counts as gone.
        if !cmdline(pid).is_some_and(|c| pred(&c)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends SIGKILL to `pid` if it is still a live `pred` process.
fn kill_if(pid: i32, cmdline: &impl Fn(i32) -> Option<Vec<u8>>, pred: fn(&[u8]) -> bool) {
    if cmdline(pid).is_some_and(|c| pred(&c)) {
        // SAFETY: plain kill(2) on a pid just checked to be the process meant.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn stop_qemu(
    state: &Path,
    pid: i32,
    timeout: Duration,
    cmdline: &impl Fn(i32) -> Option<Vec<u8>>,
) -> Stopped {
    let monitor = state.join(MONITOR_SOCKET);
    match monitor_command(&monitor, "system_powerdown", Duration::from_secs(10)) {
        Ok(_) => {
            tracing::info!(pid, "asked the guest to power down");
            if wait_gone(pid, timeout, cmdline, is_qemu) {
                return Stopped::PoweredDown;
            }
            tracing::warn!(
                seconds = timeout.as_secs(),
                "the guest did not power down in time; quitting QEMU"
            );
        }
        Err(e) => tracing::warn!("{e}; quitting QEMU"),
    }
    let _ = monitor_command(&monitor, "quit", Duration::from_secs(5));
    if wait_gone(pid, Duration::from_secs(5), cmdline, is_qemu) {
        return Stopped::Quit;
    }
    tracing::warn!(pid, "QEMU ignored quit; killing it");
    kill_if(pid, cmdline, is_qemu);
    wait_gone(pid, Duration::from_secs(5), cmdline, is_qemu);
    Stopped::Killed
}

/// Removes what a stopped VM left: the forward helper (which ends with QEMU
/// and removes its own sockets; if it died, they are removed here), the
/// virtiofsds (which end with QEMU too) and their sockets, the monitor
/// socket, pid files and reach file.
fn clean_up(
    state: &Path,
    helper: Option<i32>,
    daemons: &[(usize, Option<i32>)],
    cmdline: &impl Fn(i32) -> Option<Vec<u8>>,
) -> Result<()> {
    for (i, pid) in daemons {
        if let Some(pid) = *pid {
            if !wait_gone(pid, Duration::from_secs(5), cmdline, is_virtiofsd) {
                tracing::warn!(pid, "a virtiofsd outlived QEMU; killing it");
                kill_if(pid, cmdline, is_virtiofsd);
            }
        }
        remove(&super::virtiofs::socket_path(state, *i))?;
        remove(&super::virtiofs::pid_path(state, *i))?;
    }
    if let Some(pid) = helper {
        if !wait_gone(pid, Duration::from_secs(10), cmdline, is_forward_helper) {
            tracing::warn!(pid, "the forward helper outlived QEMU; killing it");
            kill_if(pid, cmdline, is_forward_helper);
            wait_gone(pid, Duration::from_secs(5), cmdline, is_forward_helper);
        }
    }
    let table = state.join(FORWARD_TABLE);
    if let Ok(text) = fs::read_to_string(&table) {
        for (f, _) in parse_helper_table(&text).map(|t| t.0).unwrap_or_default() {
            // Only a socket: a file someone put there since is not ours.
            if fs::symlink_metadata(&f.host).is_ok_and(|m| m.file_type().is_socket()) {
                tracing::info!(path = %f.host.display(), "removing the forwarded socket");
                remove(&f.host)?;
            }
        }
    }
    for f in [FORWARD_PID, MONITOR_SOCKET, PID_FILE, REACH] {
        remove(&state.join(f))?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn fake(pid: i32, line: &'static str) -> impl Fn(i32) -> Option<Vec<u8>> {
        move |p| (p == pid).then(|| line.replace(' ', "\0").into_bytes())
    }

    #[test]
    fn only_a_live_qemu_counts() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        assert_eq!(live_qemu(dir.path(), proc_cmdline).unwrap(), None);
        fs::write(dir.path().join(PID_FILE), format!("{me}\n")).unwrap();
        let qemu = fake(me, "/usr/bin/qemu-system-x86_64 -daemonize");
        assert_eq!(live_qemu(dir.path(), qemu).unwrap(), Some(me));
        // This test process is no QEMU: a recycled pid is not the VM.
        assert_eq!(live_qemu(dir.path(), proc_cmdline).unwrap(), None);
        let osk = fake(me, "osk run qemu out/docker --detach");
        assert_eq!(live_qemu(dir.path(), osk).unwrap(), None);
        assert_eq!(live_qemu(dir.path(), |_| None).unwrap(), None);
        fs::write(dir.path().join(PID_FILE), "garbage").unwrap();
        assert_eq!(live_qemu(dir.path(), fake(me, "qemu")).unwrap(), None);
    }

    #[test]
    fn a_state_in_use_is_refused_before_it_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        fs::write(dir.path().join(PID_FILE), format!("{me}\n")).unwrap();
        // This test process is not QEMU: the state is free.
        check_state_free(dir.path()).unwrap();
        let err = Error::StateInUse {
            state: dir.path().to_path_buf(),
            pid: me,
        }
        .to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("osk run qemu --stop"), "{err}");
    }

    #[test]
    fn a_directory_without_a_vm_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = stop(&missing, Duration::ZERO).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("no such directory"),
            "{err}"
        );
        let err = stop(dir.path(), Duration::ZERO).unwrap_err().to_string();
        assert!(err.contains("--detach"), "{err}");
    }

    #[test]
    fn a_stopped_vm_is_already_stopped_and_its_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path();
        fs::write(st.join(CONSOLE_LOG), "booted\n").unwrap();
        fs::write(st.join(PID_FILE), "999999999\n").unwrap();
        fs::write(st.join(FORWARD_PID), "999999998\n").unwrap();
        fs::write(st.join(REACH), "socket x\n").unwrap();
        // A virtiofsd that ended, and the socket it left.
        fs::write(st.join("virtiofs0.pid"), "999999997\n").unwrap();
        fs::write(st.join("virtiofs0.sock"), "").unwrap();
        // The helper died without removing its socket; a plain file stays.
        let sock = st.join("docker.sock");
        let _l = UnixListener::bind(&sock).unwrap();
        let plain = st.join("plain");
        fs::write(&plain, "").unwrap();
        let table = format!(
            "4000\t/run/a.sock\t{}\n4001\t/run/b.sock\t{}\n",
            sock.display(),
            plain.display()
        );
        fs::write(st.join(FORWARD_TABLE), table).unwrap();
        let how = stop_with(st, Duration::ZERO, |_| None).unwrap();
        assert_eq!(how, Stopped::AlreadyStopped);
        for gone in [
            PID_FILE,
            FORWARD_PID,
            REACH,
            "virtiofs0.pid",
            "virtiofs0.sock",
        ] {
            assert!(!st.join(gone).exists(), "{gone} left");
        }
        assert!(!sock.exists() && plain.exists());
        assert!(st.join(CONSOLE_LOG).exists(), "the log is kept for reading");
        // Stopping again says the same.
        assert_eq!(stop(st, Duration::ZERO).unwrap(), Stopped::AlreadyStopped);
    }

    #[test]
    fn commands_are_told_apart() {
        assert!(is_qemu(b"qemu-system-aarch64\0-M\0virt"));
        assert!(!is_qemu(b"/usr/bin/osk\0run\0qemu\0x"));
        assert!(!is_qemu(b""));
        assert!(is_forward_helper(b"/usr/bin/osk\0run\0forward\0--state\0s"));
        assert!(!is_forward_helper(b"/usr/bin/osk\0run\0qemu\0forward"));
        assert!(is_virtiofsd(b"/usr/lib/qemu/virtiofsd\0--socket-path=/s"));
        assert!(!is_virtiofsd(b"/usr/bin/osk\0virtiofsd"));
    }
}
