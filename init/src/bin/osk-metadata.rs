//! osk-metadata: an onboot container that writes the machine's metadata
//! (`osk run --data`, NoCloud `CIDATA`, OpenStack `config-2`) under
//! /run/config. See init/src/metadata/mod.rs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use osk_init::metadata::{self, devices};

#[derive(Parser)]
#[command(about = "Write metadata from a CIDATA or config-2 volume under /run/config")]
struct Cli {
    /// Where the files go.
    #[arg(long, default_value = osk_init::paths::METADATA_DIR)]
    config_dir: PathBuf,
    /// How long to wait for a labelled volume to show up (disk and CD-ROM
    /// drivers may still be probing), in seconds.
    #[arg(long, default_value_t = 2.0)]
    wait: f64,
    /// The kernel's list of block devices.
    #[arg(long, default_value = "/sys/class/block", hide = true)]
    sys_block: PathBuf,
    /// Where their nodes are.
    #[arg(long, default_value = "/dev", hide = true)]
    dev: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let deadline = Instant::now() + Duration::from_secs_f64(cli.wait.max(0.0));
    let found = loop {
        if let Some(f) = devices::find(&cli.sys_block, &cli.dev) {
            break Some(f);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // No metadata is a normal boot, as with LinuxKit.
    let Some((device, file, kind)) = found else {
        tracing::info!("no CIDATA or config-2 volume found; nothing to write");
        return Ok(());
    };
    tracing::info!("metadata: {kind:?} volume on {}", device.display());
    let written = metadata::extract(&file, &device, kind, &cli.config_dir)
        .with_context(|| format!("writing metadata to {}", cli.config_dir.display()))?;
    tracing::info!(
        "wrote {} under {}",
        written.join(", "),
        cli.config_dir.display()
    );
    Ok(())
}
