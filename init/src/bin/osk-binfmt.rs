//! osk-binfmt: registers Debian's qemu-user-static handlers with
//! binfmt_misc, as an onboot container. See init/src/binfmt/.

use std::path::PathBuf;

use clap::Parser;
use osk_init::binfmt::{self, Outcome};
use osk_init::sys::RealBinfmt;

#[derive(Parser)]
#[command(about = "Register foreign-architecture emulators with binfmt_misc (idempotent)")]
struct Cli {
    /// Where binfmt_misc is (or gets) mounted; the handlers live as long as
    /// this mount (the host's /proc/sys/fs/binfmt_misc, bound in shared).
    #[arg(long, default_value = binfmt::DEFAULT_DIR)]
    dir: PathBuf,
    /// A directory to mount binfmt_misc on first when DIR does not exist yet
    /// (the module is not loaded): the mount loads it.
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Handler definitions, systemd's binfmt.d format.
    #[arg(long, default_value = binfmt::DEFAULT_CONF_DIR)]
    conf_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    osk_init::log::init_tool();
    let cli = Cli::parse();
    let handlers = binfmt::load(&cli.conf_dir)?;
    let arch = std::env::consts::ARCH;
    let results = binfmt::register_all(
        &RealBinfmt,
        &cli.dir,
        cli.scratch.as_deref(),
        &handlers,
        arch,
    )?;
    let mut failed = 0;
    for (name, r) in results {
        match r {
            Ok(Outcome::Registered) => tracing::info!("{name}: registered"),
            Ok(Outcome::AlreadyRegistered) => tracing::info!("{name}: already registered"),
            Ok(Outcome::Native) => tracing::info!("{name}: native on {arch}, not registered"),
            Err(e) => {
                tracing::error!("{e}");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} handler(s) not registered");
    Ok(())
}
