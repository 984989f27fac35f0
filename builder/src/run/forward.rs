//! `--forward-socket HOST_PATH:GUEST_PATH`: a unix socket in the guest
//! appears as a unix socket on the host, mode 0600.
//!
//! This host has no vsock, so the way is QEMU's user network: each forward
//! gets a free port on the host's loopback, forwarded to a guest port where
//! the `sockfwd` service joins it to the guest socket (see
//! `osk_layout::forward`). Nothing listens on a non-loopback address. The
//! host half is a [`Forwarder`]: threads of `osk run` in the foreground, or
//! a helper process that `--detach` leaves behind and that ends, removing
//! its sockets, when QEMU does. Each connection starts with the guest's
//! status line, so a guest socket that is not there is named on the host.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use osk_layout::forward::{self as table, Forward, Status};

use super::{Error, Result};

/// One `--forward-socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSocket {
    pub host: PathBuf,
    pub guest: String,
}

fn invalid(value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidFlag {
        flag: "--forward-socket",
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl FromStr for ForwardSocket {
    type Err = Error;
    fn from_str(s: &str) -> Result<ForwardSocket> {
        // The guest path is absolute, so it starts at the last ":/".
        let (host, guest) = s
            .rfind(":/")
            .map(|i| (&s[..i], &s[i + 1..]))
            .ok_or_else(|| invalid(s, "wants HOST_PATH:GUEST_PATH, the guest path absolute"))?;
        if host.is_empty() {
            return Err(invalid(s, "the host path is empty"));
        }
        if host.contains('\n') {
            return Err(invalid(s, "the host path cannot hold a newline"));
        }
        if let Some(reason) = table::path_problem(guest) {
            return Err(invalid(s, reason));
        }
        let host = std::path::absolute(host).map_err(|e| invalid(s, e.to_string()))?;
        // sockaddr_un: 108 bytes with the NUL.
        if host.as_os_str().len() > 107 {
            return Err(invalid(
                s,
                "the host path is longer than a unix socket allows (107 bytes)",
            ));
        }
        Ok(ForwardSocket {
            host,
            guest: guest.to_string(),
        })
    }
}

/// The guest port of the `index`th forward.
pub fn guest_port(index: usize) -> u16 {
    table::FIRST_PORT + index as u16
}

/// The table the guest reads.
pub fn guest_table(forwards: &[ForwardSocket]) -> String {
    let rows: Vec<Forward> = forwards
        .iter()
        .enumerate()
        .map(|(i, f)| Forward {
            port: guest_port(i),
            path: f.guest.clone(),
        })
        .collect();
    table::encode(&rows)
}

/// `hostfwd` options of the user network: host loopback port → guest port.
pub fn hostfwds(host_ports: &[u16]) -> Vec<String> {
    host_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("hostfwd=tcp:127.0.0.1:{p}-:{}", guest_port(i)))
        .collect()
}

/// The fw_cfg argument carrying the table in `table_file`.
pub fn fw_cfg(table_file: &Path) -> Vec<OsString> {
    let mut fw = OsString::from(format!("name={},file=", table::FW_CFG_NAME));
    fw.push(super::config::escape_commas(table_file));
    vec!["-fw_cfg".into(), fw]
}

/// A free port on the host's loopback (free now; QEMU binds it next).
pub fn free_loopback_port() -> Result<u16> {
    let l =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::io(Path::new("127.0.0.1:0")))?;
    Ok(l.local_addr()
        .map_err(Error::io(Path::new("127.0.0.1:0")))?
        .port())
}

/// Makes `path` free for a new socket: a socket nobody answers on is
/// removed; one that answers, or anything that is not a socket, is an error.
pub fn claim(path: &Path) -> Result<()> {
    let in_use = |reason: &str| invalid(&path.display().to_string(), reason);
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path)(e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(in_use(
                "it exists and is not a socket; remove it or choose another path",
            ))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(in_use(
                "a socket there is in use (another VM?); stop it or choose another path",
            ))
        }
        Ok(_) => fs::remove_file(path).map_err(Error::io(path))?,
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(Error::io(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(Error::io(dir))?;
        }
    }
    Ok(())
}

/// How long the guest half may take to say whether its socket answered.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// The same while waiting for a booting guest, and the pause between tries.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The host half: one listening socket per forward.
pub struct Forwarder {
    sockets: Vec<(ForwardSocket, UnixListener, u16)>,
}

impl Forwarder {
    /// Binds each host socket, mode 0600 from the start: bound under a
    /// temporary name, restricted, then renamed into place.
    pub fn bind(forwards: &[(ForwardSocket, u16)]) -> Result<Forwarder> {
        let mut sockets = Vec::new();
        for (f, port) in forwards {
            let path = &f.host;
            claim(path)?;
            let mut tmp = path.clone().into_os_string();
            tmp.push(".osk-tmp");
            let tmp = PathBuf::from(tmp);
            let _ = fs::remove_file(&tmp);
            let l = UnixListener::bind(&tmp).map_err(Error::io(&tmp))?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
                .map_err(Error::io(&tmp))?;
            fs::rename(&tmp, path).map_err(Error::io(path))?;
            sockets.push((f.clone(), l, *port));
        }
        Ok(Forwarder { sockets })
    }

    /// Serves until `alive` says false (checked every 500 ms), then removes
    /// the sockets.
    pub fn serve_while(self, alive: impl Fn() -> bool) {
        let paths: Vec<PathBuf> = self
            .sockets
            .iter()
            .map(|(f, _, _)| f.host.clone())
            .collect();
        for (f, listener, port) in self.sockets {
            thread::spawn(move || accept_loop(&f, listener, port));
        }
        while alive() {
            thread::sleep(Duration::from_millis(500));
        }
        for p in paths {
            let _ = fs::remove_file(p);
        }
    }
}

fn accept_loop(f: &ForwardSocket, listener: UnixListener, port: u16) {
    // Warned about this outage already: a client retrying while the guest
    // boots, or its service restarts, gets one warning, not one per try.
    let warned = Arc::new(AtomicBool::new(false));
    for conn in listener.incoming() {
        match conn {
            Ok(unix) => {
                let (f, warned) = (f.clone(), warned.clone());
                thread::spawn(move || match handshake(port, STATUS_TIMEOUT) {
                    Ok(tcp) => {
                        if warned.swap(false, Ordering::Relaxed) {
                            tracing::info!("the guest socket {} answers again", f.guest);
                        }
                        if let Err(e) = join(unix, tcp) {
                            tracing::debug!("forward to {}: {e}", f.guest);
                        }
                    }
                    // Dropping `unix` closes the client's connection.
                    Err(why) if !warned.swap(true, Ordering::Relaxed) => tracing::warn!(
                        "{}: the guest socket {} did not answer ({why}); is its service running?",
                        f.host.display(),
                        f.guest
                    ),
                    Err(why) => tracing::debug!("{}: {why}", f.guest),
                });
            }
            Err(e) => tracing::warn!("accepting on {}: {e}", f.host.display()),
        }
    }
}

/// Connects to the guest half on the loopback `port` and reads its status
/// line: the connection, ready to carry the socket's bytes, or why not.
pub fn handshake(port: u16, timeout: Duration) -> std::result::Result<TcpStream, String> {
    let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    match Status::read(&mut tcp) {
        Ok(Some(Status::Ok)) => {
            tcp.set_read_timeout(None).map_err(|e| e.to_string())?;
            Ok(tcp)
        }
        Ok(Some(Status::Err(reason))) => Err(format!("the guest said: {reason}")),
        // QEMU accepts for the guest, and closes when nothing listens there.
        Ok(None) => {
            Err("the guest's sockfwd service closed the connection without a status".into())
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "no status from the guest's sockfwd service within {} s",
                timeout.as_secs()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Waits until every forward's guest socket answers, probing each through
/// the handshake; fails naming the first that stays silent for `timeout`,
/// or when `alive` (QEMU runs) turns false. `console` is where to look.
pub fn wait_answering(
    forwards: &[(ForwardSocket, u16)],
    timeout: Duration,
    alive: impl Fn() -> bool,
    console: &Path,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for (f, port) in forwards {
        loop {
            // Never a zero read timeout, which the socket refuses.
            let left = deadline.saturating_duration_since(Instant::now());
            let probe = left.clamp(Duration::from_millis(100), PROBE_TIMEOUT);
            let why = match handshake(*port, probe) {
                Ok(_) => break,
                Err(why) => why,
            };
            if !alive() {
                return Err(Error::ExitedBeforeSocket {
                    guest: f.guest.clone(),
                    host: f.host.clone(),
                    console: console.to_path_buf(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::GuestSocketSilent {
                    guest: f.guest.clone(),
                    host: f.host.clone(),
                    seconds: timeout.as_secs(),
                    reason: why,
                    console: console.to_path_buf(),
                });
            }
            thread::sleep(PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now())));
        }
        tracing::info!(guest = %f.guest, host = %f.host.display(), "the guest socket answers");
    }
    Ok(())
}

/// Copies both ways until each side has said all it had to.
fn join(unix: UnixStream, tcp: TcpStream) -> io::Result<()> {
    let (mut unix_r, mut tcp_w) = (unix.try_clone()?, tcp.try_clone()?);
    let up = thread::spawn(move || {
        let r = io::copy(&mut unix_r, &mut tcp_w);
        let _ = tcp_w.shutdown(Shutdown::Write);
        r
    });
    let (mut tcp_r, mut unix_w) = (tcp, unix);
    let down = io::copy(&mut tcp_r, &mut unix_w);
    let _ = unix_w.shutdown(Shutdown::Write);
    let _ = up.join();
    down.map(|_| ())
}

/// What a detached VM's helper needs: `PORT<TAB>GUEST_PATH<TAB>HOST_PATH`
/// per line (the guest path holds no tab; the host path comes last).
pub fn helper_table(forwards: &[(ForwardSocket, u16)]) -> String {
    forwards
        .iter()
        .map(|(f, port)| format!("{port}\t{}\t{}\n", f.guest, f.host.display()))
        .collect()
}

/// Reads [`helper_table`] back.
pub fn parse_helper_table(text: &str) -> Option<Vec<(ForwardSocket, u16)>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (port, rest) = l.split_once('\t')?;
            let (guest, host) = rest.split_once('\t')?;
            let f = ForwardSocket {
                host: PathBuf::from(host),
                guest: guest.to_string(),
            };
            Some((f, port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn parses_host_and_guest_paths() {
        let f: ForwardSocket = "/home/me/.osk/docker.sock:/var/run/docker.sock"
            .parse()
            .unwrap();
        assert_eq!(f.host, Path::new("/home/me/.osk/docker.sock"));
        assert_eq!(f.guest, "/var/run/docker.sock");
        let e = "/a.sock".parse::<ForwardSocket>().unwrap_err().to_string();
        assert!(e.contains("HOST_PATH:GUEST_PATH"), "{e}");
        assert!(":/var/run/docker.sock".parse::<ForwardSocket>().is_err());
        let long = format!("/{}:/g.sock", "x".repeat(120));
        assert!(long
            .parse::<ForwardSocket>()
            .unwrap_err()
            .to_string()
            .contains("107"));
    }

    #[test]
    fn ports_and_table_match_row_for_row() {
        let f: Vec<ForwardSocket> = ["/h/a.sock:/run/a.sock", "/h/b.sock:/run/b.sock"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(guest_table(&f), "2390\t/run/a.sock\n2391\t/run/b.sock\n");
        assert_eq!(
            hostfwds(&[40001, 40002]),
            [
                "hostfwd=tcp:127.0.0.1:40001-:2390",
                "hostfwd=tcp:127.0.0.1:40002-:2391"
            ]
        );
        let pairs = vec![(
            ForwardSocket {
                host: PathBuf::from("/h/a\tb.sock"),
                guest: "/run/a.sock".into(),
            },
            40001,
        )];
        assert_eq!(helper_table(&pairs), "40001\t/run/a.sock\t/h/a\tb.sock\n");
        assert_eq!(parse_helper_table(&helper_table(&pairs)), Some(pairs));
        assert!("/h/a\nb.sock:/run/a.sock".parse::<ForwardSocket>().is_err());
    }

    #[test]
    fn a_socket_in_use_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        let live = UnixListener::bind(&path).unwrap();
        let e = claim(&path).unwrap_err().to_string();
        assert!(e.contains("in use") && e.contains("x.sock"), "{e}");
        drop(live);
        // The file of a closed listener is stale: claimed.
        claim(&path).unwrap();
        assert!(!path.exists());
        fs::write(&path, "not a socket").unwrap();
        assert!(claim(&path)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
    }

    /// A guest half on a loopback port: answers `status` to every
    /// connection and, after OK, echoes what it read, prefixed.
    fn fake_guest(status: Status) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                s.write_all(&status.encode()).unwrap();
                if status != Status::Ok {
                    continue;
                }
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                s.write_all(&[b"guest:".as_slice(), &buf].concat()).unwrap();
            }
        });
        port
    }

    fn serve(f: Forwarder) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let server = thread::spawn(move || f.serve_while(|| !s2.load(Ordering::SeqCst)));
        (stop, server)
    }

    fn forward(host: &Path, guest: &str) -> ForwardSocket {
        ForwardSocket {
            host: host.to_path_buf(),
            guest: guest.into(),
        }
    }

    #[test]
    fn forwards_a_connection_to_the_port_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let port = fake_guest(Status::Ok);
        let path = dir.path().join("sub/fwd.sock");
        let fwd = Forwarder::bind(&[(forward(&path, "/run/a.sock"), port)]).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (stop, server) = serve(fwd);
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"hello").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        // The status line is the host half's, not the client's.
        assert_eq!(got, b"guest:hello");
        stop.store(true, Ordering::SeqCst);
        server.join().unwrap();
        assert!(!path.exists(), "the socket outlived the forwarder");
    }

    #[test]
    fn a_guest_socket_that_is_not_there_closes_the_client_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let port = fake_guest(Status::Err("No such file or directory".into()));
        let why = handshake(port, Duration::from_secs(5)).unwrap_err();
        assert_eq!(why, "the guest said: No such file or directory");
        let path = dir.path().join("fwd.sock");
        let (stop, server) =
            serve(Forwarder::bind(&[(forward(&path, "/var/run/docker.sock"), port)]).unwrap());
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"GET /_ping HTTP/1.1\r\n\r\n").unwrap();
        // Closed: at its end, or reset since the request was never read.
        let mut got = Vec::new();
        match c.read_to_end(&mut got) {
            Ok(_) => assert!(got.is_empty(), "{got:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
        stop.store(true, Ordering::SeqCst);
        server.join().unwrap();
    }

    #[test]
    fn silence_and_a_closed_port_are_told_apart() {
        // Accepts and says nothing: a guest half that hangs.
        let mute = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = mute.local_addr().unwrap().port();
        let why = handshake(port, Duration::from_millis(200)).unwrap_err();
        assert!(why.contains("no status") && why.contains("within"), "{why}");
        // Accepts and closes: QEMU's answer when nothing listens in the guest.
        thread::spawn(move || {
            for s in mute.incoming() {
                drop(s);
            }
        });
        let why = handshake(port, Duration::from_secs(5)).unwrap_err();
        assert!(why.contains("closed the connection"), "{why}");
    }

    #[test]
    fn waiting_ends_when_the_socket_answers_and_names_it_when_it_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let ok = (
            forward(Path::new("/h/ok.sock"), "/run/ok.sock"),
            fake_guest(Status::Ok),
        );
        wait_answering(
            std::slice::from_ref(&ok),
            Duration::from_secs(5),
            || true,
            &console,
        )
        .unwrap();

        let silent = (
            forward(Path::new("/h/docker.sock"), "/var/run/docker.sock"),
            fake_guest(Status::Err("No such file or directory".into())),
        );
        let t = Instant::now();
        let e = wait_answering(
            &[ok, silent.clone()],
            Duration::from_secs(1),
            || true,
            &console,
        )
        .unwrap_err()
        .to_string();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(
            e,
            format!(
                "the guest socket /var/run/docker.sock (host /h/docker.sock) did not answer within 1 s \
                 (the guest said: No such file or directory); is its service running? see {}",
                console.display()
            )
        );
        // QEMU gone: said at once, not after the timeout.
        let t = Instant::now();
        let e = wait_answering(&[silent], Duration::from_secs(60), || false, &console)
            .unwrap_err()
            .to_string();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(
            e.starts_with("QEMU exited before the guest socket /var/run/docker.sock"),
            "{e}"
        );
    }
}
