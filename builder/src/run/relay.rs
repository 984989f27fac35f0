//! The host end of `osk run qemu --metadata-server`: QEMU's user network
//! starts `osk run metadata-relay HOST:PORT` for each connection the guest
//! opens to 169.254.169.254:80, with that connection as its stdin, stdout
//! and stderr; this copies it both ways to the server on the host.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// How long the host server may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies `guest_in` to the server at `addr` and its answer to `guest_out`
/// until the server closes. A server that cannot be reached gets the guest
/// a `502 Bad Gateway` (which it retries), since anything written to
/// stderr here would reach the guest as its answer too.
pub fn relay<R, W>(addr: &str, mut guest_in: R, mut guest_out: W) -> io::Result<()>
where
    R: Read + Send + 'static,
    W: Write,
{
    let server = match connect(addr) {
        Ok(s) => s,
        Err(_) => {
            guest_out.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            return guest_out.flush();
        }
    };
    let mut upstream = server.try_clone()?;
    // Not joined: the guest may keep its half open after the answer.
    std::thread::spawn(move || {
        let _ = io::copy(&mut guest_in, &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut downstream = &server;
    io::copy(&mut downstream, &mut guest_out)?;
    guest_out.flush()
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in std::net::ToSocketAddrs::to_socket_addrs(addr)? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn copies_a_request_and_its_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = String::new();
            c.read_to_string(&mut req).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\n\r\nhi").unwrap();
            req
        });
        let mut out = Vec::new();
        relay(&addr, io::Cursor::new(b"GET / HTTP/1.1\r\n\r\n"), &mut out).unwrap();
        assert_eq!(out, b"HTTP/1.1 200 OK\r\n\r\nhi");
        assert_eq!(server.join().unwrap(), "GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn an_unreachable_server_is_a_bad_gateway() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut out = Vec::new();
        relay(&addr, io::empty(), &mut out).unwrap();
        assert!(out.starts_with(b"HTTP/1.1 502 "), "{out:?}");
    }
}
