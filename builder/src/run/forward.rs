//! `--forward-socket HOST_PATH:GUEST_PATH`: a unix socket in the guest
//! appears as a unix socket on the host, mode 0600.
//!
//! Where the host has `/dev/vhost-vsock` (Docker Desktop's way) the VM gets
//! a vsock device and the host dials the guest's `sockfwd` over AF_VSOCK.
//! Otherwise the way is QEMU's user network: each forward gets a free port
//! on the host's loopback, forwarded to a guest port where the `sockfwd`
//! service joins it to the guest socket (see `osk_layout::forward`).
//! Nothing listens on a non-loopback address. The
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

use osk_layout::forward::{self as table, Forward, Listen, Status};

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

/// How the host reaches the guest half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// A loopback port QEMU's user network forwards to the guest.
    #[default]
    UserNet,
    /// The guest's vsock device, context id `cid`.
    Vsock { cid: u32 },
}

/// Where the kernel offers vsock to VMs.
pub const VHOST_VSOCK: &str = "/dev/vhost-vsock";

/// Vsock when `/dev/vhost-vsock` opens read-write (QEMU needs that), with
/// a context id of this run's own; else the user network.
pub fn pick_transport() -> Transport {
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_VSOCK)
        .is_ok();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    transport_for(usable, std::process::id() ^ nanos.rotate_left(16))
}

fn transport_for(vhost_vsock: bool, seed: u32) -> Transport {
    if !vhost_vsock {
        return Transport::UserNet;
    }
    // CIDs are host-wide: 0-2 are reserved, u32::MAX is "any", two VMs differ.
    Transport::Vsock {
        cid: 3 + seed % (u32::MAX - 3),
    }
}

/// The table the guest reads.
pub fn guest_table(forwards: &[ForwardSocket], transport: Transport) -> String {
    let listen = match transport {
        Transport::UserNet => Listen::Tcp,
        Transport::Vsock { .. } => Listen::Vsock,
    };
    let rows: Vec<Forward> = forwards
        .iter()
        .enumerate()
        .map(|(i, f)| Forward {
            listen,
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
    transport: Transport,
}

impl Forwarder {
    /// Binds each host socket, mode 0600 from the start: bound under a
    /// temporary name, restricted, then renamed into place.
    pub fn bind(forwards: &[(ForwardSocket, u16)], transport: Transport) -> Result<Forwarder> {
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
        Ok(Forwarder { sockets, transport })
    }

    /// Serves until `alive` says false (checked every 500 ms), then removes
    /// the sockets.
    pub fn serve_while(self, alive: impl Fn() -> bool) {
        let paths: Vec<PathBuf> = self
            .sockets
            .iter()
            .map(|(f, _, _)| f.host.clone())
            .collect();
        let transport = self.transport;
        for (f, listener, port) in self.sockets {
            thread::spawn(move || accept_loop(&f, listener, transport, port));
        }
        while alive() {
            thread::sleep(Duration::from_millis(500));
        }
        for p in paths {
            let _ = fs::remove_file(p);
        }
    }
}

/// Whether a guest socket is out: the first failure after it answered (or
/// since the start) begins an outage, worth a warning; the next are not.
#[derive(Default)]
struct Outage(AtomicBool);

impl Outage {
    /// True when this failure begins an outage.
    fn failed(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
    /// True when this answer ends one.
    fn answered(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

fn accept_loop(f: &ForwardSocket, listener: UnixListener, transport: Transport, port: u16) {
    // A client retrying while the guest boots gets one warning, not one per try.
    let outage = Arc::new(Outage::default());
    for conn in listener.incoming() {
        match conn {
            Ok(unix) => {
                let (f, outage) = (f.clone(), outage.clone());
                thread::spawn(move || match handshake(transport, port, STATUS_TIMEOUT) {
                    Ok(tcp) => {
                        if outage.answered() {
                            tracing::info!("the guest socket {} answers again", f.guest);
                        }
                        if let Err(e) = join(unix, tcp) {
                            tracing::debug!("forward to {}: {e}", f.guest);
                        }
                    }
                    // Dropping `unix` closes the client's connection.
                    Err(why) if outage.failed() => tracing::warn!(
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

/// Connects to the guest half at `port` and reads its status line: the
/// connection, ready to carry the socket's bytes, or why not.
pub fn handshake(
    transport: Transport,
    port: u16,
    timeout: Duration,
) -> std::result::Result<GuestStream, String> {
    let mut guest = match transport {
        Transport::UserNet => TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .map(GuestStream::Tcp)
            .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?,
        Transport::Vsock { cid } => vsock_connect(cid, port)
            .map(GuestStream::Vsock)
            .map_err(|e| format!("connecting to vsock {cid}:{port}: {e}"))?,
    };
    guest
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    match Status::read(&mut guest) {
        Ok(Some(Status::Ok)) => {
            guest.set_read_timeout(None).map_err(|e| e.to_string())?;
            Ok(guest)
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
                // A last probe may have had less than a second.
                "no status from the guest's sockfwd service within {:.1} s",
                timeout.as_secs_f64()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The host's connection to the guest half.
#[derive(Debug)]
pub enum GuestStream {
    Tcp(TcpStream),
    /// std has no vsock stream; UnixStream's reads, writes, shutdown and
    /// dup are the plain socket calls a vsock stream takes too.
    Vsock(UnixStream),
}

impl GuestStream {
    fn try_clone(&self) -> io::Result<GuestStream> {
        Ok(match self {
            GuestStream::Tcp(s) => GuestStream::Tcp(s.try_clone()?),
            GuestStream::Vsock(s) => GuestStream::Vsock(s.try_clone()?),
        })
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            GuestStream::Tcp(s) => s.set_read_timeout(t),
            GuestStream::Vsock(s) => s.set_read_timeout(t),
        }
    }
    fn close_write(&self) {
        let _ = match self {
            GuestStream::Tcp(s) => s.shutdown(Shutdown::Write),
            GuestStream::Vsock(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl io::Read for GuestStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            GuestStream::Tcp(s) => s.read(buf),
            GuestStream::Vsock(s) => s.read(buf),
        }
    }
}

impl io::Write for GuestStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            GuestStream::Tcp(s) => s.write(buf),
            GuestStream::Vsock(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An AF_VSOCK stream to `cid:port`.
fn vsock_connect(cid: u32, port: u16) -> io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port.into();
    // SAFETY: `addr` is a sockaddr_vm and the length says so.
    let r = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Waits until every forward's guest socket answers, probing each through
/// the handshake; fails naming the first that stays silent for `timeout`,
/// or when `alive` (QEMU runs) turns false. `console` is where to look.
pub fn wait_answering(
    forwards: &[(ForwardSocket, u16)],
    transport: Transport,
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
            let why = match handshake(transport, *port, probe) {
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
fn join(unix: UnixStream, guest: GuestStream) -> io::Result<()> {
    let (mut unix_r, mut guest_w) = (unix.try_clone()?, guest.try_clone()?);
    let up = thread::spawn(move || {
        let r = io::copy(&mut unix_r, &mut guest_w);
        guest_w.close_write();
        r
    });
    let (mut guest_r, mut unix_w) = (guest, unix);
    let down = io::copy(&mut guest_r, &mut unix_w);
    let _ = unix_w.shutdown(Shutdown::Write);
    let _ = up.join();
    down.map(|_| ())
}

/// What a detached VM's helper needs: `vsock<TAB>CID` first when the
/// transport is vsock, then `PORT<TAB>GUEST_PATH<TAB>HOST_PATH` per line
/// (the guest path holds no tab; the host path comes last).
pub fn helper_table(forwards: &[(ForwardSocket, u16)], transport: Transport) -> String {
    let head = match transport {
        Transport::UserNet => String::new(),
        Transport::Vsock { cid } => format!("vsock\t{cid}\n"),
    };
    let rows = forwards
        .iter()
        .map(|(f, port)| format!("{port}\t{}\t{}\n", f.guest, f.host.display()));
    std::iter::once(head).chain(rows).collect()
}

/// Reads [`helper_table`] back.
pub fn parse_helper_table(text: &str) -> Option<(Vec<(ForwardSocket, u16)>, Transport)> {
    let mut transport = Transport::UserNet;
    let mut rows = Vec::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        let (port, rest) = l.split_once('\t')?;
        if port == "vsock" {
            transport = Transport::Vsock {
                cid: rest.parse().ok()?,
            };
            continue;
        }
        let (guest, host) = rest.split_once('\t')?;
        let f = ForwardSocket {
            host: PathBuf::from(host),
            guest: guest.to_string(),
        };
        rows.push((f, port.parse().ok()?));
    }
    Some((rows, transport))
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
        assert_eq!(
            guest_table(&f, Transport::UserNet),
            "2390\t/run/a.sock\n2391\t/run/b.sock\n"
        );
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
        let text = helper_table(&pairs, Transport::UserNet);
        assert_eq!(text, "40001\t/run/a.sock\t/h/a\tb.sock\n");
        assert_eq!(
            parse_helper_table(&text),
            Some((pairs.clone(), Transport::UserNet))
        );
        let vsock = Transport::Vsock { cid: 77 };
        let text = helper_table(&pairs, vsock);
        assert!(text.starts_with("vsock\t77\n"), "{text}");
        assert_eq!(parse_helper_table(&text), Some((pairs, vsock)));
        assert!("/h/a\nb.sock:/run/a.sock".parse::<ForwardSocket>().is_err());
    }

    #[test]
    fn vsock_only_with_vhost_vsock_and_never_a_reserved_cid() {
        assert_eq!(transport_for(false, 7), Transport::UserNet);
        for seed in [0, 1, 2, u32::MAX - 4, u32::MAX - 3, u32::MAX] {
            let Transport::Vsock { cid } = transport_for(true, seed) else {
                panic!("no vsock");
            };
            assert!((3..u32::MAX).contains(&cid), "{seed}: {cid}");
        }
        // This host has no /dev/vhost-vsock: the user network.
        if !Path::new(VHOST_VSOCK).exists() {
            assert_eq!(pick_transport(), Transport::UserNet);
        }
    }

    #[test]
    fn one_warning_per_outage() {
        let o = Outage::default();
        assert!(o.failed(), "the first failure warns");
        assert!(!o.failed() && !o.failed(), "retries during it do not");
        assert!(o.answered(), "the answer after it is told");
        assert!(!o.answered(), "later answers are not");
        assert!(o.failed(), "a new outage warns again");
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
        let fwd =
            Forwarder::bind(&[(forward(&path, "/run/a.sock"), port)], Transport::UserNet).unwrap();
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
        let why = handshake(Transport::UserNet, port, Duration::from_secs(5)).unwrap_err();
        assert_eq!(why, "the guest said: No such file or directory");
        let path = dir.path().join("fwd.sock");
        let (stop, server) = serve(
            Forwarder::bind(
                &[(forward(&path, "/var/run/docker.sock"), port)],
                Transport::UserNet,
            )
            .unwrap(),
        );
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
        let why = handshake(Transport::UserNet, port, Duration::from_millis(200)).unwrap_err();
        assert!(why.contains("no status") && why.contains("within"), "{why}");
        // Accepts and closes: QEMU's answer when nothing listens in the guest.
        thread::spawn(move || {
            for s in mute.incoming() {
                drop(s);
            }
        });
        let why = handshake(Transport::UserNet, port, Duration::from_secs(5)).unwrap_err();
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
            Transport::UserNet,
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
            Transport::UserNet,
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
        let e = wait_answering(
            &[silent],
            Transport::UserNet,
            Duration::from_secs(60),
            || false,
            &console,
        )
        .unwrap_err()
        .to_string();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(
            e.starts_with("QEMU exited before the guest socket /var/run/docker.sock"),
            "{e}"
        );
    }
}
