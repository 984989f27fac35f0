//! A minimal HTTP/1.1 client for the metadata service: one request per
//! connection, a deadline over every step, a cap on the answer's size. The
//! answer's bytes are never put into an error: they are untrusted.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The largest answer read. OpenStack caps user data at 64 KiB and EC2 at
/// 16 KiB; both are base64 on the way in, so this leaves room to spare.
pub const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {addr}: {cause}")]
    Connect { addr: SocketAddr, cause: io::Error },
    #[error("talking to {addr}: {cause}")]
    Io { addr: SocketAddr, cause: io::Error },
    #[error("{addr}: no complete answer within {:.1}s", .timeout.as_secs_f64())]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: not an HTTP answer ({reason})")]
    Malformed {
        addr: SocketAddr,
        reason: &'static str,
    },
    #[error("{addr}: answer larger than {limit} bytes")]
    TooLarge { addr: SocketAddr, limit: usize },
}

/// Status code and body of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends `METHOD path` with `headers` to `addr` and reads the answer, all
/// within `timeout`; answers over `limit` bytes are refused.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    limit: usize,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let io = |cause| HttpError::Io { addr, cause };
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|cause| HttpError::Connect { addr, cause })?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(&request_bytes(addr, method, path, headers))
        .map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout { addr, timeout });
        }
        s.set_read_timeout(Some(left)).map_err(io)?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HttpError::Timeout { addr, timeout })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > limit {
            return Err(HttpError::TooLarge { addr, limit });
        }
        let eof = n == 0;
        match parse(&buf, eof) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) if eof => {
                return Err(HttpError::Malformed {
                    addr,
                    reason: "connection closed mid-answer",
                })
            }
            Ok(None) => {}
            Err(reason) => return Err(HttpError::Malformed { addr, reason }),
        }
    }
}

fn request_bytes(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: osk-metadata\r\nAccept: */*\r\nConnection: close\r\n",
        addr.ip()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The answer in `buf` once it is complete; `eof` says the peer closed (so
/// a body without a length ends here).
fn parse(buf: &[u8], eof: bool) -> Result<Option<Response>, &'static str> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "header not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("no HTTP/1.x status line");
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or("bad status code")?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("header line without ':'")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let rest = &buf[end + 4..];
    let body = if chunked {
        match dechunk(rest)? {
            Some(b) => b,
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if rest.len() < n {
            return Ok(None);
        }
        rest[..n].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, body }))
}

/// A chunked body, once its last chunk has arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_field = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers are ignored; the answer is complete once they end.
            return Ok(find(rest, b"\r\n").map(|_| body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF");
        }
        rest = &rest[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn ok(status: u16, body: &[u8]) -> Option<Response> {
        Some(Response {
            status,
            body: body.to_vec(),
        })
    }

    #[test]
    fn content_length_bodies_end_at_their_length() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(a, false).unwrap(), ok(200, b"hello"));
        assert_eq!(parse(&a[..a.len() - 1], false).unwrap(), None);
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n", false).unwrap(), None);
    }

    #[test]
    fn bodies_without_length_end_at_close() {
        let a = b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nnope";
        assert_eq!(parse(a, false).unwrap(), None);
        assert_eq!(parse(a, true).unwrap(), ok(404, b"nope"));
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let a = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(a, false).unwrap(), ok(200, b"abcde"));
        assert_eq!(parse(&a[..a.len() - 2], false).unwrap(), None);
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(parse(bad, false), Err("bad chunk size"));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
        assert!(parse(b"HTTP/1.1 abc\r\n\r\n", true).is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", true).is_err());
    }

    /// Serves `answer` once on loopback; returns the address and the request it got.
    fn serve(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap() == 1 {
                req.push(b[0]);
            }
            // The client may hang up first (an oversized answer).
            let _ = c.write_all(answer);
            String::from_utf8(req).unwrap()
        });
        (addr, t)
    }

    #[test]
    fn requests_over_tcp() {
        let (addr, t) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        let r = request(
            addr,
            "PUT",
            "/latest/api/token",
            &[("X-Test", "1")],
            Duration::from_secs(30),
            MAX_ANSWER,
        )
        .unwrap();
        assert_eq!(r, ok(200, b"hi").unwrap());
        let req = t.join().unwrap();
        assert!(req.starts_with("PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"));
        assert!(req.contains("\r\nX-Test: 1\r\n") && req.contains("Content-Length: 0"));
    }

    #[test]
    fn oversized_answers_are_refused() {
        static BIG: [u8; 4096] = [b'x'; 4096];
        let (addr, t) = serve(&BIG);
        let e = request(addr, "GET", "/", &[], Duration::from_secs(30), 100).unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { limit: 100, .. }), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn refused_connections_name_the_address() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = request(addr, "GET", "/", &[], Duration::from_secs(5), 100).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("connecting to {addr}")),
            "{e}"
        );
    }
}
