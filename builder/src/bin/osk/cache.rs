//! `osk cache`: the local OCI image store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use osk_builder::assemble::{self, Spool};
use osk_builder::initramfs::SegmentCache;
use osk_builder::reference::Reference;
use osk_builder::store::{host_arch, ArchiveFormat, Image, Store};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Oci,
    DockerArchive,
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// List images in the store.
    Ls,
    /// Remove images from the store and delete blobs nothing else uses.
    Rm {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Import an OCI layout directory or OCI archive (.tar).
    Import {
        path: PathBuf,
        /// Name the image (required when the layout names it only by tag).
        #[arg(long = "as", value_name = "IMAGE")]
        name: Option<String>,
    },
    /// Export an image as an OCI archive (PATH ending in .tar) or layout
    /// directory, or as a tarball `docker load` reads.
    Export {
        image: String,
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
        /// oci: an OCI archive or layout, every platform; docker-archive:
        /// `docker save`'s format, one platform, for `docker load`.
        #[arg(long, value_enum, default_value_t = ExportFormat::Oci)]
        format: ExportFormat,
        /// The platform a docker-archive holds.
        #[arg(long, default_value_t = host_arch().to_string(), value_name = "ARCH")]
        arch: String,
    },
    /// Hash every blob and cache entry and check every reference; exit 1 on damage.
    Verify {
        /// Drop what is damaged, and the names of images that need it (the
        /// next build pulls or builds them again).
        #[arg(long)]
        repair: bool,
        /// The spool to check (default: DIR/spool under the store).
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
    },
}

fn parse(image: &str) -> anyhow::Result<Reference> {
    Reference::parse(image).map_err(Into::into)
}

pub fn run(cmd: CacheCommand, store_path: PathBuf) -> anyhow::Result<()> {
    let store = Store::open(&store_path)
        .with_context(|| format!("cannot open the image store at {}", store_path.display()))?;
    if let CacheCommand::Verify { repair, spool } = cmd {
        let spool = spool.unwrap_or_else(|| store_path.join("spool"));
        return verify(&store, &spool, repair);
    }
    match cmd {
        CacheCommand::Ls => {
            for entry in store.list()? {
                let d = entry.descriptor.digest().to_string();
                println!(
                    "{:<60} {}",
                    entry.reference.familiar(),
                    &d[..d.len().min(19)]
                );
            }
        }
        CacheCommand::Rm { images } => {
            let mut freed = 0;
            for image in &images {
                freed += store.remove(&parse(image)?)?;
            }
            eprintln!("removed {} image(s), freed {freed} bytes", images.len());
        }
        CacheCommand::Import { path, name } => {
            let rename = name.as_deref().map(parse).transpose()?;
            let imported = store
                .import(&path, rename.as_ref())
                .with_context(|| format!("cannot import {}", path.display()))?;
            for r in imported {
                println!("{}", r.familiar());
            }
        }
        CacheCommand::Export {
            image,
            output,
            format,
            arch,
        } => {
            let r = parse(&image)?;
            match format {
                ExportFormat::Oci => store.export(&r, &output, ArchiveFormat::for_path(&output)),
                ExportFormat::DockerArchive => store.export_docker_archive(&r, &arch, &output),
            }
            .with_context(|| format!("cannot export {image} to {}", output.display()))?;
        }
        CacheCommand::Verify { .. } => unreachable!("handled above"),
    }
    Ok(())
}

/// Checks the store, then the caches derived from it: the spool and the
/// initramfs segment cache.
fn verify(store: &Store, spool_dir: &Path, repair: bool) -> anyhow::Result<()> {
    let found = store.verify().context("cannot verify the image store")?;
    for b in &found.bad {
        println!("{b}");
    }
    let mut damage = found.bad.len();
    let spool_check = if spool_dir.is_dir() {
        let spool = Spool::open(spool_dir)
            .with_context(|| format!("cannot open the spool {}", spool_dir.display()))?;
        let check = assemble::check_spool(&spool)
            .with_context(|| format!("cannot verify the spool {}", spool_dir.display()))?;
        let images: Vec<Image> = store
            .list()?
            .iter()
            .filter_map(|e| store.image(&e.reference, "linux", host_arch()).ok())
            .collect();
        for d in &check.content {
            let users: Vec<String> = d
                .expected
                .map(|sha| {
                    images
                        .iter()
                        .filter(|i| assemble::image_uses_content(&spool, i, &sha))
                        .map(|i| i.reference.familiar())
                        .collect()
                })
                .unwrap_or_default();
            match users.is_empty() {
                true => println!("{d}"),
                false => println!("{d} (image {})", users.join(", image ")),
            }
        }
        for p in &check.indexes {
            println!("spool layer index {} is damaged", p.display());
        }
        damage += check.content.len() + check.indexes.len();
        Some(check)
    } else {
        None
    };
    let segments = SegmentCache::in_store(store.root());
    let bad_segments = segments
        .verify()
        .context("cannot verify the initramfs segment cache")?;
    for d in &bad_segments {
        println!(
            "initramfs segment {} is damaged: {}",
            d.path.display(),
            d.reason
        );
    }
    damage += bad_segments.len();
    if damage == 0 {
        eprintln!(
            "{} blobs, the spool and {} initramfs segments are sound",
            found.blobs,
            segments.list().map_or(0, |l| l.len())
        );
        return Ok(());
    }
    if !repair {
        anyhow::bail!("{damage} damaged item(s); `osk cache verify --repair` drops them");
    }
    for name in store.repair(&found)? {
        eprintln!("dropped image {name}: pull or build it again (osk build does)");
    }
    let spool_damage = spool_check
        .iter()
        .flat_map(|c| c.content.iter().map(|d| &d.path).chain(&c.indexes));
    for p in spool_damage.chain(bad_segments.iter().map(|d| &d.path)) {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", p.display()))
            }
            _ => {}
        }
    }
    eprintln!("repaired {damage} damaged item(s)");
    Ok(())
}
