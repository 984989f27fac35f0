//! `osk pkg`: build the base OCI images from Debian packages.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use osk_builder::pkg;

#[derive(Subcommand)]
pub enum PkgCommand {
    /// Resolve build.yml's Debian packages against the signed archive and write build.lock.
    Lock {
        /// Package folders (pkgs/NAME).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        opts: PkgOpts,
    },
    /// Build package images from their locks into the local store.
    Build {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        opts: PkgOpts,
        /// Store directory (OCI image layout).
        #[arg(long, env = "OSK_STORE")]
        store: Option<PathBuf>,
    },
    /// Print the image reference (osk/NAME:TAG) a build would produce.
    ShowTag {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        opts: PkgOpts,
    },
}

#[derive(Args)]
pub struct PkgOpts {
    /// Debian mirror base URL (default: $OSK_DEBIAN_MIRROR, then the host's apt sources).
    #[arg(long)]
    mirror: Option<String>,
    /// OpenPGP keyring the archive's InRelease must be signed with.
    #[arg(long, default_value = pkg::release::DEFAULT_KEYRING)]
    keyring: PathBuf,
    /// Download cache (default: $XDG_CACHE_HOME/osk/debs).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl PkgOpts {
    fn options(self) -> pkg::Options {
        let mut o = pkg::Options {
            mirror: self.mirror,
            keyring: self.keyring,
            ..Default::default()
        };
        if let Some(c) = self.cache_dir {
            o.cache_dir = c;
        }
        o
    }
}

fn default_store() -> PathBuf {
    pkg::fetch::default_cache_dir()
        .parent()
        .map(|p| p.join("store"))
        .unwrap_or_else(|| PathBuf::from("osk-store"))
}

fn human(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn run(cmd: PkgCommand) -> anyhow::Result<()> {
    match cmd {
        PkgCommand::Lock { dirs, opts } => {
            let opts = opts.options();
            for d in dirs {
                let lock = pkg::lock(&d, &opts).with_context(|| format!("locking {}", d.display()))?;
                println!("{}: {} packages locked", d.display(), lock.packages.len());
            }
        }
        PkgCommand::Build { dirs, opts, store } => {
            let opts = opts.options();
            let store = store.unwrap_or_else(default_store);
            for d in dirs {
                let built = pkg::build(&d, &opts).with_context(|| format!("building {}", d.display()))?;
                pkg::write_to_store(&store, &built)?;
                println!(
                    "{}\t{}\tcompressed {}\tcontent {}",
                    built.reference,
                    built.image.manifest_digest(),
                    human(built.image.layer.len()),
                    human(built.content_size as usize)
                );
            }
        }
        PkgCommand::ShowTag { dirs, opts } => {
            let opts = opts.options();
            for d in dirs {
                println!("{}", pkg::show_tag(&d, &opts).with_context(|| format!("tagging {}", d.display()))?);
            }
        }
    }
    Ok(())
}
