//! `osk cache`: the local OCI image store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use osk_builder::reference::Reference;
use osk_builder::store::{ArchiveFormat, Store};

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
    /// Export an image as an OCI archive (PATH ending in .tar) or layout directory.
    Export {
        image: String,
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
    },
}

fn parse(image: &str) -> anyhow::Result<Reference> {
    Reference::parse(image).map_err(Into::into)
}

pub fn run(cmd: CacheCommand, store_path: PathBuf) -> anyhow::Result<()> {
    let store = Store::open(&store_path)
        .with_context(|| format!("cannot open the image store at {}", store_path.display()))?;
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
        CacheCommand::Export { image, output } => {
            let r = parse(&image)?;
            store
                .export(&r, &output, ArchiveFormat::for_path(&output))
                .with_context(|| format!("cannot export {image} to {}", output.display()))?;
        }
    }
    Ok(())
}
