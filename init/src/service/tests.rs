//! The supervisor against the fake runtime, on tokio's paused clock: every
//! rule of restart, back-off, ordering, stopping and re-attaching, checked
//! by the time and order of the calls containerd would have seen.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use osk_layout::{RestartPolicy, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::fake::{FakeHost, FakeRuntime, Run, Script};
use super::state::ServiceState;
use super::supervisor::{Cmd, Supervisor};
use crate::bundle::prepare::Bundle;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn at(times: &[f64]) -> Vec<Duration> {
    times.iter().map(|t| secs(*t)).collect()
}

fn service(name: &str, runtime: Runtime) -> Bundle {
    Bundle {
        name: name.into(),
        dir: PathBuf::from("/fake/services").join(name),
        runtime,
    }
}

fn depends_on(deps: &[&str]) -> Runtime {
    Runtime {
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

fn policy(p: RestartPolicy) -> Runtime {
    Runtime {
        restart: Some(p),
        ..Default::default()
    }
}

/// A supervisor over the fake runtime, with onboot done and containerd up.
struct Rig {
    t0: Instant,
    fake: FakeRuntime,
    host: Arc<FakeHost>,
    cd: watch::Sender<Option<FakeRuntime>>,
    _onboot: watch::Sender<bool>,
    sup: Supervisor,
    first: mpsc::UnboundedReceiver<String>,
}

impl Rig {
    fn new(bundles: Vec<Bundle>, scripts: Vec<(&str, Script)>) -> Rig {
        Rig::with_host(bundles, scripts, FakeHost::default())
    }

    fn with_host(bundles: Vec<Bundle>, scripts: Vec<(&str, Script)>, host: FakeHost) -> Rig {
        let fake = FakeRuntime::new();
        for (name, s) in scripts {
            fake.script(name, s);
        }
        let host = Arc::new(host);
        let (cd, cd_rx) = watch::channel(Some(fake.connect()));
        let (onboot, onboot_rx) = watch::channel(true);
        let (first_tx, first) = mpsc::unbounded_channel();
        let sup = Supervisor::start_with(bundles, cd_rx, onboot_rx, first_tx, host.clone());
        Rig {
            t0: Instant::now(),
            fake,
            host,
            cd,
            _onboot: onboot,
            sup,
            first,
        }
    }

    /// Lets the services run until `t` seconds after the start.
    async fn until(&self, t: f64) {
        sleep_until(self.t0 + secs(t)).await;
    }

    fn state(&self, name: &str) -> ServiceState {
        self.sup.state(name).expect("a service").0
    }

    fn restarts(&self, name: &str) -> u32 {
        self.sup.state(name).expect("a service").1
    }

    fn starts(&self, name: &str) -> Vec<Duration> {
        self.fake.times(&format!("start {name}"))
    }

    /// The services that reported their first start so far.
    fn reported(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(n) = self.first.try_recv() {
            out.push(n);
        }
        out
    }

    /// Position of the first call `what` in the fake's log.
    fn position(&self, what: &str) -> usize {
        self.fake
            .log()
            .iter()
            .position(|(_, w)| w == what || w.starts_with(&format!("{what} ")))
            .unwrap_or_else(|| panic!("no {what:?} in {:?}", self.fake.log()))
    }
}

/// The delays between each exit of `name` and its next start.
fn gaps(fake: &FakeRuntime, name: &str) -> Vec<Duration> {
    let exits = fake.times(&format!("exit {name}"));
    let starts = fake.times(&format!("start {name}"));
    exits
        .iter()
        .zip(starts.iter().skip(1))
        .map(|(e, s)| *s - *e)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn restarts_a_failure_after_1_2_4_s_and_back_to_1_s_after_60_s_of_health() {
    let quick = Run::exits_after(1, 1);
    let rig = Rig::new(
        vec![service("web", Runtime::default())],
        vec![(
            "web",
            Script::runs(
                [quick, quick, quick, Run::exits_after(61, 1), quick],
                Run::forever(),
            ),
        )],
    );
    // Exited at 3 s after a 1 s run: back in 2 s.
    rig.until(4.0).await;
    assert_eq!(
        rig.state("web"),
        ServiceState::Backoff {
            code: 1,
            until: rig.t0 + secs(5.0)
        }
    );
    assert_eq!(rig.sup.ps()[0].state, "backoff");
    rig.until(100.0).await;
    // Runs at 0, 2, 5, 10 (1 s each, delays 1, 2, 4 s); the fourth lasts
    // 61 s, so its exit at 71 s waits 1 s again, and the next one 2 s.
    assert_eq!(rig.starts("web"), at(&[0.0, 2.0, 5.0, 10.0, 72.0, 75.0]));
    assert_eq!(gaps(&rig.fake, "web"), at(&[1.0, 2.0, 4.0, 1.0, 2.0]));
    assert_eq!(rig.restarts("web"), 5);
    let row = &rig.sup.ps()[0];
    assert_eq!((row.state.as_str(), row.uptime), ("running", Some(25)));
    assert_eq!(row.pid, Some(105), "the sixth task's pid");
}

#[tokio::test(start_paused = true)]
async fn a_flapping_service_backs_off_doubling_up_to_30_s() {
    let mut rig = Rig::new(
        vec![service("flap", Runtime::default())],
        vec![("flap", Script::always(Run::exits_after(1, 2)))],
    );
    rig.until(130.0).await;
    assert_eq!(
        gaps(&rig.fake, "flap"),
        at(&[1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
    );
    assert_eq!(
        rig.starts("flap"),
        at(&[0.0, 2.0, 5.0, 10.0, 19.0, 36.0, 67.0, 98.0, 129.0])
    );
    assert_eq!(rig.restarts("flap"), 8);
    // The boot hears of it once, and its marker is on the console once.
    assert_eq!(rig.reported(), ["flap"]);
    assert_eq!(rig.host.marks(), ["service-started:flap"]);
}

#[tokio::test(start_paused = true)]
async fn restart_no_always_and_the_default_on_failure() {
    let rig = Rig::new(
        vec![
            service("once", policy(RestartPolicy::No)),
            service("always", policy(RestartPolicy::Always)),
            service("clean", Runtime::default()),
            service("failing", Runtime::default()),
        ],
        vec![
            ("once", Script::always(Run::exits_after(3, 1))),
            ("always", Script::always(Run::exits_after(5, 0))),
            ("clean", Script::always(Run::exits_after(5, 0))),
            ("failing", Script::always(Run::exits_after(5, 3))),
        ],
    );
    rig.until(20.0).await;
    // `no`: even a failure stays down.
    assert_eq!(rig.starts("once"), at(&[0.0]));
    assert_eq!(rig.state("once"), ServiceState::Exited { code: 1 });
    // `always`: a clean exit comes back too, after the back-off.
    assert_eq!(rig.starts("always"), at(&[0.0, 6.0, 13.0]));
    // on-failure (the default): exit 0 is done, exit 3 is restarted.
    assert_eq!(rig.starts("clean"), at(&[0.0]));
    assert_eq!(rig.state("clean"), ServiceState::Exited { code: 0 });
    assert_eq!(rig.starts("failing"), at(&[0.0, 6.0, 13.0]));
    let shown: Vec<(String, String)> = rig
        .sup
        .ps()
        .into_iter()
        .map(|s| (s.name, s.state))
        .collect();
    assert!(
        shown.contains(&("once".into(), "exited(1)".into())),
        "{shown:?}"
    );
    assert!(
        shown.contains(&("clean".into(), "exited(0)".into())),
        "{shown:?}"
    );
    assert_eq!(rig.restarts("once"), 0);
    assert_eq!(rig.restarts("always"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_service_starts_only_once_its_dependencies_run() {
    // db's container cannot be made until 3 s (ahead, at 0 and at 1 s);
    // web needs db, api needs web.
    let rig = Rig::new(
        vec![
            service("api", depends_on(&["web"])),
            service("db", Runtime::default()),
            service("web", depends_on(&["db"])),
        ],
        vec![("db", Script::always(Run::forever()).failing_creates(3))],
    );
    rig.until(2.5).await;
    assert_eq!(rig.state("web"), ServiceState::Waiting);
    assert_eq!(rig.state("api"), ServiceState::Waiting);
    // Their container records are made ahead all the same.
    assert_eq!(rig.fake.times("create web"), at(&[0.0]));
    assert_eq!(rig.fake.times("create api"), at(&[0.0]));
    rig.until(10.0).await;
    assert_eq!(rig.starts("db"), at(&[3.0]));
    assert_eq!(rig.starts("web"), at(&[3.0]));
    assert_eq!(rig.starts("api"), at(&[3.0]));
    assert!(rig.position("start db") < rig.position("start web"));
    assert!(rig.position("start web") < rig.position("start api"));
    assert!(matches!(rig.state("api"), ServiceState::Running { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_dependency_cycle_waits_without_hanging_init() {
    let mut rig = Rig::new(
        vec![
            service("a", depends_on(&["b"])),
            service("b", depends_on(&["a"])),
            service("c", Runtime::default()),
        ],
        vec![],
    );
    rig.until(60.0).await;
    assert!(rig.starts("a").is_empty() && rig.starts("b").is_empty());
    assert_eq!(rig.state("a"), ServiceState::Waiting);
    assert_eq!(rig.starts("c"), at(&[0.0]));
    assert_eq!(rig.reported(), ["c"]);
    // The shutdown still goes through, at once.
    let began = Instant::now();
    tokio::time::timeout(secs(60.0), rig.sup.stop_all())
        .await
        .expect("stopping a dependency cycle hung");
    assert_eq!(began.elapsed(), Duration::ZERO);
    for s in ["a", "b", "c"] {
        assert_eq!(rig.state(s), ServiceState::Stopped, "{s}");
    }
    assert_eq!(rig.fake.times("kill c 15"), at(&[60.0]));
}

#[tokio::test(start_paused = true)]
async fn stop_all_goes_in_reverse_dependency_order_with_grace_then_sigkill() {
    let grace = |s: u64, deps: &[&str]| Runtime {
        stop_grace_period: Some(s),
        ..depends_on(deps)
    };
    let rig = Rig::new(
        vec![
            service("net", Runtime::default()),
            service("db", depends_on(&["net"])),
            service("web", grace(2, &["db"])),
            service("cron", Runtime::default()),
        ],
        vec![
            ("web", Script::always(Run::forever().ignores_term())),
            ("db", Script::always(Run::forever().term_takes(secs(1.0)))),
            ("cron", Script::always(Run::forever().term_takes(secs(0.5)))),
        ],
    );
    rig.until(5.0).await;
    let began = Instant::now();
    tokio::time::timeout(secs(60.0), rig.sup.stop_all())
        .await
        .expect("stop_all hung");
    // web ignores SIGTERM: SIGKILL after its 2 s; only then db (1 s to go),
    // then net. cron, on its own, in parallel with web.
    assert_eq!(began.elapsed(), secs(3.0));
    let f = &rig.fake;
    assert_eq!(f.times("kill web 15"), at(&[5.0]));
    assert_eq!(f.times("kill web 9"), at(&[7.0]));
    assert_eq!(f.times("exit web"), at(&[7.0]));
    assert_eq!(f.times("kill db 15"), at(&[7.0]));
    assert_eq!(f.times("exit db"), at(&[8.0]));
    assert!(f.times("kill db 9").is_empty(), "db went within its grace");
    assert_eq!(f.times("kill net 15"), at(&[8.0]));
    assert_eq!(f.times("kill cron 15"), at(&[5.0]));
    assert_eq!(f.times("exit cron"), at(&[5.5]));
    for s in ["net", "db", "web", "cron"] {
        assert_eq!(rig.state(s), ServiceState::Stopped, "{s}");
        assert_eq!(f.times(&format!("delete {s}")).len(), 1, "{s}");
    }
    // Stopped stays stopped.
    rig.until(100.0).await;
    assert_eq!(rig.starts("web"), at(&[0.0]));
}

#[tokio::test(start_paused = true)]
async fn running_tasks_are_picked_up_again_after_containerd_dies() {
    let rig = Rig::new(
        vec![
            service("alive", Runtime::default()),
            service("dies", Runtime::default()),
            service("lost", Runtime::default()),
        ],
        vec![],
    );
    rig.until(10.0).await;
    let pid = rig.state("alive").pid();
    rig.fake.crash();
    rig.cd.send_replace(None);
    rig.until(12.0).await;
    // While containerd is away, one task exits and another's record is lost.
    rig.fake.exit("dies", 3);
    rig.fake.forget("lost");
    rig.until(20.0).await;
    let log = rig.fake.log();
    assert!(
        log.iter()
            .all(|(t, w)| !w.starts_with("start ") || t.is_zero()),
        "nothing starts while containerd is down: {log:?}"
    );
    rig.cd.send_replace(Some(rig.fake.connect()));
    rig.until(30.0).await;
    // Re-attached, not restarted: same task, same pid, uptime from boot.
    assert_eq!(rig.starts("alive"), at(&[0.0]));
    assert_eq!(rig.state("alive").pid(), pid);
    assert_eq!(rig.restarts("alive"), 0);
    let alive = rig
        .sup
        .ps()
        .into_iter()
        .find(|s| s.name == "alive")
        .unwrap();
    assert_eq!(alive.uptime, Some(30));
    // The exit seen on return is handled by policy: 1 s back-off.
    assert_eq!(rig.starts("dies"), at(&[0.0, 21.0]));
    assert_eq!(rig.fake.times("exit dies"), at(&[12.0]));
    // A task containerd no longer knows counts as lost (255): restarted.
    assert_eq!(rig.starts("lost"), at(&[0.0, 21.0]));
    assert_eq!(rig.restarts("lost"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_service_that_cannot_be_created_retries_with_back_off() {
    let mut rig = Rig::new(
        vec![
            service("bad", Runtime::default()),
            service("once", policy(RestartPolicy::No)),
        ],
        vec![
            (
                "bad",
                Script::always(Run::forever()).failing_creates(u32::MAX),
            ),
            (
                "once",
                Script::always(Run::forever()).failing_creates(u32::MAX),
            ),
        ],
    );
    rig.until(10.0).await;
    // Ahead of time (silently) and then at 0, 1, 3, 7 s.
    assert_eq!(
        rig.fake.times("create-failed bad"),
        at(&[0.0, 0.0, 1.0, 3.0, 7.0])
    );
    assert!(rig.starts("bad").is_empty());
    assert!(matches!(
        rig.state("bad"),
        ServiceState::Backoff { code: 255, .. }
    ));
    assert_eq!(rig.restarts("bad"), 3);
    assert_eq!(rig.state("once"), ServiceState::Exited { code: 255 });
    assert_eq!(rig.fake.times("create-failed once").len(), 2);
    // The boot is not held up by them, and no start marker is made.
    let reported: BTreeSet<String> = rig.reported().into_iter().collect();
    assert_eq!(reported, BTreeSet::from(["bad".into(), "once".into()]));
    assert!(rig.host.marks().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_host_preparation_removes_the_task_and_retries() {
    let host = FakeHost {
        bad_prepare: BTreeSet::from(["vpn".to_string()]),
        ..Default::default()
    };
    let rig = Rig::with_host(vec![service("vpn", Runtime::default())], vec![], host);
    rig.until(4.0).await;
    assert_eq!(rig.fake.times("prepare-failed vpn"), at(&[0.0, 1.0, 3.0]));
    assert!(rig.starts("vpn").is_empty(), "never started unprepared");
    assert!(matches!(rig.state("vpn"), ServiceState::Backoff { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_service_without_log_fifos_fails_and_is_never_created() {
    let host = FakeHost {
        no_fifos: BTreeSet::from(["mute".to_string()]),
        ..Default::default()
    };
    let mut rig = Rig::with_host(vec![service("mute", Runtime::default())], vec![], host);
    rig.until(30.0).await;
    assert!(matches!(rig.state("mute"), ServiceState::Failed { .. }));
    assert!(rig.fake.log().is_empty(), "{:?}", rig.fake.log());
    assert_eq!(rig.reported(), ["mute"]);
    assert!(rig.sup.send("mute", Cmd::Start).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn oskctl_stop_start_and_restart() {
    let rig = Rig::new(
        vec![service(
            "sshd",
            Runtime {
                namespace: Some("other".into()),
                ..Default::default()
            },
        )],
        vec![],
    );
    rig.until(1.0).await;
    assert_eq!(rig.fake.times("create sshd in other").len(), 1);
    rig.sup.send("sshd", Cmd::Stop(None)).await.unwrap();
    rig.until(2.0).await;
    assert_eq!(rig.state("sshd"), ServiceState::Stopped);
    assert_eq!(rig.fake.times("kill sshd 15"), at(&[1.0]));
    rig.sup.send("sshd", Cmd::Start).await.unwrap();
    rig.until(3.0).await;
    assert_eq!(rig.starts("sshd"), at(&[0.0, 2.0]));
    let before = rig.state("sshd").pid();
    rig.sup.send("sshd", Cmd::Restart).await.unwrap();
    rig.until(4.0).await;
    assert_eq!(rig.starts("sshd"), at(&[0.0, 2.0, 3.0]));
    assert_ne!(rig.state("sshd").pid(), before);
    // Asked for, not a failure: no restart counted, no back-off.
    assert_eq!(rig.restarts("sshd"), 0);
    let err = rig.sup.send("nope", Cmd::Start).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no service named \"nope\" (see `oskctl ps`)"
    );
}
