//! `osk`: build, package and boot container-native operating systems.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod build;
mod cache;
mod interrupt;
mod pkg;
mod pull;
mod run;

#[derive(Parser)]
#[command(
    name = "osk",
    version,
    about = "Build, package and boot container-native operating systems"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// The local image store (an OCI layout). Default: $XDG_CACHE_HOME/osk.
    #[arg(long, global = true, env = "OSK_CACHE", value_name = "DIR")]
    cache: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a kernel and initramfs (or a tar) from manifests.
    Build(build::BuildArgs),
    /// Manage the local OCI image store.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Pull images from registries into the local store.
    Pull(pull::PullArgs),
    /// Boot a build result.
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Build base OCI images from Debian packages (pkgs/NAME).
    #[command(subcommand)]
    Pkg(pkg::PkgCommand),
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let store = cli
        .cache
        .unwrap_or_else(osk_builder::store::Store::default_path);
    let result = match cli.command {
        Command::Build(args) => interrupt::clean_up_on_signals()
            .map_err(anyhow::Error::from)
            .and_then(|()| build::run(args, store)),
        Command::Cache(cmd) => cache::run(cmd, store),
        Command::Pull(args) => pull::run(args, store),
        Command::Run(cmd) => run::run(cmd),
        Command::Pkg(cmd) => pkg::run(cmd, store),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Libraries may quote their input raw; no control byte reaches the terminal.
            let message = osk_builder::untrusted::printable(&format!("{err:#}"));
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
