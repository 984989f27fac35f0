//! `osk cache`: the local OCI image store.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List images in the store.
    Ls,
}

pub fn run(cmd: CacheCommand) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Ls => anyhow::bail!("not implemented yet"),
    }
}
