//! osk-metadata: an onboot container that writes the machine's metadata
//! (`osk run --data`, NoCloud `CIDATA`, OpenStack `config-2`, else the
//! metadata service at 169.254.169.254) under /run/config. See
//! init/src/metadata/mod.rs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use osk_init::metadata::service::{self, HttpLink, Outcome, Policy};
use osk_init::metadata::{self, devices};

#[derive(Parser)]
#[command(
    about = "Write metadata from a CIDATA or config-2 volume, else the cloud's metadata service, under /run/config"
)]
struct Cli {
    /// Where the files go.
    #[arg(long, default_value = osk_init::paths::METADATA_DIR)]
    config_dir: PathBuf,
    /// How long to wait for a labelled volume to show up (disk and CD-ROM
    /// drivers may still be probing), in seconds.
    #[arg(long, default_value_t = 2.0)]
    wait: f64,
    /// Without a volume, how long to wait for a route to the metadata
    /// service and its answers (OpenStack's, then EC2's), in seconds; 0
    /// never asks it.
    #[arg(long, default_value_t = 20.0)]
    service_wait: f64,
    /// The bound of one request to the metadata service, in seconds.
    #[arg(long, default_value_t = 5.0)]
    request_timeout: f64,
    /// The metadata service.
    #[arg(long, default_value_t = service::SERVICE, hide = true)]
    service: SocketAddr,
    /// The kernel's routing table (is the network up yet?).
    #[arg(long, default_value = "/proc/net/route", hide = true)]
    routes: PathBuf,
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
        tracing::info!("no CIDATA or config-2 volume found");
        return from_service(&cli);
    };
    tracing::info!("metadata: {kind:?} volume on {}", device.display());
    written(
        &cli,
        metadata::extract(&file, &device, kind, &cli.config_dir),
    )
}

/// Logs what was written, or says where writing failed.
fn written(cli: &Cli, result: Result<Vec<String>, metadata::MetadataError>) -> anyhow::Result<()> {
    let dir = cli.config_dir.display();
    let files = result.with_context(|| format!("writing metadata to {dir}"))?;
    tracing::info!("wrote {} under {dir}", files.join(", "));
    Ok(())
}

/// Asks the metadata service; finding none is a normal boot too.
fn from_service(cli: &Cli) -> anyhow::Result<()> {
    if cli.service_wait <= 0.0 {
        return Ok(());
    }
    let policy = Policy {
        budget: Duration::from_secs_f64(cli.service_wait),
        request_timeout: Duration::from_secs_f64(cli.request_timeout.max(0.1)),
    };
    let mut link = HttpLink::new(cli.service, &cli.routes);
    let origin = service::Link::origin(&link);
    let secs = cli.service_wait;
    let meta = match service::discover(&mut link, policy)? {
        Outcome::Found(m) => m,
        Outcome::NoRoute => {
            tracing::warn!(
                "no route to {origin} within {secs}s (no DHCP lease yet? run dhcpcd -1 in onboot before metadata); no metadata"
            );
            return Ok(());
        }
        Outcome::NoAnswer { url, last } => {
            tracing::warn!("no metadata service: {url} did not answer within {secs}s ({last})");
            return Ok(());
        }
        Outcome::Empty => {
            tracing::warn!(
                "{origin} has neither OpenStack (openstack/latest/meta_data.json) nor EC2 (latest/meta-data) metadata"
            );
            return Ok(());
        }
    };
    tracing::info!(
        "metadata: {:?} service at {origin} after {:.1}s",
        meta.source,
        service::Link::elapsed(&link).as_secs_f64()
    );
    written(cli, metadata::write_cloud(&meta, &origin, &cli.config_dir))
}
