//! Guest unix sockets forwarded to the host (`osk run qemu --forward-socket`):
//! the table `osk run` hands the guest through QEMU's fw_cfg, and the
//! `sockfwd` service reads back.
//!
//! Without vsock the path is QEMU's user network: the host connects to
//! 127.0.0.1:HOSTPORT, QEMU forwards that to guest TCP port PORT, and the
//! guest side accepts it only from the user network's gateway (where every
//! forwarded connection comes from, and no container is), then connects to
//! the socket. One forward per line: `PORT<TAB>GUEST_PATH`.
//!
//! Where the host has vsock (`/dev/vhost-vsock`, Docker Desktop's way) the
//! guest listens on AF_VSOCK instead, and accepts only the host (CID 2):
//! `vsock:PORT<TAB>GUEST_PATH`.
//!
//! On each connection the guest half first says whether it reached the
//! socket, one [`Status`] line, so the host can tell a silent service from
//! a working one: `OK\n` then the socket's bytes, or `ERR <reason>\n` and
//! the connection closes.

use std::io::{self, Read};

/// The fw_cfg file name.
pub const FW_CFG_NAME: &str = "opt/org.osk/sockets";
/// Where the guest kernel shows that file.
pub const FW_CFG_RAW: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.osk/sockets/raw";
/// Guest TCP port of the first forward; the Nth uses `FIRST_PORT + N`.
pub const FIRST_PORT: u16 = 2390;

/// Longest status line, newline included; a longer `ERR` reason is cut.
pub const MAX_STATUS_LINE: usize = 256;

/// The guest half's first line on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Connected to the guest socket; its bytes follow.
    Ok,
    /// Could not connect (the io error's text, e.g. "No such file or directory").
    Err(String),
}

impl Status {
    /// The line, newline included: a reason loses its control characters
    /// and is cut to fit [`MAX_STATUS_LINE`].
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Status::Ok => b"OK\n".to_vec(),
            Status::Err(reason) => {
                let mut line = String::from("ERR ");
                for c in reason.chars().map(|c| if c.is_control() { ' ' } else { c }) {
                    if line.len() + c.len_utf8() >= MAX_STATUS_LINE {
                        break;
                    }
                    line.push(c);
                }
                line.push('\n');
                line.into_bytes()
            }
        }
    }

    /// Reads one status line, and not a byte more (what follows belongs to
    /// the socket). `None` when the peer closed first or did not speak this
    /// protocol. A reason comes back printable: these bytes are the guest's.
    pub fn read(r: &mut impl Read) -> io::Result<Option<Status>> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            if r.read(&mut byte)? == 0 {
                return Ok(None);
            }
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
            if line.len() >= MAX_STATUS_LINE {
                return Ok(None);
            }
        }
        Ok(match line.as_slice() {
            b"OK" => Some(Status::Ok),
            l => l.strip_prefix(b"ERR ").map(|reason| {
                let text = String::from_utf8_lossy(reason);
                Status::Err(
                    text.chars()
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect(),
                )
            }),
        })
    }
}

/// What the guest half listens on for a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Listen {
    /// TCP, reached through QEMU's user network.
    #[default]
    Tcp,
    /// AF_VSOCK, reached from the host directly.
    Vsock,
}

/// The host's vsock address (`VMADDR_CID_HOST`): the only peer allowed.
pub const HOST_CID: u32 = 2;

/// One forwarded socket as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: Listen,
    pub port: u16,
    /// Absolute path of the unix socket in the guest.
    pub path: String,
}

/// A table line that is not a forward; names the line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("socket table line {line}: {reason}")]
pub struct TableError {
    pub line: usize,
    pub reason: String,
}

/// Why `path` cannot be a guest socket path, if it cannot.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("the guest socket path must be absolute");
    }
    if path.contains(['\t', '\n', '\0']) {
        return Some("the guest socket path cannot hold tabs, newlines or NUL");
    }
    // sockaddr_un holds 108 bytes with the NUL.
    if path.len() > 107 {
        return Some("the guest socket path is longer than a unix socket allows (107 bytes)");
    }
    None
}

/// The table for `forwards`.
pub fn encode(forwards: &[Forward]) -> String {
    forwards
        .iter()
        .map(|f| match f.listen {
            Listen::Tcp => format!("{}\t{}\n", f.port, f.path),
            Listen::Vsock => format!("vsock:{}\t{}\n", f.port, f.path),
        })
        .collect()
}

/// Parses a table.
pub fn parse(text: &str) -> Result<Vec<Forward>, TableError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |reason: &str| TableError {
            line: i + 1,
            reason: reason.to_string(),
        };
        let (port, path) = line
            .split_once('\t')
            .ok_or_else(|| bad("wants PORT and a path, separated by a tab"))?;
        let (listen, port) = match port.strip_prefix("vsock:") {
            Some(p) => (Listen::Vsock, p),
            None => (Listen::Tcp, port),
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        if let Some(reason) = path_problem(path) {
            return Err(bad(reason));
        }
        out.push(Forward {
            listen,
            port,
            path: path.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = vec![
            Forward {
                listen: Listen::Tcp,
                port: FIRST_PORT,
                path: "/var/run/docker.sock".into(),
            },
            Forward {
                listen: Listen::Vsock,
                port: FIRST_PORT + 1,
                path: "/run/osk/control.sock".into(),
            },
        ];
        let text = encode(&f);
        assert_eq!(
            text,
            "2390\t/var/run/docker.sock\nvsock:2391\t/run/osk/control.sock\n"
        );
        assert_eq!(parse(&text).unwrap(), f);
    }

    #[test]
    fn status_lines_round_trip_and_stop_at_the_newline() {
        let mut bytes = Status::Ok.encode();
        bytes.extend_from_slice(b"socket bytes");
        let mut r = bytes.as_slice();
        assert_eq!(Status::read(&mut r).unwrap(), Some(Status::Ok));
        assert_eq!(r, b"socket bytes");
        let err = Status::Err("No such file or directory".into());
        assert_eq!(err.encode(), b"ERR No such file or directory\n");
        assert_eq!(
            Status::read(&mut err.encode().as_slice()).unwrap(),
            Some(err)
        );
    }

    #[test]
    fn a_reason_is_kept_printable_and_short() {
        let line = Status::Err(format!("a\nb{}", "é".repeat(300))).encode();
        assert!(line.len() <= MAX_STATUS_LINE, "{}", line.len());
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let Some(Status::Err(r)) = Status::read(&mut line.as_slice()).unwrap() else {
            panic!("not an ERR");
        };
        assert!(r.starts_with("a b"), "{r}");
        // A guest's raw bytes come back printable.
        let got = Status::read(&mut &b"ERR \x1b[2Jx\xff\n"[..]).unwrap();
        assert_eq!(got, Some(Status::Err("?[2Jx\u{fffd}".into())));
        // Closed early, another protocol, no newline in reach: no status.
        assert_eq!(Status::read(&mut &b"OK"[..]).unwrap(), None);
        assert_eq!(Status::read(&mut &b"HTTP/1.1 200\n"[..]).unwrap(), None);
        assert_eq!(Status::read(&mut &[b'x'; 400][..]).unwrap(), None);
    }

    #[test]
    fn bad_lines_name_their_number() {
        assert_eq!(parse("2390\t/a\nx\t/b").unwrap_err().line, 2);
        assert!(parse("0\t/a").is_err());
        assert!(parse("2390\trelative").is_err());
        assert!(parse("2390 /a").is_err());
        assert!(parse("vsock:x\t/a").is_err());
        assert!(parse("tcp:2390\t/a").is_err());
        assert!(parse(&format!("2390\t/{}", "x".repeat(107))).is_err());
    }
}
