//! `osk pkg`: build the base OCI images from Debian packages.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use osk_builder::arch::Arch;
use osk_builder::pkg;
use osk_builder::store::Store;

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
    /// Build package images from their locks into the local store; several
    /// `--arch`es also tag one multi-platform index over them.
    Build {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        opts: PkgOpts,
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
    /// Architectures to lock or build for, comma-separated: amd64, arm64 (default: the host's).
    #[arg(long, value_delimiter = ',', default_values_t = [Arch::host()])]
    arch: Vec<Arch>,
    /// Debian mirror base URL (default: $OSK_DEBIAN_MIRROR, then the host's apt sources).
    #[arg(long)]
    mirror: Option<String>,
    /// OpenPGP keyring the archive's InRelease must be signed with.
    #[arg(long, default_value = pkg::debian::release::DEFAULT_KEYRING)]
    keyring: PathBuf,
    /// Download cache for indexes and .debs, by SHA-256 (default: STORE/debs).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Lock against a suite whose signed Release is past its Valid-Until
    /// (apt's Acquire::Check-Valid-Until=false; also OSK_ALLOW_EXPIRED_RELEASE=1).
    #[arg(long)]
    allow_expired_release: bool,
    /// A registry (HOST or HOST:PORT) to reach over plain HTTP when a `from:`
    /// image must be pulled; repeatable. Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
}

impl PkgOpts {
    /// The options for each architecture asked for.
    fn per_arch(self, store: &std::path::Path) -> Vec<pkg::Options> {
        let arches = self.arch.clone();
        let base = self.options(store);
        arches
            .into_iter()
            .map(|arch| pkg::Options {
                arch,
                ..base.clone()
            })
            .collect()
    }

    fn options(self, store: &std::path::Path) -> pkg::Options {
        let mut o = pkg::Options {
            mirror: self.mirror,
            keyring: self.keyring,
            ..Default::default()
        };
        o.cache_dir = self.cache_dir.unwrap_or_else(|| store.join("debs"));
        o.allow_expired_release |= self.allow_expired_release;
        o.insecure_registries = self.insecure_registries;
        o
    }
}

fn human(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn run(cmd: PkgCommand, store_dir: PathBuf) -> anyhow::Result<()> {
    match cmd {
        PkgCommand::Lock { dirs, opts } => {
            let all = opts.per_arch(&store_dir);
            for d in dirs {
                for opts in &all {
                    let lock = pkg::lock(&d, opts)
                        .with_context(|| format!("locking {} for {}", d.display(), opts.arch))?;
                    println!(
                        "{}: {} packages locked for {}",
                        d.display(),
                        lock.packages.len(),
                        opts.arch
                    );
                }
            }
        }
        PkgCommand::Build { dirs, opts } => {
            let all = opts.per_arch(&store_dir);
            let store = Store::open(&store_dir)?;
            for d in dirs {
                let mut images = Vec::new();
                for opts in &all {
                    let built = pkg::build(&d, &store, opts)
                        .with_context(|| format!("building {} for {}", d.display(), opts.arch))?;
                    let desc = pkg::write_to_store(&store, &built)?;
                    println!(
                        "{}\t{}\t{}\tcompressed {}\tcontent {}",
                        built.reference,
                        opts.arch,
                        desc.digest(),
                        human(built.image.layer.len()),
                        human(built.content_size as usize)
                    );
                    images.push((opts.arch, built));
                }
                if images.len() > 1 {
                    let refs: Vec<_> = images.iter().map(|(a, b)| (*a, b)).collect();
                    let index = pkg::write_index(&store, &refs)
                        .with_context(|| format!("indexing {}", d.display()))?;
                    let arches: Vec<String> = images.iter().map(|(a, _)| a.to_string()).collect();
                    println!("{}\tindex\t{}", index.familiar(), arches.join(","));
                }
            }
        }
        PkgCommand::ShowTag { dirs, opts } => {
            let all = opts.per_arch(&store_dir);
            // A `from:` image's digest is an input of the tag.
            let store = Store::open(&store_dir)?;
            for d in dirs {
                for opts in &all {
                    println!(
                        "{}",
                        pkg::show_tag(&d, &store, opts)
                            .with_context(|| format!("tagging {}", d.display()))?
                    );
                }
            }
        }
    }
    Ok(())
}
