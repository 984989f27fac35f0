//! The control socket protocol (JSON lines) and osk-init's server side.
//!
//! The client sends one request line, e.g. `{"cmd":"ps"}`,
//! `{"cmd":"logs","name":"sshd","follow":true}`, `{"cmd":"stop","name":"sshd"}`,
//! `{"cmd":"poweroff"}`. The server answers one [`Response`] line; for
//! `logs` the raw log bytes follow it until the connection closes (never,
//! with `follow`, until the client hangs up).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::service::supervisor::{Cmd, Status, Supervisor};
use crate::sys::PowerAction;

/// A request, and also oskctl's subcommand: the CLI is this enum, so the
/// two cannot drift (a subcommand's name is its `cmd` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "lowercase")]
#[command(rename_all = "lowercase")]
pub enum Request {
    /// List services: name, state, pid, restarts, uptime.
    Ps,
    /// osk-init's memory and uptime, and how many services run.
    Status,
    /// Print a service's log.
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        #[serde(default)]
        follow: bool,
    },
    /// Start a stopped service.
    Start { name: String },
    /// Stop a service (it stays stopped until `start`).
    Stop { name: String },
    /// Stop a service and start it again.
    Restart { name: String },
    /// Stop everything and power off.
    Poweroff,
    /// Stop everything and reboot.
    Reboot,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitStatus>,
}

/// osk-init itself, for `oskctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InitStatus {
    /// Resident memory (VmRSS) in KiB.
    pub rss_kib: Option<u64>,
    /// Seconds since boot (guest uptime).
    pub uptime: Option<u64>,
}

impl Response {
    fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }
    fn err(e: String) -> Response {
        Response {
            ok: false,
            error: Some(e),
            ..Default::default()
        }
    }
}

/// Serves the control socket forever.
pub async fn serve(sup: Supervisor, power: mpsc::UnboundedSender<PowerAction>) {
    let path = osk_layout::CONTROL_SOCKET;
    if let Some(dir) = std::path::Path::new(path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(path);
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("control socket {path}: {e}; oskctl will not work");
            return;
        }
    };
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream, sup.clone(), power.clone()));
        }
    }
}

async fn reply(w: &mut (impl AsyncWriteExt + Unpin), r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(stream: UnixStream, sup: Supervisor, power: mpsc::UnboundedSender<PowerAction>) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.is_err() {
        return;
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = reply(
                &mut w,
                &Response::err(format!("bad request {:?}: {e}", line.trim())),
            )
            .await;
            return;
        }
    };
    let resp = match req {
        Request::Ps => Response {
            ok: true,
            services: sup.ps(),
            ..Default::default()
        },
        Request::Status => Response {
            ok: true,
            services: sup.ps(),
            init: Some(InitStatus {
                rss_kib: crate::log::selfstat::rss_kib(),
                uptime: Some(crate::sys::uptime() as u64),
            }),
            ..Default::default()
        },
        Request::Start { name } => done(sup.send(&name, Cmd::Start).await),
        Request::Stop { name } => done(sup.send(&name, Cmd::Stop(None)).await),
        Request::Restart { name } => done(sup.send(&name, Cmd::Restart).await),
        Request::Poweroff => done(power.send(PowerAction::PowerOff)),
        Request::Reboot => done(power.send(PowerAction::Reboot)),
        Request::Logs { name, follow } => {
            let Some(sink) = sup.sink(&name) else {
                let _ = reply(&mut w, &Response::err(format!("no service named {name:?}"))).await;
                return;
            };
            // Subscribe before reading the files so nothing falls between.
            let (mut rx, path) = {
                let s = sink.lock().unwrap_or_else(|e| e.into_inner());
                (s.subscribe(), s.path())
            };
            if reply(&mut w, &Response::ok()).await.is_err() {
                return;
            }
            if let Some(p) = path {
                for f in [crate::log::rotating::RotatingLog::rotated_path(&p), p] {
                    if let Ok(data) = std::fs::read(&f) {
                        if w.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if !follow {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(chunk) => {
                        if w.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        }
    };
    let _ = reply(&mut w, &resp).await;
}

fn done(r: Result<(), impl std::fmt::Display>) -> Response {
    match r {
        Ok(()) => Response::ok(),
        Err(e) => Response::err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        assert_eq!(
            serde_json::to_string(&Request::Ps).unwrap(),
            r#"{"cmd":"ps"}"#
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"logs","name":"sshd"}"#).unwrap();
        assert_eq!(
            r,
            Request::Logs {
                name: "sshd".into(),
                follow: false
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        // An older osk-init's answer (no `init`) still parses.
        let r: Response = serde_json::from_str(r#"{"ok":true}"#).unwrap();
        assert_eq!(r.init, None);
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Request,
    }

    fn parse(args: &[&str]) -> Request {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("oskctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .cmd
    }

    #[test]
    fn cli_parses_into_the_wire_request() {
        assert_eq!(
            parse(&["logs", "-f", "sshd"]),
            Request::Logs {
                name: "sshd".into(),
                follow: true
            }
        );
        assert_eq!(
            serde_json::to_string(&parse(&["restart", "demo"])).unwrap(),
            r#"{"cmd":"restart","name":"demo"}"#
        );
        assert_eq!(parse(&["poweroff"]), Request::Poweroff);
    }

    #[test]
    fn every_subcommand_name_is_a_wire_cmd() {
        use clap::CommandFactory;
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(
            names,
            ["ps", "status", "logs", "start", "stop", "restart", "poweroff", "reboot"]
        );
        for n in names {
            let args: Vec<&str> = match n.as_str() {
                "logs" | "start" | "stop" | "restart" => vec![n.as_str(), "x"],
                _ => vec![n.as_str()],
            };
            let json = serde_json::to_value(parse(&args)).unwrap();
            assert_eq!(json["cmd"], n.as_str());
        }
    }
}
