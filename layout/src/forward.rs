//! Guest unix sockets forwarded to the host (`osk run qemu --forward-socket`):
//! the table `osk run` hands the guest through QEMU's fw_cfg, and the
//! `sockfwd` service reads back.
//!
//! Without vsock the path is QEMU's user network: the host connects to
//! 127.0.0.1:HOSTPORT, QEMU forwards that to guest TCP port PORT, and the
//! guest side accepts it only from the user network's gateway (where every
//! forwarded connection comes from, and no container is), then connects to
//! the socket. One forward per line: `PORT<TAB>GUEST_PATH`.

/// The fw_cfg file name.
pub const FW_CFG_NAME: &str = "opt/org.osk/sockets";
/// Where the guest kernel shows that file.
pub const FW_CFG_RAW: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.osk/sockets/raw";
/// Guest TCP port of the first forward; the Nth uses `FIRST_PORT + N`.
pub const FIRST_PORT: u16 = 2390;

/// One forwarded socket as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
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
        .map(|f| format!("{}\t{}\n", f.port, f.path))
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
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
        if let Some(reason) = path_problem(path) {
            return Err(bad(reason));
        }
        out.push(Forward {
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
                port: FIRST_PORT,
                path: "/var/run/docker.sock".into(),
            },
            Forward {
                port: FIRST_PORT + 1,
                path: "/run/osk/control.sock".into(),
            },
        ];
        let text = encode(&f);
        assert_eq!(
            text,
            "2390\t/var/run/docker.sock\n2391\t/run/osk/control.sock\n"
        );
        assert_eq!(parse(&text).unwrap(), f);
    }

    #[test]
    fn bad_lines_name_their_number() {
        assert_eq!(parse("2390\t/a\nx\t/b").unwrap_err().line, 2);
        assert!(parse("0\t/a").is_err());
        assert!(parse("2390\trelative").is_err());
        assert!(parse("2390 /a").is_err());
        assert!(parse(&format!("2390\t/{}", "x".repeat(107))).is_err());
    }
}
