//! osk-sockfwd: the guest half of `osk run qemu --forward-socket`, run as a
//! service. See init/src/sockfwd.rs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(about = "Join connections from the host (QEMU's user network) to guest unix sockets")]
struct Cli {
    /// The table `osk run qemu` wrote (PORT<TAB>SOCKET per line).
    #[arg(long, default_value = osk_layout::forward::FW_CFG_RAW)]
    table: PathBuf,
}

fn main() -> anyhow::Result<()> {
    osk_init::log::init_tool();
    let cli = Cli::parse();
    // PID 1 of its container ignores SIGTERM without a handler, so every
    // stop would wait out the grace period: block it in every thread (they
    // inherit this mask) and return when it arrives.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block().context("blocking SIGTERM")?;
    std::thread::spawn(move || {
        if let Err(e) = forward(&cli.table) {
            tracing::error!("{e:#}");
            std::process::exit(1);
        }
    });
    let signal = stop.wait().context("waiting for SIGTERM")?;
    tracing::info!("{signal}: stopping");
    Ok(())
}

/// Serves the table's forwards; without a table (booted without
/// `--forward-socket`) there is nothing to do, and the service stays up idle
/// rather than exit and be restarted.
fn forward(table: &Path) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(table) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("no forwarded sockets ({} is absent)", table.display());
            loop {
                std::thread::park();
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", table.display())),
    };
    let forwards = osk_layout::forward::parse(&text)
        .with_context(|| format!("reading {}", table.display()))?;
    osk_init::sockfwd::serve(forwards, || {
        std::fs::read_to_string("/proc/net/route").unwrap_or_default()
    })?;
    Ok(())
}
