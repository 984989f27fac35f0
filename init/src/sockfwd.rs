//! `osk-sockfwd`, the guest half of `osk run qemu --forward-socket`: for each
//! row of the fw_cfg table (see `osk_layout::forward`) it listens on the
//! row's TCP port and joins each connection to the row's unix socket,
//! after telling the host, in one status line, whether the socket answered.
//!
//! Only QEMU's user network reaches those ports from the host, and every
//! forwarded connection comes from that network's gateway. A container on a
//! bridge, or a process on the machine itself, has another address and is
//! refused, so the socket (Docker's API is root) is not opened to the guest's
//! own workloads. Where QEMU gave the machine a vsock device, a row may ask
//! for AF_VSOCK instead (`vsock:PORT`); then only the host's CID may connect.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;

use nix::sys::socket::{
    accept4, bind, getpeername, listen, socket, AddressFamily, Backlog, SockFlag, SockType,
    VsockAddr,
};
use osk_layout::forward::{Forward, Listen, Status, HOST_CID};

/// The default route's gateway in `/proc/net/route`'s text, if there is one.
pub fn default_gateway(route: &str) -> Option<Ipv4Addr> {
    route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags ...; the words are little-endian hex.
        if f.len() < 4 || f[1] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        (gw != 0).then(|| Ipv4Addr::from(gw.swap_bytes()))
    })
}

/// Whether a connection from `peer` may use the socket: only from the gateway.
pub fn allowed(peer: IpAddr, gateway: Option<Ipv4Addr>) -> bool {
    matches!((peer, gateway), (IpAddr::V4(p), Some(g)) if p == g)
}

/// Serves every forward until the process is stopped. Reads the gateway
/// at each connection: DHCP may set it after the service starts.
pub fn serve(forwards: Vec<Forward>, read_route: fn() -> String) -> io::Result<()> {
    let mut handles = Vec::new();
    for f in forwards {
        let named = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("listening on port {} for {}: {e}", f.port, f.path),
            )
        };
        match f.listen {
            Listen::Tcp => {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, f.port)).map_err(named)?;
                tracing::info!("forwarding port {} to {}", f.port, f.path);
                handles.push(thread::spawn(move || accept_loop(l, f, read_route)));
            }
            Listen::Vsock => {
                let l = vsock_listener(f.port).map_err(named)?;
                tracing::info!("forwarding vsock port {} to {}", f.port, f.path);
                handles.push(thread::spawn(move || vsock_accept_loop(l, f)));
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn vsock_listener(port: u16) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, port.into()),
    )?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

fn vsock_accept_loop(listener: OwnedFd, f: Forward) {
    loop {
        let raw = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("accepting on vsock port {}: {e}", f.port);
                continue;
            }
        };
        // SAFETY: accept4 just returned this descriptor; nothing else owns it.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        let peer = getpeername::<VsockAddr>(conn.as_raw_fd()).map(|a| a.cid());
        if peer != Ok(HOST_CID) {
            tracing::warn!(
                "refused a vsock connection to {} from CID {peer:?}: only the host may use it",
                f.path
            );
            continue;
        }
        // std has no vsock stream; UnixStream's reads, writes, shutdown and
        // dup are the plain socket calls a vsock stream takes too.
        let stream = UnixStream::from(conn);
        let path = f.path.clone();
        thread::spawn(move || {
            if let Err(e) = join(stream, &path) {
                tracing::warn!("forwarding to {path}: {e}");
            }
        });
    }
}

fn accept_loop(listener: TcpListener, f: Forward, read_route: fn() -> String) {
    for conn in listener.incoming() {
        let tcp = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accepting on port {}: {e}", f.port);
                continue;
            }
        };
        let peer = match tcp.peer_addr() {
            Ok(a) => a.ip(),
            Err(_) => continue,
        };
        let gateway = default_gateway(&read_route());
        if !allowed(peer, gateway) {
            tracing::warn!(
                "refused a connection to {} from {peer}: only the host (gateway {gateway:?}) may use it",
                f.path
            );
            continue;
        }
        let path = f.path.clone();
        thread::spawn(move || {
            if let Err(e) = join(tcp, &path) {
                tracing::warn!("forwarding to {path}: {e}");
            }
        });
    }
}

/// A connection from the host, TCP or vsock, that can be read and written
/// from two threads.
trait Duplex: Read + Write + Send + Sized + 'static {
    fn dup(&self) -> io::Result<Self>;
    fn close_write(&self);
}

impl Duplex for TcpStream {
    fn dup(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Duplex for UnixStream {
    fn dup(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Says whether `path` answered, then copies both ways until each side
/// has said all it had to.
fn join<S: Duplex>(mut tcp: S, path: &str) -> io::Result<()> {
    let unix = match UnixStream::connect(path) {
        Ok(u) => u,
        Err(e) => {
            let _ = tcp.write_all(&Status::Err(reason(&e)).encode());
            return Err(e);
        }
    };
    tcp.write_all(&Status::Ok.encode())?;
    let (mut tcp_r, mut unix_w) = (tcp.dup()?, unix.try_clone()?);
    let up = thread::spawn(move || {
        let r = io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
        r
    });
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let down = io::copy(&mut unix_r, &mut tcp_w);
    tcp_w.close_write();
    let _ = up.join();
    down.map(|_| ())
}

/// An io error's text without Rust's " (os error N)" suffix.
fn reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn the_gateway_is_the_default_routes() {
        assert_eq!(default_gateway(ROUTE), Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(default_gateway("Iface\tDestination\n"), None);
    }

    #[test]
    fn only_the_gateway_may_connect() {
        let gw = Some(Ipv4Addr::new(10, 0, 2, 2));
        assert!(allowed("10.0.2.2".parse().unwrap(), gw));
        // The machine itself, a container on Docker's bridge, no route yet.
        assert!(!allowed("10.0.2.15".parse().unwrap(), gw));
        assert!(!allowed("172.17.0.2".parse().unwrap(), gw));
        assert!(!allowed("10.0.2.2".parse().unwrap(), None));
    }

    /// A unix socket in `dir` that answers one connection with `echo:` and
    /// what it read.
    fn echo_server(dir: &std::path::Path) -> std::path::PathBuf {
        let sock = dir.join("echo.sock");
        let server = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            s.write_all(&[b"echo:".as_slice(), &buf].concat()).unwrap();
        });
        sock
    }

    #[test]
    fn joins_a_tcp_connection_to_a_unix_socket_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let sock = echo_server(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let path = sock.to_str().unwrap().to_string();
        thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            join(tcp, &path).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"ping").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"OK\necho:ping");
    }

    #[test]
    fn a_missing_socket_is_reported_then_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let p = path.to_str().unwrap().to_string();
        let guest = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            join(tcp, &p)
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "ERR No such file or directory\n");
        assert!(guest.join().unwrap().is_err());
    }

    #[test]
    fn a_vsock_like_stream_is_joined_the_same_way() {
        // A vsock connection is carried as a UnixStream; a socketpair stands in.
        let dir = tempfile::tempdir().unwrap();
        let sock = echo_server(dir.path());
        let (mut host, guest) = UnixStream::pair().unwrap();
        let path = sock.to_str().unwrap().to_string();
        thread::spawn(move || join(guest, &path).unwrap());
        host.write_all(b"ping").unwrap();
        host.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        host.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"OK\necho:ping");
    }
}
