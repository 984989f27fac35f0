//! `osk-shim-start`: answers containerd's `start` call for the runc shim
//! without a Go start-up.
//!
//! To create a task, containerd runs `containerd-shim-runc-v2 ... start` in
//! the bundle directory. That process only finds or makes the shim's socket
//! and, if no shim serves it yet, spawns the shim daemon with the socket as
//! fd 3; then it prints the socket's address and exits. It is a whole Go
//! program start-up per task, on the boot's critical path, and with every
//! service sharing one shim (see [`crate::containerd::client::SHIM_GROUP`]) all but
//! the first of them only find the socket already served.
//!
//! This front does the same steps as containerd 1.6/1.7's runc shim manager
//! (`runtime/v2/runc/manager`): the same socket address, the same `address`
//! file, the same daemon arguments, process group and OOM score. Anything it
//! does not handle itself (every other action, unknown flags, runtime
//! options on stdin, core scheduling) it hands to the real shim by exec, with
//! the same arguments and stdin. containerd finds it first in its PATH.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::sys::{RealSys, Signal, Sys};

mod fds;

/// The real shim, from Debian's containerd package.
pub const REAL_SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
/// Where the front is installed, under the shim's own name.
pub const FRONT_DIR: &str = "/usr/libexec/osk";
/// The shims' sockets: the shim's `defaults.DefaultStateDir` + "s", fixed in
/// the shim whatever containerd's own state directory is.
const SOCKET_DIR: &str = crate::paths::SHIM_SOCKET_DIR;
/// Annotations the runc shim groups containers by, in its order.
const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// A `start` call this front can answer itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub namespace: String,
    /// containerd's gRPC socket path (`-address`).
    pub address: String,
    pub id: String,
    pub debug: bool,
}

/// Parses the shim's command line (Go `flag` syntax: `-name value`,
/// `--name value`, `-name=value`, boolean `-debug`). `None` for anything but
/// a plain `start` with the flags containerd passes.
pub fn parse(args: &[OsString]) -> Option<Start> {
    let mut it = args.iter().map(|a| a.to_str());
    let (mut ns, mut address, mut id, mut debug) = (None, None, None, false);
    let mut action = None;
    while let Some(arg) = it.next() {
        let arg = arg?;
        let Some(flag) = arg.strip_prefix('-') else {
            action = Some(arg);
            break;
        };
        let flag = flag.strip_prefix('-').unwrap_or(flag);
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        if name == "debug" {
            debug = match inline {
                None | Some("true") | Some("1") => true,
                Some("false") | Some("0") => false,
                Some(_) => return None,
            };
            continue;
        }
        let value = match inline {
            Some(v) => v.to_string(),
            None => it.next()??.to_string(),
        };
        match name {
            "namespace" => ns = Some(value),
            "address" => address = Some(value),
            "id" => id = Some(value),
            // Only used to publish events, which the daemon does over ttrpc.
            "publish-binary" => {}
            // -socket, -bundle, -v and anything newer: the real shim's job.
            _ => return None,
        }
    }
    // Go's flag parsing stops at the action; more arguments are not ours.
    if action != Some("start") || it.next().is_some() {
        return None;
    }
    Some(Start {
        namespace: ns.filter(|n| !n.is_empty())?,
        address: address?,
        id: id.filter(|i| identifier(i))?,
        debug,
    })
}

/// containerd's identifier rule, which also keeps paths out of the socket
/// name's hash input.
fn identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// The shim that serves a container: the first grouping annotation of its
/// spec, else the container itself. `None` if the group is no identifier.
pub fn grouping(config_json: &[u8], id: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: std::collections::HashMap<String, String>,
    }
    let spec: Spec = serde_json::from_slice(config_json).ok()?;
    let group = GROUP_ANNOTATIONS
        .iter()
        .find_map(|k| spec.annotations.get(*k))
        .map_or(id, String::as_str);
    identifier(group).then(|| group.to_string())
}

/// The socket of a group's shim: `sha256(address/namespace/group)` (in
/// [`crate::paths::SHIM_SOCKET_DIR`]), as the shim's `SocketAddress` computes it.
pub fn socket_name(containerd_address: &str, namespace: &str, group: &str) -> String {
    let key = format!(
        "{}/{namespace}/{group}",
        containerd_address.trim_end_matches('/')
    );
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shim's `WriteAddress`: `address` in the bundle, replaced atomically.
fn write_address(bundle: &Path, address: &str) -> io::Result<()> {
    let tmp = bundle.join(".address");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    f.write_all(address.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, bundle.join("address"))
}

/// What [`start`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// A shim already served the group's socket.
    Joined(String),
    /// A new shim daemon, with its pid.
    Spawned(String, u32),
}

/// Where [`start`] works: the shim binary the daemon runs as, the bundle
/// (the daemon's working directory) and the sockets' directory.
#[derive(Debug, Clone, Copy)]
pub struct Paths<'a> {
    pub real: &'a Path,
    pub bundle: &'a Path,
    pub socket_dir: &'a Path,
}

impl Paths<'static> {
    /// A real `start` call: in the bundle, containerd's working directory.
    pub fn system() -> Self {
        Paths {
            real: Path::new(REAL_SHIM),
            bundle: Path::new("."),
            socket_dir: Path::new(SOCKET_DIR),
        }
    }
}

/// Finds or starts the shim that serves `s`'s group.
pub fn start(s: &Start, group: &str, at: Paths) -> io::Result<Started> {
    let path = at
        .socket_dir
        .join(socket_name(&s.address, &s.namespace, group));
    let address = format!("unix://{}", path.display());
    // Root's alone, as the Go shim makes it.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(at.socket_dir)?;
    // Services' tasks are created in parallel. Between another start's bind
    // and listen its socket refuses connections and would look stale here:
    // one start at a time per group (held until the daemon is spawned).
    let lock = fs::File::create(path.with_extension("lock"))?;
    let _lock = fds::lock_exclusive(lock)?;
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if fds::served(&path) {
                write_address(at.bundle, &address)?;
                return Ok(Started::Joined(address));
            }
            // A socket nobody serves: its shim died without cleaning up.
            fs::remove_file(&path)?;
            UnixListener::bind(&path)?
        }
        Err(e) => return Err(e),
    };
    let cleanup = |e: io::Error| {
        let _ = fs::remove_file(&path);
        e
    };
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(cleanup)?;
    write_address(at.bundle, &address).map_err(cleanup)?;
    let child = daemon_command(s, at, &listener).spawn().map_err(cleanup)?;
    let pid = child.id();
    if let Err(e) = adjust_oom_score(pid) {
        // As the Go shim does: a shim that containerd cannot account for
        // must not stay behind.
        let _ = RealSys.kill(pid as i32, Signal::SIGKILL);
        return Err(cleanup(e));
    }
    Ok(Started::Spawned(address, pid))
}

/// The daemon: the real shim with the listening socket as fd 3, in its own
/// process group, stdio on /dev/null (it logs to the bundle's `log` fifo).
fn daemon_command(s: &Start, at: Paths, listener: &UnixListener) -> Command {
    let mut cmd = Command::new(at.real);
    cmd.args([
        "-namespace",
        &s.namespace,
        "-id",
        &s.id,
        "-address",
        &s.address,
    ]);
    if s.debug {
        cmd.arg("-debug");
    }
    cmd.env("GOMAXPROCS", "4")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir(at.bundle)
        .process_group(0);
    fds::pass_as_fd3(&mut cmd, listener.as_raw_fd());
    cmd
}

/// The shim's `AdjustOOMScore`: one above its parent's (containerd's), so
/// the kernel kills a shim before containerd.
fn adjust_oom_score(pid: u32) -> io::Result<()> {
    let parent = std::os::unix::process::parent_id();
    let score: i32 = fs::read_to_string(format!("/proc/{parent}/oom_score_adj"))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        (score + 1).min(1000).to_string(),
    )
}

/// Replaces this process with the real shim, same arguments; `stdin`, if
/// already read here, becomes its standard input again. Returns only on
/// failure.
pub fn exec_real(real: &Path, args: &[OsString], stdin: Option<&[u8]>) -> io::Error {
    if let Some(data) = stdin {
        if let Err(e) = fds::restore_stdin(data) {
            return e;
        }
    }
    Command::new(real).args(args).exec()
}

/// The binary's whole job: answer `start` or hand over to the real shim.
/// Returns the exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    let at = Paths::system();
    let real = at.real;
    let handover = |stdin: Option<&[u8]>| {
        let e = exec_real(real, &args, stdin);
        eprintln!("osk-shim-start: exec {}: {e}", real.display());
        1
    };
    // stdin is read only for a call that is ours: `-v` on a terminal must
    // not wait for it.
    let Some(s) = parse(&args) else {
        return handover(None);
    };
    let mut stdin = Vec::new();
    if let Err(e) = io::stdin().read_to_end(&mut stdin) {
        eprintln!("osk-shim-start: reading the runtime options on stdin: {e}");
        return 1;
    }
    // Runtime options (a shim cgroup) and core scheduling: the real shim's.
    let group = fs::read("config.json")
        .ok()
        .and_then(|spec| grouping(&spec, &s.id))
        .filter(|_| stdin.is_empty() && std::env::var_os("SCHED_CORE").is_none());
    let Some(group) = group else {
        return handover(Some(&stdin));
    };
    match start(&s, &group, at) {
        Ok(Started::Joined(a) | Started::Spawned(a, _)) => {
            let mut out = io::stdout();
            match out.write_all(a.as_bytes()).and_then(|_| out.flush()) {
                Ok(()) => 0,
                Err(_) => 1,
            }
        }
        Err(e) => {
            eprintln!("osk-shim-start: shim for {} (group {group}): {e}", s.id);
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn containerd_start_call_is_parsed() {
        let s = parse(&os(&[
            "-namespace",
            "services.osk",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "demo",
            "start",
        ]))
        .unwrap();
        assert_eq!(
            s,
            Start {
                namespace: "services.osk".into(),
                address: "/run/containerd/containerd.sock".into(),
                id: "demo".into(),
                debug: false,
            }
        );
        let s = parse(&os(&[
            "--namespace=n",
            "-address",
            "/a",
            "-id=x",
            "-debug",
            "start",
        ]))
        .unwrap();
        assert!(s.debug);
        assert_eq!(s.id, "x");
    }

    #[test]
    fn everything_else_goes_to_the_real_shim() {
        let base = "-namespace n -address /a -id x";
        for line in [
            format!("{base} delete"),
            format!("{base} -bundle /b start"),
            format!("{base} -socket /s start"),
            format!("{base} start extra"),
            format!("{base} -debug=maybe start"),
            "-namespace n -address /a -id ../x start".into(),
            "-address /a -id x start".into(),
            "-namespace n -address /a -id".into(),
            "-v".into(),
            String::new(),
        ] {
            let args: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parse(&os(&args)), None, "{line}");
        }
        let empty_ns = ["-namespace", "", "-address", "/a", "-id", "x", "start"];
        assert_eq!(parse(&os(&empty_ns)), None);
    }

    #[test]
    fn group_comes_from_the_first_grouping_annotation() {
        let both = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod","io.containerd.runc.v2.group":"osk"}}"#;
        assert_eq!(grouping(both, "demo").as_deref(), Some("osk"));
        let cri = br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod"}}"#;
        assert_eq!(grouping(cri, "demo").as_deref(), Some("pod"));
        assert_eq!(
            grouping(br#"{"ociVersion":"1.0.2"}"#, "demo").as_deref(),
            Some("demo")
        );
        let bad = br#"{"annotations":{"io.containerd.runc.v2.group":"../etc"}}"#;
        assert_eq!(grouping(bad, "demo"), None);
        assert_eq!(grouping(b"not json", "demo"), None);
    }

    #[test]
    fn socket_is_where_the_go_shim_puts_it() {
        // `printf %s /run/containerd/containerd.sock/services.osk/osk |
        // sha256sum`, the input the shim's SocketAddress hashes; and the
        // name a running osk machine's shim listens on.
        assert_eq!(
            socket_name("/run/containerd/containerd.sock", "services.osk", "osk"),
            "481fc9b0f9af53bbb24aeb45873b4998ed3231a41cfe52de91593fed7ac7f499"
        );
    }

    /// A stand-in for the real shim's daemon: records its arguments, its
    /// working directory and what fd 3 is, then holds fd 3 open (serving
    /// the socket) until killed.
    fn fake_shim(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("fake-shim");
        fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"$* cwd=$(pwd) fd3=$(readlink /proc/self/fd/3 | cut -c1-7) pgid=$(cut -d' ' -f5 /proc/$$/stat) pid=$$\" > {}/spawned\nexec sleep 30\n",
                dir.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    fn wait_for(path: &Path) -> String {
        for _ in 0..200 {
            if let Ok(s) = fs::read_to_string(path) {
                if s.ends_with('\n') {
                    return s;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never written", path.display());
    }

    #[test]
    fn first_start_spawns_the_daemon_and_the_next_joins_it() {
        let dir = tempfile::tempdir().unwrap();
        let real = fake_shim(dir.path());
        let (b1, b2, sockets) = (
            dir.path().join("b1"),
            dir.path().join("b2"),
            dir.path().join("s"),
        );
        fs::create_dir(&b1).unwrap();
        fs::create_dir(&b2).unwrap();
        let call = |id: &str| Start {
            namespace: "services.osk".into(),
            address: "/run/containerd/containerd.sock".into(),
            id: id.into(),
            debug: true,
        };
        let at = |bundle| Paths {
            real: &real,
            bundle,
            socket_dir: &sockets,
        };
        let want = format!(
            "unix://{}/481fc9b0f9af53bbb24aeb45873b4998ed3231a41cfe52de91593fed7ac7f499",
            sockets.display()
        );

        let Started::Spawned(address, pid) = start(&call("demo"), "osk", at(&b1)).unwrap() else {
            panic!("no daemon spawned");
        };
        assert_eq!(address, want);
        assert_eq!(fs::read_to_string(b1.join("address")).unwrap(), want);
        assert!(!b1.join(".address").exists());
        let spawned = wait_for(&dir.path().join("spawned"));
        assert!(
            spawned.starts_with(
                "-namespace services.osk -id demo -address /run/containerd/containerd.sock -debug "
            ),
            "{spawned}"
        );
        assert!(
            spawned.contains(&format!("cwd={}", b1.display())),
            "{spawned}"
        );
        assert!(spawned.contains("fd3=socket:"), "{spawned}");
        assert!(
            spawned.contains(&format!("pgid={pid} pid={pid}")),
            "not its own group: {spawned}"
        );
        let oom = |p: u32| fs::read_to_string(format!("/proc/{p}/oom_score_adj")).unwrap();
        let parent: i32 = oom(std::process::id()).trim().parse().unwrap();
        assert_eq!(oom(pid).trim(), (parent + 1).min(1000).to_string());

        // The daemon holds the socket: a second container of the group
        // gets its address and no new process.
        let joined = start(&call("getty"), "osk", at(&b2)).unwrap();
        assert_eq!(joined, Started::Joined(want.clone()));
        assert_eq!(fs::read_to_string(b2.join("address")).unwrap(), want);

        // A dead daemon leaves its socket behind: the next start replaces it.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        fs::remove_file(dir.path().join("spawned")).unwrap();
        let Started::Spawned(_, again) = start(&call("getty"), "osk", at(&b2)).unwrap() else {
            panic!("a stale socket was joined");
        };
        assert!(wait_for(&dir.path().join("spawned")).contains("-id getty "));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(again as i32),
            nix::sys::signal::SIGKILL,
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(again as i32), None);
    }

    #[test]
    fn a_daemon_that_cannot_start_leaves_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("s");
        let missing = dir.path().join("no-such-shim");
        let call = Start {
            namespace: "n".into(),
            address: "/a".into(),
            id: "x".into(),
            debug: false,
        };
        let at = Paths {
            real: &missing,
            bundle: dir.path(),
            socket_dir: &sockets,
        };
        assert!(start(&call, "x", at).is_err());
        assert_eq!(sockets_in(&sockets), 0);
    }

    fn sockets_in(dir: &Path) -> usize {
        use std::os::unix::fs::FileTypeExt;
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_socket())
            .count()
    }

    #[test]
    fn parallel_starts_of_one_group_spawn_one_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let real = fake_shim(dir.path());
        let sockets = dir.path().join("s");
        let ids: Vec<String> = (0..8).map(|i| format!("svc{i}")).collect();
        for id in &ids {
            fs::create_dir(dir.path().join(id)).unwrap();
        }
        let results: Vec<Started> = std::thread::scope(|t| {
            let handles: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (real, sockets, bundle) = (&real, &sockets, dir.path().join(id));
                    t.spawn(move || {
                        let call = Start {
                            namespace: "services.osk".into(),
                            address: "/run/containerd/containerd.sock".into(),
                            id: id.clone(),
                            debug: false,
                        };
                        let at = Paths {
                            real,
                            bundle: &bundle,
                            socket_dir: sockets,
                        };
                        start(&call, "osk", at).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let spawned: Vec<u32> = results
            .iter()
            .filter_map(|r| match r {
                Started::Spawned(_, pid) => Some(*pid),
                Started::Joined(_) => None,
            })
            .collect();
        for pid in &spawned {
            let pid = nix::unistd::Pid::from_raw(*pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        assert_eq!(spawned.len(), 1, "{results:?}");
        assert_eq!(sockets_in(&sockets), 1);
    }
}
