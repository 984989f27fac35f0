//! oskctl: talks to osk-init over its control socket. See init/README.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context, Result};
use clap::Parser;
use osk_init::control::{Request, Response};

#[derive(Parser)]
#[command(about = "Control the services of an osk machine")]
struct Cli {
    /// osk-init's control socket.
    #[arg(long, default_value = osk_layout::CONTROL_SOCKET)]
    socket: String,
    /// The request to send (the control protocol's own type).
    #[command(subcommand)]
    cmd: Request,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let req = cli.cmd;
    let mut stream = UnixStream::connect(&cli.socket).with_context(|| {
        format!(
            "connecting to osk-init at {} (is this an osk machine, and /run mounted?)",
            cli.socket
        )
    })?;
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let resp: Response = serde_json::from_str(&header)
        .with_context(|| format!("osk-init sent an unreadable answer: {header:?}"))?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "failed".into()));
    }
    match req {
        Request::Ps => {
            println!(
                "{:<20} {:<12} {:>8} {:>8} {:>10}",
                "NAME", "STATE", "PID", "RESTARTS", "UPTIME"
            );
            for s in resp.services {
                let pid = s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                let up = s
                    .uptime
                    .map(|u| format!("{u}s"))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<20} {:<12} {:>8} {:>8} {:>10}",
                    s.name, s.state, pid, s.restarts, up
                );
            }
        }
        Request::Status => {
            let init = resp.init.unwrap_or_default();
            let opt = |v: Option<u64>, unit: &str| {
                v.map(|v| format!("{v} {unit}"))
                    .unwrap_or_else(|| "-".into())
            };
            let running = resp
                .services
                .iter()
                .filter(|s| s.state == "running")
                .count();
            println!("init rss:  {}", opt(init.rss_kib, "KiB"));
            println!("uptime:    {}", opt(init.uptime, "s"));
            println!("services:  {running}/{} running", resp.services.len());
        }
        Request::Logs { .. } => {
            let mut out = std::io::stdout().lock();
            let mut buf = [0u8; 8192];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
        }
        _ => {}
    }
    Ok(())
}
