//! The whole life of PID 1: early boot, onboot, containerd, services,
//! shutdown. Never returns: an exiting PID 1 panics the kernel, so any fatal
//! error is logged, the disks synced and the machine powered off on purpose.

pub mod cmdline;
pub mod early;
mod shares;
mod shell;
pub mod switchroot;

use std::path::Path;
use std::time::Duration;

use osk_layout::marker::Event;
use tokio::sync::{mpsc, oneshot, watch};

use crate::boot::cmdline::Cmdline;
use crate::bundle::onboot;
use crate::bundle::prepare::Bundle;
use crate::containerd::daemon;
use crate::log::console::{self, mark};
use crate::power::shutdown;
use crate::service::supervisor::Supervisor;
use crate::sys::{PowerAction, RealSys, Sys};
use crate::{net, paths, reaper};

/// How long after all services started the `init-rss` marker is taken.
const RSS_SETTLE: Duration = Duration::from_secs(3);

/// Entry point of the osk-init binary.
pub fn main() -> ! {
    let sys = RealSys;
    early::first_mounts(&sys);
    let cmd = Cmdline::read();
    if let Some(level) = cmd.console_loglevel() {
        let _ = sys.console_loglevel(level);
    }
    console::set_consoles(&cmd.console_paths());
    console::init_tracing(cmd.debug);
    std::panic::set_hook(Box::new(|info| {
        console::write_raw(format!("osk-init: PANIC: {info}\n").as_bytes());
    }));
    mark(Event::InitStart);
    log_idle();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if switchroot::root_is_initramfs(&sys, &mountinfo) {
        match switchroot::switch_root(&sys) {
            Ok(()) => mark(Event::RootSwitched),
            Err(e) => tracing::error!(
                "moving / off the initramfs mount failed: {e}; containers will not start (runc cannot pivot_root from the initramfs)"
            ),
        }
    }
    let outcome = std::panic::catch_unwind(|| run(&cmd));
    match outcome {
        Ok(Ok(action)) => {
            // run() only returns after shutdown::finish failed to reboot.
            fatal(&format!("reboot(2) for {action:?} returned"))
        }
        Ok(Err(e)) => fatal(&e.to_string()),
        Err(_) => fatal("panic in the main loop (see above)"),
    }
}

/// With `osk.debug`: how much of the boot the CPUs waited rather than
/// worked. Without it /proc/stat is not read at all.
fn log_idle() {
    if tracing::enabled!(tracing::Level::DEBUG) {
        if let Some(idle) = crate::log::selfstat::machine_idle_seconds() {
            tracing::debug!("CPUs idle {idle:.2} s since boot");
        }
    }
}

/// Logs, syncs and powers off. Never returns.
fn fatal(msg: &str) -> ! {
    console::write_raw(
        format!("osk-init: FATAL: {msg}; powering off (PID 1 must not exit)\n").as_bytes(),
    );
    let sys = RealSys;
    sys.sync();
    std::thread::sleep(Duration::from_secs(2));
    let _ = sys.reboot(PowerAction::PowerOff);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn early_setup(sys: &dyn Sys, cmd: &Cmdline) {
    let failed = early::setup(sys);
    // The consoles again (devtmpfs may be new), and init.log now that /var is mounted.
    console::set_consoles(&cmd.console_paths());
    console::set_file(&format!("{}/init.log", osk_layout::LOG_DIR));
    for e in failed {
        tracing::warn!("{e}");
    }
}

/// What runc needs before the first container: the files it binds into
/// host-networked containers, one sealed copy of itself, loopback. Runs
/// while containerd starts, which needs none of it.
fn prepare_runc() {
    for f in [paths::ETC_HOSTS, paths::ETC_RESOLV_CONF] {
        if !Path::new(f).exists() {
            let _ = std::fs::create_dir_all("/etc");
            let content = if f == paths::ETC_HOSTS {
                "127.0.0.1 localhost\n::1 localhost\n"
            } else {
                ""
            };
            if let Err(e) = std::fs::write(f, content) {
                tracing::warn!("creating {f}: {e}");
            }
        }
    }
    let runc = Path::new(crate::bundle::onboot::image_runc_path());
    if runc.exists() {
        match crate::containerd::sealedrunc::install(runc, Path::new(paths::BIN_DIR)) {
            Ok(link) => tracing::debug!("sealed runc at {}", link.display()),
            Err(e) => tracing::warn!("no sealed runc ({e}); every container start copies runc"),
        }
    }
    if let Err(e) = net::link_up("lo") {
        tracing::warn!("bringing up lo: {e}");
    }
}

/// Kernel modules, then the hostname (the MAC of a virtio NIC may name the
/// machine). Runs on a blocking thread while containerd starts.
fn modules_and_hostname() {
    crate::kmod::load_at_boot();
    set_hostname(&RealSys, &net::pick_hostname());
}

fn set_hostname(sys: &dyn Sys, host: &str) {
    if let Err(e) = sys.sethostname(host) {
        tracing::warn!("setting hostname {host}: {e}");
    }
    let _ = std::fs::write(paths::HOSTNAME_FILE, format!("{host}\n"));
}

/// What stops PID 1 from running at all (it then powers off).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("creating the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn run(cmd: &Cmdline) -> Result<PowerAction, BootError> {
    let sys = RealSys;
    early_setup(&sys, cmd);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BootError::Runtime)?;
    let action = rt.block_on(async_main(cmd.clone()));
    tracing::info!("shutting down: {action:?}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    shutdown::finish(
        &sys,
        action,
        &mounts,
        Duration::from_secs(2),
        &std::thread::sleep,
    );
    Ok(action)
}

async fn async_main(cmd: Cmdline) -> PowerAction {
    tokio::spawn(reaper::run());
    let (power_tx, mut power_rx) = mpsc::unbounded_channel();
    crate::power::signals::watch(&power_tx);
    if cmd.shell {
        tokio::spawn(shell::run(cmd.console_paths()[0].clone()));
    }

    // containerd starts while modules load and onboot runs (onboot uses
    // runc directly), as in LinuxKit; services wait for both, so onboot
    // still comes first for them.
    let (cd_tx, cd_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = mpsc::channel(1);
    tokio::spawn(daemon::run_supervised(cd_tx, cmd.debug, stop_rx));
    // Let the loop exec containerd, the longest start of the boot, before
    // anything else competes for the CPU.
    tokio::task::yield_now().await;

    // Services are set up now, so that their container records are made as
    // soon as containerd answers; their tasks wait for onboot.
    let mut bundles = Vec::new();
    for b in Bundle::load_all(&Path::new("/").join(osk_layout::SERVICES_DIR)) {
        match b {
            Ok(b) => bundles.push(b),
            Err(e) => tracing::error!("skipping service: {e}"),
        }
    }
    let n = bundles.len();
    let (onboot_tx, onboot_rx) = watch::channel(false);
    let (first_tx, mut first_rx) = mpsc::unbounded_channel();
    let sup = Supervisor::start(bundles, cd_rx, onboot_rx, cmd.debug, first_tx);

    if let Err(e) = tokio::task::spawn_blocking(|| {
        prepare_runc();
        modules_and_hostname();
        shares::mount_all(&RealSys, shares::read_table().as_deref());
    })
    .await
    {
        tracing::error!("loading modules: {e}");
    }
    // The power button's input device exists once evdev is loaded.
    crate::power::button::watch(power_tx.clone());

    // Onboot containers may bind volumes too.
    crate::bundle::volumes::prepare_all(&RealSys);
    onboot::run_all(
        &Path::new("/").join(osk_layout::ONBOOT_DIR),
        paths::ONBOOT_LOG_DIR,
        cmd.onboot_timeout,
    )
    .await;
    mark(Event::OnbootDone);
    // Metadata (the `metadata` onboot container) names the machine over
    // /etc/hostname and the MAC, before any service starts.
    if let Some(h) = net::read_hostname(Path::new(paths::METADATA_HOSTNAME)) {
        tracing::info!("hostname {h} (from {})", paths::METADATA_HOSTNAME);
        set_hostname(&RealSys, &h);
    }

    let _ = onboot_tx.send(true);
    tokio::spawn(async move {
        for _ in 0..n {
            if first_rx.recv().await.is_none() {
                return;
            }
        }
        mark(Event::AllServicesStarted);
        log_idle();
        // Steady state: the start-up bursts (gRPC, log pumps) are over.
        tokio::time::sleep(RSS_SETTLE).await;
        if let Some(kib) = crate::log::selfstat::rss_kib() {
            mark(Event::InitRss(kib));
        }
    });
    tokio::spawn(crate::control::serve(sup.clone(), power_tx.clone()));

    let action = power_rx.recv().await.unwrap_or(PowerAction::PowerOff);
    mark(Event::ShutdownStart);
    tracing::info!("{action:?} requested: stopping services");
    let stages = BootStages { sup, stop_tx };
    shutdown::stop_stages(&stages, shutdown::Limits::default()).await;
    action
}

/// What [`shutdown::stop_stages`] stops on a running machine.
struct BootStages {
    sup: Supervisor,
    stop_tx: mpsc::Sender<daemon::StopRequest>,
}

impl shutdown::Stages for BootStages {
    async fn stop_services(&self) {
        self.sup.stop_all().await
    }

    async fn run_onshutdown(&self) {
        onboot::run_all(
            &Path::new("/").join(osk_layout::ONSHUTDOWN_DIR),
            paths::ONSHUTDOWN_LOG_DIR,
            None,
        )
        .await;
        mark(Event::OnshutdownDone);
    }

    async fn stop_containerd(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.stop_tx.send(done_tx).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}
