//! Reaching a guest from the host: free ports, HTTP, ssh.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// A TCP port free on 127.0.0.1 right now (the kernel picks it).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`; returns status code and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = ("127.0.0.1", port);
    let mut s =
        TcpStream::connect(addr).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status line from port {port}: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Retries [`http_get`] until it answers 200 or `timeout` passes (a guest's
/// server comes up some time after the port forward exists).
pub fn wait_http(port: u16, path: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match http_get(port, path) {
            Ok((200, body)) => return Ok(body),
            Ok(other) if Instant::now() >= deadline => bail!("GET {path}: last answer {other:?}"),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("GET {path} for {timeout:?}")))
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Makes an ed25519 key pair `DIR/id_ed25519{,.pub}` and returns the private key path.
pub fn ssh_keygen(dir: &Path) -> Result<PathBuf> {
    let key = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "osk-e2e", "-f"])
        .arg(&key)
        .status()
        .context("running ssh-keygen (apt-get install openssh-client)")?;
    ensure!(status.success(), "ssh-keygen failed ({status})");
    Ok(key)
}

/// Runs `command` as root on the guest through a forwarded ssh port.
pub fn ssh(port: u16, key: &Path, command: &str) -> Result<Output> {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "root@127.0.0.1",
        ])
        .arg(command)
        .output()
        .context("running ssh (apt-get install openssh-client)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_get_reads_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && c.read(&mut byte).unwrap() == 1 {
                req.push(byte[0]);
            }
            assert!(String::from_utf8_lossy(&req).starts_with("GET /x HTTP/1.0\r\n"));
            c.write_all(b"HTTP/1.0 404 Not Found\r\nA: b\r\n\r\nnope")
                .unwrap();
        });
        assert_eq!(http_get(port, "/x").unwrap(), (404, "nope".to_string()));
        server.join().unwrap();
    }

    #[test]
    fn ports_are_free() {
        let p = free_port().unwrap();
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}
