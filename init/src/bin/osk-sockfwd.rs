//! osk-sockfwd: the guest half of `osk run qemu --forward-socket`, run as a
//! service. See init/src/sockfwd.rs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Join connections from the host (QEMU's user network) to guest unix sockets")]
struct Cli {
    /// The table `osk run qemu` wrote (PORT<TAB>SOCKET per line).
    #[arg(long, default_value = osk_layout::forward::FW_CFG_RAW)]
    table: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    let text = match std::fs::read_to_string(&cli.table) {
        Ok(t) => t,
        // Booted without --forward-socket: nothing to do, and nothing wrong.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("no forwarded sockets ({} is absent)", cli.table.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", cli.table.display())),
    };
    let forwards = osk_layout::forward::parse(&text)
        .with_context(|| format!("reading {}", cli.table.display()))?;
    osk_init::sockfwd::serve(forwards, || {
        std::fs::read_to_string("/proc/net/route").unwrap_or_default()
    })?;
    Ok(())
}
