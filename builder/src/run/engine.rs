//! A small client of the Docker Engine API over its unix socket: a GET, and
//! the events stream. HTTP/1.1 with `Content-Length`, chunked, or
//! read-to-close bodies; nothing more is needed to follow containers.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The API version osk asks for: Debian 12's dockerd (20.10) speaks it.
pub const API_VERSION: &str = "/v1.41";

/// How long the engine may take to send a response's head (and, for a GET,
/// its body).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to the engine; names the socket and the request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the Docker API at {}: GET {path}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the Docker API at {}: GET {path}: {reason}", socket.display())]
    Http {
        socket: PathBuf,
        path: String,
        reason: String,
    },
    #[error("the Docker API at {} does not answer yet", socket.display())]
    NotAnswering { socket: PathBuf },
}

/// `GET path` (under [`API_VERSION`]); the body of a 200 answer.
pub fn get(socket: &Path, path: &str) -> Result<Vec<u8>, ApiError> {
    let mut conn = Conn::open(socket, path)?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while !conn.body.complete() {
        if !conn.fill()? {
            if conn.body.length.is_none() && !conn.body.chunked {
                break; // read-to-close body: the end is the end
            }
            return Err(conn.http("the connection closed in the middle of the body"));
        }
        if Instant::now() >= deadline {
            return Err(conn.http("no whole answer within 30 s"));
        }
    }
    Ok(std::mem::take(&mut conn.body.data))
}

/// An open `GET /events` stream: one JSON object per line.
pub struct Events {
    conn: Conn,
}

impl Events {
    /// Sends the request and reads the answer's head. Afterwards reads wait
    /// at most `poll`, so the caller can look around between events.
    pub fn open(socket: &Path, path: &str, poll: Duration) -> Result<Events, ApiError> {
        let conn = Conn::open(socket, path)?;
        conn.stream
            .set_read_timeout(Some(poll))
            .map_err(|e| conn.io(e))?;
        Ok(Events { conn })
    }

    /// The next event's line; `None` when `poll` passed without a whole one.
    /// The stream ending is an error: the engine went away.
    pub fn next(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        loop {
            if let Some(line) = self.conn.body.take_line() {
                return Ok(Some(line));
            }
            if self.conn.body.complete() {
                return Err(self.conn.http("the event stream ended"));
            }
            match self.conn.fill() {
                Ok(true) => {}
                Ok(false) => return Err(self.conn.http("the event stream ended")),
                Err(ApiError::Io { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One request's connection, its head read, its body arriving in `body`.
struct Conn {
    socket: PathBuf,
    path: String,
    stream: UnixStream,
    body: Body,
}

impl Conn {
    fn open(socket: &Path, path: &str) -> Result<Conn, ApiError> {
        let full = format!("{API_VERSION}{path}");
        let io = |source| ApiError::Io {
            socket: socket.to_path_buf(),
            path: full.clone(),
            source,
        };
        let mut stream = UnixStream::connect(socket).map_err(io)?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        write!(
            stream,
            "GET {full} HTTP/1.1\r\nHost: docker\r\nUser-Agent: osk\r\nConnection: close\r\n\r\n"
        )
        .map_err(io)?;
        let mut conn = Conn {
            socket: socket.to_path_buf(),
            path: full,
            stream,
            body: Body::default(),
        };
        let mut head = Vec::new();
        let end = loop {
            if let Some(i) = find(&head, b"\r\n\r\n") {
                break i;
            }
            let mut buf = [0u8; 4096];
            match conn.stream.read(&mut buf) {
                Ok(0) => return Err(conn.http("the connection closed before an answer")),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return Err(conn.io(e)),
            }
            if head.len() > 64 << 10 {
                return Err(conn.http("an answer head longer than 64 KiB"));
            }
        };
        let rest = head.split_off(end + 4);
        conn.read_head(&String::from_utf8_lossy(&head))?;
        conn.body.push(&rest).map_err(|r| conn.http(r))?;
        Ok(conn)
    }

    fn read_head(&mut self, head: &str) -> Result<(), ApiError> {
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code != "200" {
            let shown: String = status
                .chars()
                .filter(|c| !c.is_control())
                .take(80)
                .collect();
            return Err(self.http(&format!("answered {shown:?}")));
        }
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                self.body.chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .parse()
                    .map_err(|_| self.http("a Content-Length that is not a number"))?;
                self.body.length = Some(n);
            }
        }
        Ok(())
    }

    /// Reads what has arrived into the body; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, ApiError> {
        let mut buf = [0u8; 16 << 10];
        let n = self.stream.read(&mut buf).map_err(|e| self.io(e))?;
        self.body.push(&buf[..n]).map_err(|r| self.http(r))?;
        Ok(n > 0)
    }

    fn io(&self, source: io::Error) -> ApiError {
        ApiError::Io {
            socket: self.socket.clone(),
            path: self.path.clone(),
            source,
        }
    }

    fn http(&self, reason: &str) -> ApiError {
        ApiError::Http {
            socket: self.socket.clone(),
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }
}

/// A body decoded as its bytes arrive, whatever the read sizes: chunk
/// framing is parsed only once a whole size line or chunk is there.
#[derive(Default)]
struct Body {
    chunked: bool,
    length: Option<usize>,
    /// Chunked bytes not yet decoded.
    raw: Vec<u8>,
    data: Vec<u8>,
    /// The last chunk has come.
    ended: bool,
}

impl Body {
    fn push(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        if !self.chunked {
            self.data.extend_from_slice(bytes);
            return Ok(());
        }
        self.raw.extend_from_slice(bytes);
        while !self.ended {
            let Some(eol) = find(&self.raw, b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&self.raw[..eol]);
            let hex = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(hex, 16).map_err(|_| "a chunk size that is not hex")?;
            if size == 0 {
                self.ended = true;
                break;
            }
            let need = eol + 2 + size + 2;
            if self.raw.len() < need {
                break;
            }
            self.data
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..need);
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.ended || self.length.is_some_and(|n| self.data.len() >= n)
    }

    /// The first whole line of the data, without its newline.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let i = self.data.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.data.drain(..=i).collect();
        line.pop();
        Some(line)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `text` percent-encoded for a query string.
pub fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// Serves one connection with `answer`, written in pieces of `piece`
    /// bytes; returns the request it read.
    fn serve_once(
        dir: &Path,
        answer: &'static [u8],
        piece: usize,
    ) -> (PathBuf, thread::JoinHandle<String>) {
        let sock = dir.join("api.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
            }
            for p in answer.chunks(piece) {
                // The client may hang up once it has all it needs.
                if s.write_all(p).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
            String::from_utf8(req).unwrap()
        });
        (sock, h)
    }

    #[test]
    fn gets_a_chunked_body_whatever_the_read_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, h) = serve_once(
            dir.path(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1,2,\r\n2;x=y\r\n3]\r\n0\r\n\r\n",
            3,
        );
        assert_eq!(get(&sock, "/containers/json").unwrap(), b"[1,2,3]");
        let req = h.join().unwrap();
        assert!(
            req.starts_with("GET /v1.41/containers/json HTTP/1.1\r\n"),
            "{req}"
        );
    }

    #[test]
    fn gets_a_content_length_body_and_names_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _h) = serve_once(
            dir.path(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
            100,
        );
        assert_eq!(get(&sock, "/containers/json").unwrap(), b"[]");
        let dir = tempfile::tempdir().unwrap();
        let (sock, _h) = serve_once(dir.path(), b"HTTP/1.1 404 Not Found\r\n\r\n", 100);
        let e = get(&sock, "/nope").unwrap_err().to_string();
        assert!(e.contains("GET /v1.41/nope") && e.contains("404"), "{e}");
    }

    #[test]
    fn events_come_line_by_line_then_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, _h) = serve_once(
            dir.path(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n{\"a\":1}\n{\"b\"\r\n3\r\n:2}\r\n1\r\n\n\r\n0\r\n\r\n",
            4,
        );
        let mut ev = Events::open(&sock, "/events", Duration::from_millis(50)).unwrap();
        let mut got = Vec::new();
        let err = loop {
            match ev.next() {
                Ok(Some(line)) => got.push(String::from_utf8(line).unwrap()),
                Ok(None) => {}
                Err(e) => break e.to_string(),
            }
        };
        assert_eq!(got, [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert!(err.contains("ended"), "{err}");
    }

    #[test]
    fn query_strings_are_escaped() {
        assert_eq!(
            query_escape(r#"{"type":["a"]}"#),
            "%7B%22type%22%3A%5B%22a%22%5D%7D"
        );
    }
}
