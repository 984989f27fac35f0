//! A machine on a simulated cloud: examples/node.yml boots with no config
//! drive and no key in the image; a metadata server in this test, reached
//! by the guest at 169.254.169.254 through `osk run qemu --metadata-server`,
//! gives it its ssh key and hostname, OpenStack's way and EC2's. The host
//! then logs in with that key and reads the hostname back.
//!
//! Both tests share one build of node.yml (gzip, the shared e2e store).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use osk_e2e::{ssh_keygen, ssh_ok, BootOpts, Machine};
use osk_layout::marker::Event;

/// TCG on a loaded 2-core machine (see scenarios.rs).
const BOOT: Duration = Duration::from_secs(400);
const NODE: &str = "examples/node.yml";

/// A metadata service on 127.0.0.1: serves `documents` by path, 404s the
/// rest, and records every request line it gets.
struct MetadataServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl MetadataServer {
    fn start(documents: BTreeMap<&'static str, String>) -> Result<MetadataServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        // Serves until the test process ends.
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &documents, &log);
            }
        });
        Ok(MetadataServer { port, requests })
    }

    /// A server that takes every connection and never answers: a cloud
    /// whose metadata service hangs.
    fn silent() -> Result<MetadataServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                log.lock().unwrap().push("(held)".to_string());
                held.push(conn);
            }
        });
        Ok(MetadataServer { port, requests })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer(
    conn: TcpStream,
    documents: &BTreeMap<&'static str, String>,
    log: &Mutex<Vec<String>>,
) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let request_line = request_line.trim_end().to_string();
    log.lock().unwrap().push(request_line.clone());
    let path = request_line.split(' ').nth(1).unwrap_or_default();
    // Other methods get what Python's http.server gives a PUT: 501.
    let (status, body) = match documents.get(path) {
        _ if !request_line.starts_with("GET ") => ("501 Not Implemented", "GET only\n"),
        Some(body) => ("200 OK", body.as_str()),
        None => ("404 Not Found", "not here\n"),
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// node.yml built once for both tests; returns its `OUT/node` prefix.
fn node() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_node().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_node() -> Result<PathBuf> {
    let cache = osk_e2e::cache_dir()?;
    let out = cache.join("cloud");
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let o = Command::new(osk_e2e::osk_bin()?)
        .arg("--cache")
        .arg(cache.join("store"))
        .args(["build", "--compress", "gzip", "--name", "node", "--dir"])
        .arg(&out)
        .arg(osk_e2e::workspace_root().join(NODE))
        .output()
        .context("running osk build")?;
    ensure!(
        o.status.success(),
        "osk build {NODE} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("osk build {NODE} took {:.0?}", started.elapsed());
    Ok(out.join("node"))
}

/// Boots node.yml against `server` with no `--data` and waits for every
/// service to start.
fn boot(server: &MetadataServer) -> Result<Machine> {
    let prefix = node()?;
    // A blank data disk for node.yml's format and mount onboot containers.
    let disk_dir = tempfile::tempdir()?;
    let opts = BootOpts {
        publish: vec![22],
        disks: vec![format!(
            "{},size=256M",
            disk_dir.path().join("data.img").display()
        )],
        metadata_server: Some(server.url()),
        ..BootOpts::default()
    };
    let mut vm = Machine::boot(&prefix, &opts)?;
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    eprintln!(
        "all services started {:.0?} after boot",
        vm.booted_at.elapsed()
    );
    Ok(vm)
}

/// [`boot`], then logs in with `key` (sshd starts after the port forward
/// exists: retry); returns the VM and the `hostname` it reports.
fn boot_and_log_in(server: &MetadataServer, key: &Path) -> Result<(Machine, String)> {
    let vm = boot(server)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let hostname = loop {
        match ssh_ok(&vm, key, "hostname") {
            Ok(h) => break h.trim().to_string(),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    Ok((vm, hostname))
}

/// The console line osk-metadata logs when a service answered.
fn service_line(vm: &Machine) -> Option<String> {
    vm.console()
        .lines()
        .find(|l| l.contains("metadata: ") && l.contains(" service at http://169.254.169.254"))
        .map(str::to_string)
}

/// A fresh key pair; the public half goes only to the metadata server.
fn keypair() -> Result<(tempfile::TempDir, PathBuf, String)> {
    let dir = tempfile::tempdir()?;
    let private = ssh_keygen(dir.path())?;
    let public = std::fs::read_to_string(private.with_extension("pub"))?;
    Ok((dir, private, public.trim().to_string()))
}

/// OpenStack without a config drive: `openstack/latest/meta_data.json`.
#[test]
fn openstack_metadata_service() -> Result<()> {
    const HOSTNAME: &str = "osk-openstack-e2e";
    let (_dir, private, public) = keypair()?;
    let meta = serde_json::json!({
        "uuid": "6b1ec2e5-0000-4000-8000-000000000001",
        "name": "e2e",
        "hostname": HOSTNAME,
        "public_keys": {"e2e": public},
        "launch_index": 0,
    });
    let server = MetadataServer::start(BTreeMap::from([(
        "/openstack/latest/meta_data.json",
        meta.to_string(),
    )]))?;
    let (vm, hostname) = boot_and_log_in(&server, &private)?;
    assert_eq!(hostname, HOSTNAME, "the hostname from the metadata service");
    let line = service_line(&vm).context("no `metadata: ... service at` console line")?;
    eprintln!("{line}");
    assert!(line.contains("OpenStack"), "{line}");
    let asked = server.requests();
    assert_eq!(
        asked.first().map(String::as_str),
        Some("GET /openstack/latest/meta_data.json HTTP/1.1"),
        "{asked:?}"
    );
    assert!(
        asked.contains(&"GET /openstack/latest/user_data HTTP/1.1".to_string()),
        "{asked:?}"
    );
    assert!(
        !asked.iter().any(|r| r.contains("/latest/meta-data")),
        "{asked:?}"
    );
    vm.kill();
    Ok(())
}

/// An EC2-style cloud: OpenStack's paths 404, `latest/meta-data` answers
/// (no IMDSv2 token here: the PUT gets a 501, asked once).
#[test]
fn ec2_metadata_service() -> Result<()> {
    const HOSTNAME: &str = "ip-10-0-0-42.e2e.internal";
    let (_dir, private, public) = keypair()?;
    let server = MetadataServer::start(BTreeMap::from([
        ("/latest/meta-data/hostname", HOSTNAME.to_string()),
        (
            "/latest/meta-data/public-keys/0/openssh-key",
            format!("{public}\n"),
        ),
    ]))?;
    let (vm, hostname) = boot_and_log_in(&server, &private)?;
    assert_eq!(hostname, HOSTNAME, "the hostname from the metadata service");
    let line = service_line(&vm).context("no `metadata: ... service at` console line")?;
    eprintln!("{line}");
    assert!(line.contains("Ec2"), "{line}");
    let asked = server.requests();
    for want in [
        "GET /openstack/latest/meta_data.json HTTP/1.1",
        "PUT /latest/api/token HTTP/1.1",
        "GET /latest/meta-data/public-keys/0/openssh-key HTTP/1.1",
    ] {
        assert!(
            asked.contains(&want.to_string()),
            "no {want:?} in {asked:?}"
        );
    }
    assert_eq!(
        asked.iter().filter(|r| r.starts_with("PUT ")).count(),
        1,
        "{asked:?}"
    );
    vm.kill();
    Ok(())
}

/// A metadata service that accepts and never answers costs the boot its
/// bounded wait (`--service-wait`), not the boot: every service starts and
/// the console names the URL that did not answer.
#[test]
fn a_silent_metadata_service_does_not_hold_up_the_boot() -> Result<()> {
    let server = MetadataServer::silent()?;
    let vm = boot(&server)?;
    let console = vm.console();
    let line = console
        .lines()
        .find(|l| l.contains("no metadata service: http://169.254.169.254/openstack/latest/meta_data.json did not answer within"))
        .with_context(|| format!("no `no metadata service` line in the console:\n{console}"))?;
    eprintln!("{line}");
    ensure!(
        !server.requests().is_empty(),
        "the guest never reached the metadata server"
    );
    vm.kill();
    Ok(())
}
