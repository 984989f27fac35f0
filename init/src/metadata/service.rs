//! The cloud metadata service at 169.254.169.254, asked when no config
//! drive is found: OpenStack's (`openstack/latest/...`), else EC2's
//! (`latest/...`), all within one bounded wait. The network sits behind
//! [`Link`], so the order, retries and deadlines are tested without one.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::http::{self, HttpError, Response};
use super::openstack::MetaData;

/// Where OpenStack, EC2 and the clouds copying them serve metadata.
pub const SERVICE: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));

pub const OPENSTACK_META: &str = "/openstack/latest/meta_data.json";
pub const OPENSTACK_USER: &str = "/openstack/latest/user_data";
/// IMDSv2: a session token, required by EC2 instances that turned v1 off.
pub const EC2_TOKEN: &str = "/latest/api/token";
pub const EC2_HOSTNAME: &str = "/latest/meta-data/hostname";
pub const EC2_KEY: &str = "/latest/meta-data/public-keys/0/openssh-key";
pub const EC2_USER: &str = "/latest/user-data";
const EC2_TOKEN_TTL: (&str, &str) = ("X-aws-ec2-metadata-token-ttl-seconds", "21600");
const EC2_TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";

/// The network as [`discover`] sees it.
pub trait Link {
    /// Whether the guest has a route to the service yet (DHCP may still be running).
    fn route_ready(&mut self) -> bool;
    /// One HTTP request, answered within `timeout`.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response, HttpError>;
    fn sleep(&mut self, d: Duration);
    /// Time since the search began.
    fn elapsed(&self) -> Duration;
    /// `http://HOST[:PORT]`, to name URLs in logs and errors.
    fn origin(&self) -> String;
}

/// How long [`discover`] may take.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Waiting for a route and every retry end within this. One request
    /// already under way may overrun it by up to `request_timeout`.
    pub budget: Duration,
    /// The bound of one request.
    pub request_timeout: Duration,
}

impl Policy {
    const ROUTE_POLL: Duration = Duration::from_millis(250);
    const FIRST_BACKOFF: Duration = Duration::from_millis(250);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    /// The shortest timeout a request is given, however little budget is left.
    const MIN_TIMEOUT: Duration = Duration::from_secs(1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    OpenStack,
    Ec2,
}

/// What the service gave, ready to write.
#[derive(Debug, PartialEq, Eq)]
pub struct CloudMeta {
    pub source: Source,
    pub hostname: Option<String>,
    /// `authorized_keys` contents, one key a line.
    pub authorized_keys: Option<String>,
    pub user_data: Option<Vec<u8>>,
}

/// How the search ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Found(CloudMeta),
    /// No route to the service within the budget (no DHCP lease?).
    NoRoute,
    /// Nothing answered HTTP at `url` within the budget; `last` is the last failure.
    NoAnswer {
        url: String,
        last: String,
    },
    /// The service answered, but has neither OpenStack's nor EC2's metadata.
    Empty,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{url}: not valid JSON: {cause}")]
    Json {
        url: String,
        cause: serde_json::Error,
    },
    #[error("{url}: no usable answer within the {}s wait (last: {last})", .budget.as_secs_f64())]
    GaveUp {
        url: String,
        budget: Duration,
        last: String,
    },
}

/// One request's end.
enum Got {
    Body(Vec<u8>),
    /// A status that says "not here" (404 and the other final 4xx).
    Missing,
    /// No usable answer within the budget; the last failure.
    NoAnswer(String),
}

struct Session<'a> {
    link: &'a mut dyn Link,
    policy: Policy,
    /// Some request got an HTTP answer: the service exists.
    answered: bool,
}

/// Statuses worth asking again: the service is there but not ready.
fn retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

impl Session<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.link.origin())
    }

    fn left(&self) -> Duration {
        self.policy.budget.saturating_sub(self.link.elapsed())
    }

    /// Asks until an answer that is not a retryable failure, or the budget
    /// ends. With `retry_status` false, every HTTP answer is final.
    fn fetch(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        retry_status: bool,
    ) -> Got {
        let mut backoff = Policy::FIRST_BACKOFF;
        loop {
            let timeout = self
                .policy
                .request_timeout
                .min(self.left().max(Policy::MIN_TIMEOUT));
            let last = match self.link.send(method, path, headers, timeout) {
                Ok(r) => {
                    self.answered = true;
                    match r.status {
                        200 => return Got::Body(r.body),
                        s if retry_status && retryable(s) => format!("HTTP {s}"),
                        _ => return Got::Missing,
                    }
                }
                Err(e) => e.to_string(),
            };
            tracing::debug!("{} {}: {last}", method, self.url(path));
            let left = self.left();
            if left.is_zero() {
                return Got::NoAnswer(last);
            }
            self.link.sleep(backoff.min(left));
            backoff = (backoff * 2).min(Policy::MAX_BACKOFF);
        }
    }

    /// A document the service may lack: `None` when it says so.
    fn optional(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        retry_status: bool,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        match self.fetch(method, path, headers, retry_status) {
            Got::Body(b) => Ok(Some(b)),
            Got::Missing => Ok(None),
            Got::NoAnswer(last) => Err(ServiceError::GaveUp {
                url: self.url(path),
                budget: self.policy.budget,
                last,
            }),
        }
    }
}

/// Waits for a route, then asks OpenStack's metadata, then EC2's.
pub fn discover(link: &mut dyn Link, policy: Policy) -> Result<Outcome, ServiceError> {
    while !link.route_ready() {
        let left = policy.budget.saturating_sub(link.elapsed());
        if left.is_zero() {
            return Ok(Outcome::NoRoute);
        }
        link.sleep(Policy::ROUTE_POLL.min(left));
    }
    let mut s = Session {
        link,
        policy,
        answered: false,
    };
    match s.fetch("GET", OPENSTACK_META, &[], true) {
        Got::Body(raw) => {
            let meta = MetaData::parse(&raw).map_err(|cause| ServiceError::Json {
                url: s.url(OPENSTACK_META),
                cause,
            })?;
            let user_data = s.optional("GET", OPENSTACK_USER, &[], true)?;
            return Ok(Outcome::Found(CloudMeta {
                source: Source::OpenStack,
                hostname: meta.hostname().map(str::to_string),
                authorized_keys: meta.authorized_keys(),
                user_data,
            }));
        }
        Got::NoAnswer(last) if !s.answered => {
            return Ok(Outcome::NoAnswer {
                url: s.url(OPENSTACK_META),
                last,
            })
        }
        Got::NoAnswer(last) => {
            return Err(ServiceError::GaveUp {
                url: s.url(OPENSTACK_META),
                budget: policy.budget,
                last,
            })
        }
        Got::Missing => {}
    }
    // IMDSv2 when the service offers it; v1 (no token) otherwise. Servers
    // without it may answer a PUT with any status (501 is common): none is
    // worth waiting for.
    let token = s
        .optional("PUT", EC2_TOKEN, &[EC2_TOKEN_TTL], false)?
        .and_then(|t| text(&t))
        .filter(|t| t.bytes().all(|b| b.is_ascii_graphic()));
    let headers: Vec<(&str, &str)> = token
        .as_deref()
        .map(|t| vec![(EC2_TOKEN_HEADER, t)])
        .unwrap_or_default();
    let hostname = s.optional("GET", EC2_HOSTNAME, &headers, true)?;
    let key = s.optional("GET", EC2_KEY, &headers, true)?;
    let user_data = s.optional("GET", EC2_USER, &headers, true)?;
    if hostname.is_none() && key.is_none() && user_data.is_none() {
        return Ok(Outcome::Empty);
    }
    Ok(Outcome::Found(CloudMeta {
        source: Source::Ec2,
        hostname: hostname.and_then(|h| text(&h)),
        authorized_keys: key.and_then(|k| text(&k)).map(|k| k + "\n"),
        user_data,
    }))
}

/// Trimmed UTF-8 text; `None` when empty or not text.
fn text(bytes: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(bytes).ok()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Whether `/proc/net/route` (its text) has an up route, off loopback,
/// that covers `ip`: a default route, or a host route to it alone.
pub fn route_covers(proc_net_route: &str, ip: Ipv4Addr) -> bool {
    const RTF_UP: u32 = 0x1;
    let target = u32::from(ip);
    proc_net_route.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // The kernel prints each address as the host-order number of its
        // network-order bytes.
        let addr = |i: usize| {
            f.get(i)
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .map(|v| u32::from(Ipv4Addr::from(v.to_ne_bytes())))
        };
        let flags = f.get(3).and_then(|h| u32::from_str_radix(h, 16).ok());
        match (f.first(), addr(1), flags, addr(7)) {
            (Some(&iface), Some(dest), Some(flags), Some(mask)) => {
                iface != "lo" && flags & RTF_UP != 0 && target & mask == dest & mask
            }
            _ => false,
        }
    })
}

/// The real network: TCP to `addr`, routes from `/proc/net/route`.
pub struct HttpLink {
    addr: SocketAddr,
    routes: PathBuf,
    started: Instant,
}

impl HttpLink {
    pub fn new(addr: SocketAddr, routes: impl Into<PathBuf>) -> HttpLink {
        HttpLink {
            addr,
            routes: routes.into(),
            started: Instant::now(),
        }
    }
}

impl Link for HttpLink {
    fn route_ready(&mut self) -> bool {
        let SocketAddr::V4(v4) = self.addr else {
            return true;
        };
        v4.ip().is_loopback()
            || std::fs::read_to_string(&self.routes).is_ok_and(|t| route_covers(&t, *v4.ip()))
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        http::request(self.addr, method, path, headers, timeout, http::MAX_ANSWER)
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn origin(&self) -> String {
        match self.addr.port() {
            80 => format!("http://{}", self.addr.ip()),
            _ => format!("http://{}", self.addr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, VecDeque};
    use std::io;

    type Answer = Result<(u16, &'static [u8]), io::ErrorKind>;

    /// A scripted service on a virtual clock: each path answers from its
    /// queue (the last answer repeats); a path with no script is a 404.
    /// Failed requests cost their whole timeout, as a silent peer does.
    struct Fake {
        routes_after: u32,
        script: BTreeMap<&'static str, VecDeque<Answer>>,
        now: Duration,
        log: Vec<String>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                routes_after: 0,
                script: BTreeMap::new(),
                now: Duration::ZERO,
                log: Vec::new(),
            }
        }
        fn on(mut self, path: &'static str, answers: &[Answer]) -> Fake {
            self.script.insert(path, answers.iter().cloned().collect());
            self
        }
    }

    impl Link for Fake {
        fn route_ready(&mut self) -> bool {
            if self.routes_after == 0 {
                return true;
            }
            self.routes_after -= 1;
            false
        }
        fn send(
            &mut self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            timeout: Duration,
        ) -> Result<Response, HttpError> {
            let h: Vec<String> = headers.iter().map(|(k, v)| format!(" {k}={v}")).collect();
            self.log.push(format!("{method} {path}{}", h.concat()));
            let answer = match self.script.get_mut(path) {
                Some(q) if q.len() > 1 => q.pop_front().unwrap(),
                Some(q) => q[0],
                None => Ok((404, &b""[..])),
            };
            match answer {
                Ok((status, body)) => Ok(Response {
                    status,
                    body: body.to_vec(),
                }),
                Err(kind) => {
                    self.now += timeout;
                    Err(HttpError::Connect {
                        addr: SERVICE,
                        cause: kind.into(),
                    })
                }
            }
        }
        fn sleep(&mut self, d: Duration) {
            self.now += d;
        }
        fn elapsed(&self) -> Duration {
            self.now
        }
        fn origin(&self) -> String {
            "http://169.254.169.254".into()
        }
    }

    const POLICY: Policy = Policy {
        budget: Duration::from_secs(20),
        request_timeout: Duration::from_secs(5),
    };
    const META: &[u8] = br#"{"hostname": "vm1", "public_keys": {"k": "ssh-ed25519 AAA me"}}"#;
    const REFUSED: Answer = Err(io::ErrorKind::ConnectionRefused);
    const TIMED_OUT: Answer = Err(io::ErrorKind::TimedOut);

    fn found(o: Outcome) -> CloudMeta {
        match o {
            Outcome::Found(m) => m,
            other => panic!("expected metadata, got {other:?}"),
        }
    }

    #[test]
    fn openstack_first() {
        let mut f = Fake::new()
            .on(OPENSTACK_META, &[Ok((200, META))])
            .on(OPENSTACK_USER, &[Ok((200, b"#!/bin/sh\n"))])
            .on(EC2_HOSTNAME, &[Ok((200, b"never-asked"))]);
        let m = found(discover(&mut f, POLICY).unwrap());
        assert_eq!(
            m,
            CloudMeta {
                source: Source::OpenStack,
                hostname: Some("vm1".into()),
                authorized_keys: Some("ssh-ed25519 AAA me\n".into()),
                user_data: Some(b"#!/bin/sh\n".to_vec()),
            }
        );
        assert_eq!(
            f.log,
            [
                format!("GET {OPENSTACK_META}"),
                format!("GET {OPENSTACK_USER}")
            ]
        );
    }

    #[test]
    fn openstack_without_user_data() {
        let mut f = Fake::new().on(OPENSTACK_META, &[Ok((200, META))]);
        assert_eq!(found(discover(&mut f, POLICY).unwrap()).user_data, None);
    }

    #[test]
    fn ec2_when_openstack_is_missing_with_an_imdsv2_token() {
        let mut f = Fake::new()
            .on(EC2_TOKEN, &[Ok((200, b"tok123\n"))])
            .on(EC2_HOSTNAME, &[Ok((200, b"ip-10-0-0-5.ec2.internal"))])
            .on(EC2_KEY, &[Ok((200, b"ssh-rsa BBB you\n"))]);
        let m = found(discover(&mut f, POLICY).unwrap());
        assert_eq!(m.source, Source::Ec2);
        assert_eq!(m.hostname.as_deref(), Some("ip-10-0-0-5.ec2.internal"));
        assert_eq!(m.authorized_keys.as_deref(), Some("ssh-rsa BBB you\n"));
        assert_eq!(m.user_data, None);
        let t = " X-aws-ec2-metadata-token=tok123";
        assert_eq!(
            f.log,
            [
                format!("GET {OPENSTACK_META}"),
                format!("PUT {EC2_TOKEN} X-aws-ec2-metadata-token-ttl-seconds=21600"),
                format!("GET {EC2_HOSTNAME}{t}"),
                format!("GET {EC2_KEY}{t}"),
                format!("GET {EC2_USER}{t}"),
            ]
        );
    }

    #[test]
    fn ec2_without_imdsv2_asks_without_a_token() {
        // Python's http.server answers a PUT with 501: no token, no retry.
        let mut f = Fake::new()
            .on(EC2_TOKEN, &[Ok((501, b""))])
            .on(EC2_USER, &[Ok((200, b"data"))]);
        let m = found(discover(&mut f, POLICY).unwrap());
        assert_eq!(m.user_data.as_deref(), Some(&b"data"[..]));
        assert_eq!(f.log.iter().filter(|r| r.starts_with("PUT")).count(), 1);
        assert_eq!(f.log.last().unwrap(), &format!("GET {EC2_USER}"));
        assert_eq!(f.now, Duration::ZERO);
    }

    #[test]
    fn an_answer_with_neither_is_empty() {
        let mut f = Fake::new();
        assert_eq!(discover(&mut f, POLICY).unwrap(), Outcome::Empty);
    }

    #[test]
    fn waits_for_a_route_then_retries_until_the_service_answers() {
        let mut f = Fake::new().on(OPENSTACK_META, &[REFUSED, Ok((503, b"")), Ok((200, META))]);
        f.routes_after = 8;
        let m = found(discover(&mut f, POLICY).unwrap());
        assert_eq!(m.hostname.as_deref(), Some("vm1"));
        // 8 route polls of 250 ms, then two back-offs (250 ms, 500 ms) and
        // the refused attempt's 5 s timeout.
        assert_eq!(f.now, Duration::from_millis(2000 + 750 + 5000));
    }

    #[test]
    fn no_route_ends_within_the_budget() {
        let mut f = Fake::new().on(OPENSTACK_META, &[Ok((200, META))]);
        f.routes_after = u32::MAX;
        assert_eq!(discover(&mut f, POLICY).unwrap(), Outcome::NoRoute);
        assert_eq!(f.now, POLICY.budget);
        assert!(f.log.is_empty());
    }

    #[test]
    fn silence_ends_within_the_budget_and_names_the_url() {
        let mut f = Fake::new().on(OPENSTACK_META, &[TIMED_OUT]);
        let o = discover(&mut f, POLICY).unwrap();
        let Outcome::NoAnswer { url, last } = o else {
            panic!("{o:?}")
        };
        assert_eq!(
            url,
            "http://169.254.169.254/openstack/latest/meta_data.json"
        );
        assert!(
            last.starts_with("connecting to 169.254.169.254:80"),
            "{last}"
        );
        assert!(
            f.now <= POLICY.budget + POLICY.request_timeout,
            "{:?}",
            f.now
        );
        assert!(f.log.len() >= 3, "retried: {:?}", f.log);
    }

    #[test]
    fn a_service_failing_after_answering_is_an_error() {
        let mut f = Fake::new()
            .on(OPENSTACK_META, &[Ok((200, META))])
            .on(OPENSTACK_USER, &[Ok((500, b"boom"))]);
        let e = discover(&mut f, POLICY).unwrap_err().to_string();
        assert!(
            e.starts_with("http://169.254.169.254/openstack/latest/user_data: no usable answer within the 20s wait (last: HTTP 500)"),
            "{e}"
        );
        assert!(f.now <= POLICY.budget);
    }

    #[test]
    fn bad_json_names_the_url() {
        let mut f = Fake::new().on(OPENSTACK_META, &[Ok((200, b"<html>"))]);
        let e = discover(&mut f, POLICY).unwrap_err().to_string();
        assert!(
            e.starts_with("http://169.254.169.254/openstack/latest/meta_data.json: not valid JSON"),
            "{e}"
        );
    }

    #[test]
    fn routes_that_reach_the_service() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let ip = Ipv4Addr::new(169, 254, 169, 254);
        // 10.0.2.0/24 on eth0 only.
        let lan = format!("{header}eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
        assert!(!route_covers(&lan, ip));
        // A default route via 10.0.2.2.
        let default = format!("{lan}eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(route_covers(&default, ip));
        // OpenStack's DHCP may push a host route to the service alone.
        let host = format!("{lan}eth0\tFEA9FEA9\t0102000A\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n");
        assert!(route_covers(&host, ip));
        let down = format!("{lan}eth0\t00000000\t0202000A\t0002\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(!route_covers(&down, ip));
        let lo = format!("{header}lo\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(!route_covers(&lo, ip));
        assert!(!route_covers("", ip));
    }
}
