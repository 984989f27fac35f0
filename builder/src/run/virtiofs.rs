//! virtiofs for `--share`: choosing it over virtio-9p, finding a
//! virtiofsd and telling its two command-line dialects apart, and running
//! one per share for the life of the VM.
//!
//! virtiofs needs a daemon on the host, QEMU's guest memory shared with it
//! (a memfd backend), and in return keeps the guest's page cache coherent
//! and is much faster than 9p on metadata-heavy work (builds, `git status`).
//! 9p stays the fallback: it is built into QEMU and needs neither.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use osk_layout::share::Fs;

use super::names::MAX_SOCKET_PATH;
use super::{Error, Result, Share};

/// `--share-fs`: how host folders reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShareFs {
    /// virtiofs when a usable virtiofsd is found, else virtio-9p.
    #[default]
    Auto,
    NineP,
    Virtiofs,
}

impl FromStr for ShareFs {
    type Err = Error;
    fn from_str(s: &str) -> Result<ShareFs> {
        match s {
            "auto" => Ok(ShareFs::Auto),
            "9p" => Ok(ShareFs::NineP),
            "virtiofs" => Ok(ShareFs::Virtiofs),
            _ => Err(Error::InvalidFlag {
                flag: "--share-fs",
                value: s.to_string(),
                reason: "use auto, 9p or virtiofs".into(),
            }),
        }
    }
}

impl fmt::Display for ShareFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShareFs::Auto => "auto",
            ShareFs::NineP => "9p",
            ShareFs::Virtiofs => "virtiofs",
        })
    }
}

/// Where virtiofsd lives when it is not on PATH: the Rust one in current
/// distributions, then the C one QEMU up to 7.2 ships (Debian 12's
/// qemu-system-common).
const KNOWN_PATHS: [&str; 2] = ["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// The two virtiofsds' command lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The Rust virtiofsd (`--shared-dir`); `readonly` when it has `--readonly`.
    Rust { readonly: bool },
    /// QEMU's C virtiofsd (`-o source=`): root only, no read-only mode.
    Qemu,
}

/// A virtiofsd that was probed and can serve shares here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Virtiofsd {
    pub program: PathBuf,
    pub dialect: Dialect,
    /// Whether this process runs as root (the sandbox depends on it).
    pub root: bool,
}

impl Virtiofsd {
    /// Tells the dialect from `--help`; None if it is neither.
    pub fn dialect_of(help: &str) -> Option<Dialect> {
        if help.contains("--shared-dir") {
            Some(Dialect::Rust {
                readonly: help.contains("--readonly"),
            })
        } else if help.contains("source=PATH") {
            Some(Dialect::Qemu)
        } else {
            None
        }
    }

    /// Runs `program --help` and checks it can serve as this user.
    pub fn probe(program: &Path, root: bool) -> std::result::Result<Virtiofsd, String> {
        let out = Command::new(program)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        let mut help = String::from_utf8_lossy(&out.stdout).into_owned();
        help.push_str(&String::from_utf8_lossy(&out.stderr));
        let dialect = Self::dialect_of(&help).ok_or_else(|| {
            format!(
                "{} is not a virtiofsd osk knows (its --help names neither --shared-dir nor -o source=)",
                program.display()
            )
        })?;
        if dialect == Dialect::Qemu && !root {
            return Err(format!(
                "{} is QEMU's C virtiofsd, which runs only as root; install the Rust virtiofsd (`cargo install virtiofsd`, or your distribution's virtiofsd package) to share over virtiofs as a user",
                program.display()
            ));
        }
        Ok(Virtiofsd {
            program: program.to_path_buf(),
            dialect,
            root,
        })
    }

    /// `explicit` (`--virtiofsd`), else `virtiofsd` on PATH, else the
    /// distributions' places. The error says what was looked at and why
    /// none serves.
    pub fn find(explicit: Option<&Path>, root: bool) -> std::result::Result<Virtiofsd, String> {
        if let Some(p) = explicit {
            return Self::probe(p, root);
        }
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("virtiofsd"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mut why = Vec::new();
        for candidate in on_path
            .into_iter()
            .chain(KNOWN_PATHS.iter().map(PathBuf::from))
        {
            if !candidate.is_file() {
                continue;
            }
            match Self::probe(&candidate, root) {
                Ok(v) => return Ok(v),
                Err(e) => why.push(e),
            }
        }
        if why.is_empty() {
            why.push(format!(
                "no virtiofsd on PATH or in {}; install one (`cargo install virtiofsd`, or your distribution's virtiofsd or qemu-system-common package) or pass --virtiofsd PATH",
                KNOWN_PATHS.join(", ")
            ));
        }
        Err(why.join("; "))
    }

    /// Whether the daemon itself refuses writes to a read-only share (the
    /// guest's `ro` mount alone would be the guest's promise, not the host's).
    pub fn enforces_readonly(&self) -> bool {
        matches!(self.dialect, Dialect::Rust { readonly: true })
    }

    /// The daemon's arguments for serving `dir` on `socket`.
    pub fn argv(&self, dir: &Path, socket: &Path, readonly: bool) -> Vec<OsString> {
        let joined = |k: &str, v: &Path| {
            let mut s = OsString::from(k);
            s.push(v);
            s
        };
        let mut a = vec![joined("--socket-path=", socket)];
        match self.dialect {
            Dialect::Rust { .. } => {
                a.push(joined("--shared-dir=", dir));
                // Its namespace sandbox needs root (or a uid map); as a user
                // it sees only what the user sees anyway.
                if !self.root {
                    a.push("--sandbox=none".into());
                }
                a.extend(["--cache=auto".into(), "--announce-submounts".into()]);
                if readonly && self.enforces_readonly() {
                    a.push("--readonly".into());
                }
            }
            Dialect::Qemu => {
                a.extend(["-o".into(), joined("source=", dir)]);
                // pivot_root into the folder in new mount, pid and net namespaces.
                for opt in ["sandbox=namespace", "cache=auto", "announce_submounts"] {
                    a.extend(["-o".into(), opt.into()]);
                }
            }
        }
        a
    }
}

/// Decides each share's filesystem for `choice`: virtiofs where a
/// virtiofsd serves it (a read-only share only if the daemon enforces
/// read-only), 9p otherwise. Returns the daemon the virtiofs shares use.
pub fn plan(
    choice: ShareFs,
    explicit: Option<&Path>,
    root: bool,
    shares: &mut [Share],
) -> Result<Option<Virtiofsd>> {
    for s in shares.iter_mut() {
        s.fs = Fs::NineP;
    }
    if shares.is_empty() || choice == ShareFs::NineP {
        return Ok(None);
    }
    let daemon = match Virtiofsd::find(explicit, root) {
        Ok(d) => d,
        Err(reason) if choice == ShareFs::Virtiofs => {
            return Err(Error::InvalidFlag {
                flag: "--share-fs",
                value: "virtiofs".into(),
                reason,
            })
        }
        Err(reason) => {
            tracing::info!("shared folders use virtio-9p: {reason}");
            return Ok(None);
        }
    };
    let mut any = false;
    for s in shares.iter_mut() {
        if s.readonly && !daemon.enforces_readonly() {
            tracing::info!(
                "{} is read-only and {} cannot enforce that: it is shared over virtio-9p",
                s.host.display(),
                daemon.program.display()
            );
            continue;
        }
        s.fs = Fs::Virtiofs;
        any = true;
    }
    Ok(any.then_some(daemon))
}

/// The socket of the `index`th share's virtiofsd in the state directory.
pub fn socket_path(state: &Path, index: usize) -> PathBuf {
    state.join(format!("virtiofs{index}.sock"))
}

/// Its pid file and log.
pub fn pid_path(state: &Path, index: usize) -> PathBuf {
    state.join(format!("virtiofs{index}.pid"))
}
fn log_path(state: &Path, index: usize) -> PathBuf {
    state.join(format!("virtiofs{index}.log"))
}

/// Checks the sockets fit a unix socket address, before anything starts.
pub fn check_sockets(state: &Path, shares: &[Share]) -> Result<()> {
    for (i, s) in shares.iter().enumerate() {
        let sock = socket_path(state, i);
        if s.fs == Fs::Virtiofs && sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::InvalidFlag {
                flag: "--state",
                value: state.display().to_string(),
                reason: format!(
                    "the virtiofs socket {} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows; choose a shorter state directory",
                    sock.display()
                ),
            });
        }
    }
    Ok(())
}

/// The virtiofsds of one VM. They end by themselves when QEMU closes their
/// socket; a foreground run reaps them, a detached one leaves them to QEMU.
#[derive(Debug, Default)]
pub struct Daemons {
    children: Vec<(usize, Child)>,
    state: PathBuf,
}

/// How long a virtiofsd has to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// Starts a virtiofsd for each virtiofs share and waits for its socket.
/// On failure, those already started are stopped and the error quotes the
/// daemon's log.
pub fn start(daemon: Option<&Virtiofsd>, shares: &[Share], state: &Path) -> Result<Daemons> {
    let mut started = Daemons {
        children: Vec::new(),
        state: state.to_path_buf(),
    };
    let Some(daemon) = daemon else {
        return Ok(started);
    };
    for (i, s) in shares.iter().enumerate() {
        if s.fs != Fs::Virtiofs {
            continue;
        }
        if let Err(e) = start_one(daemon, s, i, state, &mut started) {
            started.kill();
            return Err(e);
        }
    }
    Ok(started)
}

fn start_one(
    daemon: &Virtiofsd,
    share: &Share,
    index: usize,
    state: &Path,
    started: &mut Daemons,
) -> Result<()> {
    let sock = socket_path(state, index);
    match fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&sock)(e)),
    }
    let log = log_path(state, index);
    let log_file = fs::File::create(&log).map_err(Error::io(&log))?;
    let stderr = log_file.try_clone().map_err(Error::io(&log))?;
    let args = daemon.argv(&share.host, &sock, share.readonly);
    tracing::debug!(program = %daemon.program.display(), ?args, "starting virtiofsd");
    let child = Command::new(&daemon.program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(stderr)
        // Its own process group: a Ctrl-C at the terminal is QEMU's to handle.
        .process_group(0)
        .spawn()
        .map_err(Error::io(&daemon.program))?;
    let pid = child.id();
    started.children.push((index, child));
    let pid_file = pid_path(state, index);
    fs::write(&pid_file, format!("{pid}\n")).map_err(Error::io(&pid_file))?;
    let deadline = Instant::now() + SOCKET_WAIT;
    loop {
        if sock.exists() {
            return Ok(());
        }
        let child = &mut started.children.last_mut().expect("just pushed").1;
        let exited = child.try_wait().map_err(Error::io(&daemon.program))?;
        if exited.is_some() || Instant::now() >= deadline {
            let text = fs::read(&log).unwrap_or_default();
            return Err(Error::Command {
                program: daemon.program.display().to_string(),
                message: format!(
                    "{} for --share {}: {}; its log ({}): {}",
                    match exited {
                        Some(status) => format!("exited ({status})"),
                        None => format!("made no socket in {} s", SOCKET_WAIT.as_secs()),
                    },
                    share.host.display(),
                    sock.display(),
                    log.display(),
                    crate::untrusted::quote(&text)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemons {
    /// After QEMU exited: up to `grace` for each to end (they do once QEMU
    /// has gone), then SIGKILL; then their sockets and pid files go.
    pub fn reap(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for (_, child) in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// Stops them now and removes their files.
    pub fn kill(&mut self) {
        for (i, mut child) in self.children.drain(..) {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
            let _ = fs::remove_file(socket_path(&self.state, i));
            let _ = fs::remove_file(pid_path(&self.state, i));
        }
    }

    /// Leaves them running with the detached VM (they end when it does).
    pub fn detach(mut self) {
        self.children.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(s: &str) -> Share {
        s.parse().unwrap()
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn dialects_are_told_by_their_help() {
        assert_eq!(
            Virtiofsd::dialect_of("  --shared-dir <SHARED_DIR>\n  --readonly\n"),
            Some(Dialect::Rust { readonly: true })
        );
        assert_eq!(
            Virtiofsd::dialect_of("  --shared-dir <SHARED_DIR>\n"),
            Some(Dialect::Rust { readonly: false })
        );
        assert_eq!(
            Virtiofsd::dialect_of("    -o source=PATH             shared directory tree\n"),
            Some(Dialect::Qemu)
        );
        assert_eq!(Virtiofsd::dialect_of("usage: cat"), None);
    }

    #[test]
    fn argv_per_dialect() {
        let d = Virtiofsd {
            program: "/usr/lib/qemu/virtiofsd".into(),
            dialect: Dialect::Qemu,
            root: true,
        };
        assert_eq!(
            strings(d.argv(
                Path::new("/h/My src"),
                Path::new("/st/virtiofs0.sock"),
                false
            )),
            [
                "--socket-path=/st/virtiofs0.sock",
                "-o",
                "source=/h/My src",
                "-o",
                "sandbox=namespace",
                "-o",
                "cache=auto",
                "-o",
                "announce_submounts",
            ]
        );
        let d = Virtiofsd {
            program: "virtiofsd".into(),
            dialect: Dialect::Rust { readonly: true },
            root: false,
        };
        assert_eq!(
            strings(d.argv(Path::new("/h/a"), Path::new("/st/v.sock"), true)),
            [
                "--socket-path=/st/v.sock",
                "--shared-dir=/h/a",
                "--sandbox=none",
                "--cache=auto",
                "--announce-submounts",
                "--readonly",
            ]
        );
    }

    /// A fake `DIR/virtiofsd`: a shell script running `body`.
    fn fake_virtiofsd(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("virtiofsd");
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn plan_picks_per_share_and_falls_back_to_9p() {
        let dir = tempfile::tempdir().unwrap();
        // It prints the C daemon's help line.
        let fake = fake_virtiofsd(
            dir.path(),
            "echo '    -o source=PATH             shared directory tree'",
        );
        let mut shares = vec![share("/h/a"), share("/h/b:/b,ro")];
        // The C daemon as root: the read-write share goes virtiofs, the
        // read-only one stays 9p (the daemon has no read-only mode).
        let d = plan(ShareFs::Auto, Some(&fake), true, &mut shares)
            .unwrap()
            .expect("a daemon");
        assert_eq!(d.dialect, Dialect::Qemu);
        assert_eq!((shares[0].fs, shares[1].fs), (Fs::Virtiofs, Fs::NineP));
        // 9p asked for: no daemon, all 9p.
        assert_eq!(
            plan(ShareFs::NineP, Some(&fake), true, &mut shares).unwrap(),
            None
        );
        assert_eq!((shares[0].fs, shares[1].fs), (Fs::NineP, Fs::NineP));
        // As a user, the C daemon cannot serve: auto falls back...
        assert_eq!(
            plan(ShareFs::Auto, Some(&fake), false, &mut shares).unwrap(),
            None
        );
        assert_eq!(shares[0].fs, Fs::NineP);
        // ... and virtiofs asked for is an error that says what to install.
        let e = plan(ShareFs::Virtiofs, Some(&fake), false, &mut shares)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--share-fs")
                && e.contains("only as root")
                && e.contains("cargo install virtiofsd"),
            "{e}"
        );
        let e = plan(
            ShareFs::Virtiofs,
            Some(Path::new("/no/such/virtiofsd")),
            true,
            &mut shares,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/no/such/virtiofsd"), "{e}");
    }

    #[test]
    fn a_daemon_that_enforces_read_only_serves_read_only_shares_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = fake_virtiofsd(
            dir.path(),
            "echo '      --shared-dir <DIR>'; echo '      --readonly'",
        );
        let mut shares = vec![share("/h/a"), share("/h/b:/b,ro")];
        // As a user: the Rust daemon runs unprivileged.
        let d = plan(ShareFs::Auto, Some(&p), false, &mut shares)
            .unwrap()
            .expect("a daemon");
        assert_eq!(d.dialect, Dialect::Rust { readonly: true });
        assert_eq!((shares[0].fs, shares[1].fs), (Fs::Virtiofs, Fs::Virtiofs));
    }

    #[test]
    fn a_daemon_that_dies_is_named_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let bad = fake_virtiofsd(dir.path(), "echo 'fuse: \x1b[31mno\x1b[0m' >&2; exit 3");
        let d = Virtiofsd {
            program: bad,
            dialect: Dialect::Rust { readonly: false },
            root: true,
        };
        let mut s = share("/h/a");
        s.fs = Fs::Virtiofs;
        let e = start(Some(&d), &[s], dir.path()).unwrap_err().to_string();
        assert!(e.contains("exited") && e.contains("--share /h/a"), "{e}");
        assert!(e.contains("fuse:") && !e.contains('\x1b'), "{e}");
        assert!(!pid_path(dir.path(), 0).exists(), "pid file left behind");
    }

    #[test]
    fn share_fs_values() {
        assert_eq!("9p".parse::<ShareFs>().unwrap(), ShareFs::NineP);
        assert_eq!(ShareFs::Virtiofs.to_string(), "virtiofs");
        let e = "nfs".parse::<ShareFs>().unwrap_err().to_string();
        assert!(
            e.contains("\"nfs\"") && e.contains("auto, 9p or virtiofs"),
            "{e}"
        );
    }
}
