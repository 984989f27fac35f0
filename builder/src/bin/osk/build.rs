//! `osk build`: manifests to kernel+initrd (or tar) outputs, without a daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osk_builder::assemble::Spool;
use osk_builder::build::{self, BuildOptions, Compression, Format, Resolver, StoreRegistry};
use osk_builder::manifest;
use osk_builder::store::{host_arch, Store};

#[derive(Args)]
pub struct BuildArgs {
    /// Manifests, merged in order (`-` reads standard input).
    #[arg(required = true, value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// Output format; repeat for several (kernel+initrd, tar).
    #[arg(long = "format", short = 'f', default_value = "kernel+initrd")]
    formats: Vec<Format>,
    /// Directory the outputs go to.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Base name of the outputs (default: the first manifest's file name without extension).
    #[arg(long)]
    name: Option<String>,
    /// initramfs compression: zstd (segments, cached), zstd-max (one archive,
    /// smallest), gzip, xz, lz4 (legacy format) or none.
    #[arg(long, default_value = "zstd")]
    compress: Compression,
    /// Architecture of the images to use.
    #[arg(long, default_value_t = host_arch().to_string())]
    arch: String,
    /// Where unpacked layer contents are cached (default: DIR/spool under the store).
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Print the merged, validated manifest and stop; nothing is written.
    #[arg(long)]
    dry_run: bool,
    /// Fetch every registry image's tag again even when the store has it.
    #[arg(long)]
    pull: bool,
    /// A registry (HOST or HOST:PORT) to reach over plain HTTP; repeatable.
    /// Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure_registries: Vec<String>,
}

pub fn run(args: BuildArgs, store_path: PathBuf) -> anyhow::Result<()> {
    let m = manifest::load(&args.manifests)?;
    if args.dry_run {
        print!("{}", m.to_yaml());
        return Ok(());
    }
    let store = Store::open(&store_path)
        .with_context(|| format!("opening the image store {}", store_path.display()))?;
    let spool_dir = args.spool.unwrap_or_else(|| store_path.join("spool"));
    let spool = Spool::open(&spool_dir)
        .with_context(|| format!("opening the spool {}", spool_dir.display()))?;
    let provider = StoreRegistry {
        store: &store,
        deb_cache: store_path.join("debs"),
        insecure_registries: args.insecure_registries,
    };
    let mut resolve = Resolver::new(provider, args.arch).refresh(args.pull);
    let plan = build::plan(&m, &mut resolve)?;
    let opts = BuildOptions {
        formats: build::unique_formats(args.formats),
        dir: args.dir,
        name: args
            .name
            .unwrap_or_else(|| build::default_name(&args.manifests[0])),
        compress: args.compress,
        mtime: build::source_date_epoch()?,
    };
    let written = build::build(&store, &spool, &plan, &opts)?;
    for path in written {
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}
