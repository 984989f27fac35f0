//! `--follow-ports`: QEMU's user-network forwards follow the ports Docker's
//! containers publish, so `docker run -p 8080:80` in the guest is
//! `127.0.0.1:8080` on the host until the container goes.
//!
//! The Docker API is read through the host end of a forwarded socket; each
//! container event re-reads the whole list and the difference becomes
//! `hostfwd_add`/`hostfwd_remove` commands on QEMU's monitor. Forwards
//! listen on the host's loopback only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use serde::Deserialize;

use super::config::Protocol;
use super::engine::{self, ApiError, Events};
use super::spawn::monitor_command;

/// The user network's id in the argv (`-netdev user,id=net0`).
pub const NETDEV: &str = "net0";
/// How long to wait for an event before looking at `alive` again.
const POLL: Duration = Duration::from_millis(500);
/// Reconnecting to an engine that went away: first and longest pause.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MONITOR_TIMEOUT: Duration = Duration::from_secs(10);

/// A port a container publishes, forwarded from the same host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub protocol: Protocol,
    pub port: u16,
}

impl Port {
    /// Its line in `STATE/reach`, as a `--publish` of the same port has.
    pub fn reach_line(self) -> String {
        super::Publish {
            host_ip: std::net::Ipv4Addr::LOCALHOST,
            host_port: self.port,
            guest_port: self.port,
            protocol: self.protocol,
        }
        .reach_line()
    }

    /// The `hostfwd_add` rule: host loopback port → the guest's same port.
    fn rule(self) -> String {
        format!(
            "{}:127.0.0.1:{}-:{}",
            self.protocol.as_str(),
            self.port,
            self.port
        )
    }

    /// The `hostfwd_remove` rule: the host side only.
    fn host_side(self) -> String {
        format!("{}:127.0.0.1:{}", self.protocol.as_str(), self.port)
    }
}

/// The ports in a `GET /containers/json` answer that the host should reach:
/// published on every guest address (0.0.0.0 or ::), TCP or UDP.
pub fn published(containers_json: &[u8]) -> Result<BTreeSet<Port>, serde_json::Error> {
    #[derive(Deserialize)]
    struct Container {
        #[serde(rename = "Ports", default)]
        ports: Vec<Published>,
    }
    #[derive(Deserialize)]
    struct Published {
        #[serde(rename = "IP", default)]
        ip: String,
        #[serde(rename = "PublicPort", default)]
        public: u16,
        #[serde(rename = "Type", default)]
        kind: String,
    }
    let list: Vec<Container> = serde_json::from_slice(containers_json)?;
    Ok(list
        .iter()
        .flat_map(|c| &c.ports)
        // A port bound to one guest address (127.0.0.1) is not for the host.
        .filter(|p| p.public != 0 && matches!(p.ip.as_str(), "0.0.0.0" | "::" | ""))
        .filter_map(|p| {
            let protocol = match p.kind.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            Some(Port {
                protocol,
                port: p.public,
            })
        })
        .collect())
}

/// What [`Follower::on_change`] calls.
type OnChange = dyn Fn(&BTreeSet<Port>) + Send;
/// What [`Follower::ready_when`] calls.
type Ready = dyn Fn() -> bool + Send;

/// Keeps QEMU's forwards equal to what the containers publish.
pub struct Follower {
    api: PathBuf,
    monitor: PathBuf,
    /// The forwards this follower added and QEMU holds.
    forwarded: BTreeSet<Port>,
    /// The current session got as far as its first sync.
    connected: bool,
    /// Told the forwards after each change.
    on_change: Option<Box<OnChange>>,
    /// Whether the guest socket answers, asked before each connection.
    ready: Option<Box<Ready>>,
}

impl Follower {
    /// `api`: the host end of the forwarded Docker socket; `monitor`: the
    /// VM's HMP socket.
    pub fn new(api: impl Into<PathBuf>, monitor: impl Into<PathBuf>) -> Follower {
        Follower {
            api: api.into(),
            monitor: monitor.into(),
            forwarded: BTreeSet::new(),
            connected: false,
            on_change: None,
            ready: None,
        }
    }

    /// Connects only once `ready` says the guest socket answers (probed
    /// straight through the handshake): a booting guest or a restarting
    /// dockerd then costs no failed client connection, which the host half
    /// would log as a warning.
    pub fn ready_when(mut self, ready: impl Fn() -> bool + Send + 'static) -> Follower {
        self.ready = Some(Box::new(ready));
        self
    }

    /// Calls `f` with the forwards in place after each change (to keep
    /// `STATE/reach` current).
    pub fn on_change(mut self, f: impl Fn(&BTreeSet<Port>) + Send + 'static) -> Follower {
        self.on_change = Some(Box::new(f));
        self
    }

    /// The forwards in place now.
    pub fn forwarded(&self) -> &BTreeSet<Port> {
        &self.forwarded
    }

    /// Follows until `alive` says false: a lost engine (dockerd restarting,
    /// the guest still booting) is reconnected with back-off and re-read.
    pub fn run(&mut self, alive: impl Fn() -> bool) {
        let mut backoff = FIRST_BACKOFF;
        while alive() {
            match self.session(&alive) {
                Ok(()) => return,
                Err(e) if self.connected => {
                    tracing::info!("{e}; reconnecting");
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => tracing::debug!("{e}; trying again in {backoff:?}"),
            }
            // Waits in short steps so that a VM that ends is seen at once.
            let mut waited = Duration::ZERO;
            while waited < backoff && alive() {
                let step = POLL.min(backoff - waited);
                thread::sleep(step);
                waited += step;
            }
            if !self.connected {
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            self.connected = false;
        }
    }

    /// One connection: the event stream opened first, so that nothing
    /// happens unseen between the first read and the stream.
    fn session(&mut self, alive: &impl Fn() -> bool) -> Result<(), ApiError> {
        if self.ready.as_ref().is_some_and(|ready| !ready()) {
            return Err(ApiError::NotAnswering {
                socket: self.api.clone(),
            });
        }
        let filters = r#"{"type":["container"],"event":["start","die","destroy"]}"#;
        let path = format!("/events?filters={}", engine::query_escape(filters));
        let mut events = Events::open(&self.api, &path, POLL)?;
        self.sync()?;
        self.connected = true;
        tracing::info!(api = %self.api.display(), "following the ports Docker's containers publish");
        while alive() {
            if events.next()?.is_some() {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Reads the containers and forwards what they publish, no more.
    pub fn sync(&mut self) -> Result<(), ApiError> {
        let body = engine::get(&self.api, "/containers/json")?;
        let want = published(&body).map_err(|e| ApiError::Http {
            socket: self.api.clone(),
            path: format!("{}/containers/json", engine::API_VERSION),
            reason: format!("not a container list: {e}"),
        })?;
        self.apply(&want);
        Ok(())
    }

    fn apply(&mut self, want: &BTreeSet<Port>) {
        let before = self.forwarded.clone();
        self.update(want);
        if let Some(f) = self.on_change.as_ref().filter(|_| before != self.forwarded) {
            f(&self.forwarded);
        }
    }

    fn update(&mut self, want: &BTreeSet<Port>) {
        let gone: Vec<Port> = self.forwarded.difference(want).copied().collect();
        for p in gone {
            let answer = self.monitor(&format!("hostfwd_remove {NETDEV} {}", p.host_side()));
            // QEMU answers "host forwarding rule for ... removed".
            if answer.as_deref().is_ok_and(|a| a.contains("removed")) {
                tracing::info!("127.0.0.1:{}/{} closed", p.port, p.protocol.as_str());
            } else {
                tracing::warn!(
                    "removing the forward of 127.0.0.1:{}/{}: {}",
                    p.port,
                    p.protocol.as_str(),
                    shown(&answer)
                );
            }
            // Either way QEMU holds it no more, or never will through us.
            self.forwarded.remove(&p);
        }
        let new: Vec<Port> = want.difference(&self.forwarded).copied().collect();
        for p in new {
            // QEMU says nothing when the forward is in place.
            match self.monitor(&format!("hostfwd_add {NETDEV} {}", p.rule())) {
                Ok(a) if a.is_empty() => {
                    tracing::info!(
                        "127.0.0.1:{}/{} forwarded to the guest's port {}",
                        p.port,
                        p.protocol.as_str(),
                        p.port
                    );
                    self.forwarded.insert(p);
                }
                answer => tracing::warn!(
                    "the host port 127.0.0.1:{}/{} that a container publishes could not be forwarded ({}): {}; it is tried again at the next container event",
                    p.port,
                    p.protocol.as_str(),
                    // Below 1024 a user without the privilege cannot listen at all.
                    if p.port < 1024 {
                        "below 1024, it needs privilege; or it is in use on the host"
                    } else {
                        "in use on the host?"
                    },
                    shown(&answer)
                ),
            }
        }
    }

    fn monitor(&self, command: &str) -> super::Result<String> {
        monitor_command(&self.monitor, command, MONITOR_TIMEOUT)
    }
}

/// QEMU's answer, or why there is none, on one printable line.
fn shown(answer: &super::Result<String>) -> String {
    let text = match answer {
        Ok(a) => a.clone(),
        Err(e) => e.to_string(),
    };
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Whether `path` is the host end of one of `forwards` (`--follow-ports`
/// names a guest path); the host path when it is.
pub fn api_socket<'a>(
    forwards: &'a [super::ForwardSocket],
    guest: &str,
) -> super::Result<&'a Path> {
    forwards
        .iter()
        .find(|f| f.guest == guest)
        .map(|f| f.host.as_path())
        .ok_or_else(|| super::Error::InvalidFlag {
            flag: "--follow-ports",
            value: guest.to_string(),
            reason: format!(
                "it is not the guest path of a --forward-socket (those are: {}); add --forward-socket HOST_PATH:{guest}",
                forwards
                    .iter()
                    .map(|f| f.guest.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    type Shared<T> = Arc<Mutex<T>>;

    /// A Docker API on a unix socket: `GET /containers/json` answers the
    /// current list, `GET /events` streams queued events, chunked.
    struct FakeDocker {
        containers: Shared<String>,
        events: Shared<VecDeque<String>>,
        stop: Arc<AtomicBool>,
        server: Option<thread::JoinHandle<()>>,
    }

    impl FakeDocker {
        fn start(sock: &Path, containers: &str) -> FakeDocker {
            let mut d = FakeDocker {
                containers: Arc::new(Mutex::new(containers.to_string())),
                events: Arc::default(),
                stop: Arc::default(),
                server: None,
            };
            d.restart(sock);
            d
        }

        /// Serves again (after [`FakeDocker::drop_api`]), like a restarted dockerd.
        fn restart(&mut self, sock: &Path) {
            self.stop.store(false, Ordering::SeqCst);
            let l = UnixListener::bind(sock).unwrap();
            l.set_nonblocking(true).unwrap();
            let (containers, events, stop) = (
                self.containers.clone(),
                self.events.clone(),
                self.stop.clone(),
            );
            let sock = sock.to_path_buf();
            self.server = Some(thread::spawn(move || {
                let mut handlers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((c, _)) => {
                            let (containers, events, stop) =
                                (containers.clone(), events.clone(), stop.clone());
                            handlers.push(thread::spawn(move || {
                                answer(c, &containers, &events, &stop)
                            }));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                std::fs::remove_file(&sock).unwrap();
                for h in handlers {
                    h.join().unwrap();
                }
            }));
        }

        /// dockerd goes away: the stream ends, the socket is gone.
        fn drop_api(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.server.take().unwrap().join().unwrap();
        }

        fn event(&self, containers: &str) {
            *self.containers.lock().unwrap() = containers.to_string();
            self.events
                .lock()
                .unwrap()
                .push_back(r#"{"Type":"container","Action":"start"}"#.into());
        }
    }

    fn answer(
        mut c: UnixStream,
        containers: &Mutex<String>,
        events: &Mutex<VecDeque<String>>,
        stop: &AtomicBool,
    ) {
        c.set_nonblocking(false).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if c.read(&mut byte).unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let path = head.split_whitespace().nth(1).unwrap().to_string();
        if path == "/v1.41/containers/json" {
            let body = containers.lock().unwrap().clone();
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            return;
        }
        assert!(
            path.starts_with("/v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%5D"),
            "{path}"
        );
        let _ = write!(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        while !stop.load(Ordering::SeqCst) {
            let next = events.lock().unwrap().pop_front();
            match next {
                Some(e) => {
                    let line = format!("{e}\n");
                    if write!(c, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                        return;
                    }
                }
                None => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// A QEMU monitor that records each command; `hostfwd_add` of a port in
    /// `taken` fails the way QEMU says it.
    fn fake_monitor(sock: &Path, taken: u16) -> Shared<Vec<String>> {
        let seen: Shared<Vec<String>> = Arc::default();
        let l = UnixListener::bind(sock).unwrap();
        let s = seen.clone();
        thread::spawn(move || {
            for c in l.incoming() {
                let mut c = c.unwrap();
                c.write_all(b"QEMU 7.2.0 monitor - type 'help' for more information\r\n(qemu) ")
                    .unwrap();
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while c.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                let cmd = String::from_utf8(line).unwrap();
                let reply = if cmd.starts_with("hostfwd_remove") {
                    format!("host forwarding rule for {} removed\r\n", &cmd[20..])
                } else if cmd.contains(&format!(":{taken}-")) {
                    format!("Could not set up host forwarding rule '{}'\r\n", &cmd[17..])
                } else {
                    String::new()
                };
                let _ = write!(c, "{cmd}\r\n{reply}(qemu) ");
                s.lock().unwrap().push(cmd);
            }
        });
        seen
    }

    fn wait_for(seen: &Shared<Vec<String>>, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = seen.lock().unwrap().clone();
            if now.len() >= n {
                return now;
            }
            assert!(Instant::now() < deadline, "only {now:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[derive(Clone, Default)]
    struct Log(Shared<Vec<u8>>);
    impl Write for Log {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const WEB: &str = r#"{"Id":"a","Ports":[{"IP":"0.0.0.0","PrivatePort":80,"PublicPort":8080,"Type":"tcp"},{"IP":"::","PrivatePort":80,"PublicPort":8080,"Type":"tcp"}]}"#;
    const LOCAL_AND_EXPOSED: &str = r#"{"Id":"b","Ports":[{"IP":"127.0.0.1","PrivatePort":90,"PublicPort":9000,"Type":"tcp"},{"PrivatePort":22,"Type":"tcp"}]}"#;
    const TAKEN_AND_DNS: &str = r#"{"Id":"c","Ports":[{"IP":"0.0.0.0","PrivatePort":80,"PublicPort":8081,"Type":"tcp"},{"IP":"0.0.0.0","PrivatePort":53,"PublicPort":5353,"Type":"udp"}]}"#;
    const DNS: &str =
        r#"{"Id":"c","Ports":[{"IP":"0.0.0.0","PrivatePort":53,"PublicPort":5353,"Type":"udp"}]}"#;
    const LATE: &str =
        r#"{"Id":"d","Ports":[{"IP":"::","PrivatePort":7000,"PublicPort":7000,"Type":"tcp"}]}"#;

    #[test]
    fn forwards_follow_the_containers_through_an_engine_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (api, mon) = (
            dir.path().join("docker.sock"),
            dir.path().join("monitor.sock"),
        );
        let seen = fake_monitor(&mon, 8081);
        let mut docker = FakeDocker::start(&api, &format!("[{WEB},{LOCAL_AND_EXPOSED}]"));
        let done = Arc::new(AtomicBool::new(false));
        let log = Log::default();
        let reach: Shared<Vec<String>> = Arc::default();
        let (d, l, a, m, r) = (
            done.clone(),
            log.clone(),
            api.clone(),
            mon.clone(),
            reach.clone(),
        );
        let follower = thread::spawn(move || {
            let sub = tracing_subscriber::fmt()
                .with_writer(move || l.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(sub, || {
                let mut f = Follower::new(a, m).on_change(move |p| {
                    let lines: String = p.iter().map(|p| p.reach_line()).collect();
                    r.lock().unwrap().push(lines);
                });
                f.run(|| !d.load(Ordering::SeqCst));
                f
            })
        });
        // Only the port published on every guest address, once.
        assert_eq!(
            wait_for(&seen, 1),
            ["hostfwd_add net0 tcp:127.0.0.1:8080-:8080"]
        );

        docker.event(&format!("[{WEB},{LOCAL_AND_EXPOSED},{TAKEN_AND_DNS}]"));
        let got = wait_for(&seen, 3);
        assert_eq!(
            got[1..],
            [
                "hostfwd_add net0 tcp:127.0.0.1:8081-:8081",
                "hostfwd_add net0 udp:127.0.0.1:5353-:5353",
            ]
        );
        docker.event(&format!("[{LOCAL_AND_EXPOSED},{DNS}]"));
        assert_eq!(
            wait_for(&seen, 4)[3],
            "hostfwd_remove net0 tcp:127.0.0.1:8080"
        );

        // dockerd restarts; a container started meanwhile is seen on reconnect.
        docker.drop_api();
        *docker.containers.lock().unwrap() = format!("[{DNS},{LATE}]");
        docker.restart(&api);
        assert_eq!(
            wait_for(&seen, 5)[4],
            "hostfwd_add net0 tcp:127.0.0.1:7000-:7000"
        );

        done.store(true, Ordering::SeqCst);
        let f = follower.join().unwrap();
        assert_eq!(seen.lock().unwrap().len(), 5, "{:?}", seen.lock().unwrap());
        let ports: Vec<String> = f
            .forwarded()
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol.as_str()))
            .collect();
        assert_eq!(ports, ["7000/tcp", "5353/udp"]);
        // Told after each change; the last is what holds now.
        let reach = reach.lock().unwrap().clone();
        assert_eq!(reach.len(), 4, "{reach:?}");
        assert_eq!(
            reach[3],
            "port\t127.0.0.1:7000\t7000/tcp\nport\t127.0.0.1:5353\t5353/udp\n"
        );
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(
            log.contains("WARN")
                && log.contains("127.0.0.1:8081/tcp")
                && log.contains("Could not set up"),
            "{log}"
        );
        assert!(log.contains("reconnecting"), "{log}");
        docker.drop_api();
    }

    #[test]
    fn nothing_is_asked_before_the_guest_socket_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (api, mon) = (
            dir.path().join("docker.sock"),
            dir.path().join("monitor.sock"),
        );
        let seen = fake_monitor(&mon, 0);
        let mut docker = FakeDocker::start(&api, &format!("[{WEB}]"));
        let (ready, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (r, d) = (ready.clone(), done.clone());
        let follower = thread::spawn(move || {
            Follower::new(api, mon)
                .ready_when(move || r.load(Ordering::SeqCst))
                .run(|| !d.load(Ordering::SeqCst))
        });
        thread::sleep(Duration::from_millis(700));
        assert!(seen.lock().unwrap().is_empty());
        ready.store(true, Ordering::SeqCst);
        assert_eq!(
            wait_for(&seen, 1),
            ["hostfwd_add net0 tcp:127.0.0.1:8080-:8080"]
        );
        done.store(true, Ordering::SeqCst);
        follower.join().unwrap();
        docker.drop_api();
    }

    #[test]
    fn follow_ports_names_a_guest_path_that_is_not_forwarded() {
        let f: Vec<crate::run::ForwardSocket> =
            vec!["/h/d.sock:/var/run/docker.sock".parse().unwrap()];
        assert_eq!(
            api_socket(&f, "/var/run/docker.sock").unwrap(),
            Path::new("/h/d.sock")
        );
        let e = api_socket(&f, "/run/docker.sock").unwrap_err().to_string();
        assert!(
            e.contains("--follow-ports")
                && e.contains("/run/docker.sock")
                && e.contains("/var/run/docker.sock"),
            "{e}"
        );
    }

    #[test]
    fn only_ports_on_every_guest_address_count() {
        let p =
            published(format!("[{WEB},{LOCAL_AND_EXPOSED},{TAKEN_AND_DNS}]").as_bytes()).unwrap();
        let p: Vec<String> = p.iter().map(|p| p.rule()).collect();
        assert_eq!(
            p,
            [
                "tcp:127.0.0.1:8080-:8080",
                "tcp:127.0.0.1:8081-:8081",
                "udp:127.0.0.1:5353-:5353"
            ]
        );
        assert!(published(b"{}").is_err());
        assert!(published(br#"[{"Id":"x","Ports":null}]"#).is_err());
    }

    /// Against a real QEMU's monitor: a paused machine with only a user
    /// network. Run by hand (it starts QEMU): `flock /tmp/osk-team/vm.lock
    /// cargo test -p osk-builder --lib real_qemu -- --ignored`.
    #[test]
    #[ignore = "starts qemu-system-x86_64"]
    fn real_qemu_opens_and_closes_the_forwards() {
        use std::net::{TcpListener, TcpStream};
        let dir = tempfile::tempdir().unwrap();
        let (api, mon) = (
            dir.path().join("docker.sock"),
            dir.path().join("monitor.sock"),
        );
        let mut qemu = std::process::Command::new("qemu-system-x86_64")
            .args(["-M", "none", "-S", "-nodefaults", "-display", "none"])
            .args(["-netdev", "user,id=net0", "-monitor"])
            .arg(format!("unix:{},server=on,wait=off", mon.display()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&mon).is_err() {
            assert!(Instant::now() < deadline, "no monitor");
            thread::sleep(Duration::from_millis(50));
        }
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap().port();
        let publish = |p: u16| {
            format!(
                r#"{{"Id":"x","Ports":[{{"IP":"0.0.0.0","PrivatePort":80,"PublicPort":{p},"Type":"tcp"}}]}}"#
            )
        };
        let mut docker = FakeDocker::start(&api, &format!("[{},{}]", publish(port), publish(busy)));
        let mut f = Follower::new(&api, &mon);
        f.sync().unwrap();
        let ports: Vec<u16> = f.forwarded().iter().map(|p| p.port).collect();
        assert_eq!(ports, [port], "the port in use is skipped");
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "QEMU does not listen on {port}"
        );
        *docker.containers.lock().unwrap() = "[]".into();
        f.sync().unwrap();
        assert!(f.forwarded().is_empty());
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{port} is still open"
        );
        let _ = monitor_command(&mon, "quit", Duration::from_secs(5));
        qemu.wait().unwrap();
        docker.drop_api();
    }
}
