//! osk-timesync: steps the guest's clock back onto the hypervisor's after a
//! pause or a host sleep, as a service. See init/src/timesync.rs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use osk_init::sys::RealClock;
use osk_init::timesync::{self, Reference};

#[derive(Parser)]
#[command(about = "Step CLOCK_REALTIME onto KVM's PTP clock or the RTC when it is off")]
struct Cli {
    /// The PTP clock used when it is KVM's (`ptp_kvm`).
    #[arg(long, default_value = "/dev/ptp0")]
    ptp: PathBuf,
    /// The RTC used otherwise.
    #[arg(long, default_value = "/dev/rtc0")]
    rtc: PathBuf,
    /// Seconds between checks.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Step when the clock is off by more than this many seconds.
    #[arg(long, default_value_t = 1.5)]
    threshold: f64,
}

fn main() -> anyhow::Result<()> {
    osk_init::log::init_tool();
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.interval > 0.0 && cli.threshold > 0.0,
        "--interval and --threshold must be positive"
    );
    // PID 1 of its container ignores SIGTERM without a handler: block it in
    // every thread and return when it arrives.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM")?;
    std::thread::spawn(move || watch(&cli));
    let signal = stop.wait().context("waiting for SIGTERM")?;
    tracing::info!("{signal}: stopping");
    Ok(())
}

fn watch(cli: &Cli) {
    let threshold = (cli.threshold * 1e9) as i128;
    let mut current: Option<Reference> = None;
    loop {
        // Chosen again each time: ptp_kvm may come after the service.
        let reference = timesync::choose(&RealClock, &cli.ptp, &cli.rtc);
        if current.as_ref() != Some(&reference) {
            tracing::info!("reference clock: {reference}");
            current = Some(reference.clone());
        }
        match timesync::check(&RealClock, &reference, threshold) {
            Ok(Some(step)) => tracing::info!(
                "clock was off by {}: stepped onto {reference}",
                timesync::seconds(step)
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        std::thread::sleep(Duration::from_secs_f64(cli.interval));
    }
}
