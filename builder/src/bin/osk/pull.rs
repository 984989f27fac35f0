//! `osk pull`: fetch images from registries into the local store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osk_builder::pull::{self, PullOptions};
use osk_builder::reference::Reference;
use osk_builder::store::{host_arch, Store};

#[derive(Args)]
pub struct PullArgs {
    /// Images to pull, e.g. alpine:3.20 or 127.0.0.1:5000/osk/test:1.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<String>,
    /// Refresh tags from the registry even when the image is in the store.
    #[arg(long = "pull")]
    force: bool,
    /// Platform to pull from a multi-platform image (OS/ARCH; a /VARIANT is
    /// accepted but not matched). Default: linux/<host architecture>.
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// A registry (HOST or HOST:PORT) to reach over plain HTTP; loopback ones always are.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
}

pub fn run(args: PullArgs, store_path: PathBuf) -> anyhow::Result<()> {
    let store = Store::open(&store_path)
        .with_context(|| format!("cannot open the image store at {}", store_path.display()))?;
    let (os, arch) = match args.platform.as_deref() {
        None => ("linux".to_string(), host_arch().to_string()),
        Some(p) => {
            let mut parts = p.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(os), Some(arch), _, None) if !os.is_empty() && !arch.is_empty() => {
                    (os.to_string(), arch.to_string())
                }
                _ => anyhow::bail!("--platform {p:?} must be OS/ARCH, e.g. linux/arm64"),
            }
        }
    };
    let opts = PullOptions {
        os,
        arch,
        force: args.force,
        insecure_registries: args.insecure_registries,
        ..PullOptions::default()
    };
    for image in &args.images {
        let reference = Reference::parse(image)?;
        let img = pull::ensure(&store, &reference, &opts)?;
        println!("{} {}", reference.familiar(), img.manifest_digest);
    }
    Ok(())
}
