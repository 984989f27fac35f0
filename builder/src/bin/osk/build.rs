//! `osk build`: manifests to kernel+initrd (or tar) outputs, without a daemon.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use osk_builder::arch::Arch;
use osk_builder::assemble::Spool;
use osk_builder::build::{self, BuildOptions, Compression, Format, Resolver, StoreRegistry};
use osk_builder::manifest::{self, ImageRef, ImageSource};
use osk_builder::store::Store;

#[derive(Args)]
pub struct BuildArgs {
    /// Manifests, merged in order (`-` reads standard input).
    #[arg(required = true, value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// Output format; repeat for several: kernel+initrd, tar, uki (NAME.efi), iso (hybrid:
    /// CD or USB stick, BIOS and UEFI), and the BIOS- and UEFI-booting GPT disk as raw,
    /// qcow2, vhd (fixed), vmdk (streamOptimized) or gcp (NAME.img.tar.gz). LinuxKit's
    /// iso-bios, iso-efi, kernel+iso, raw-bios, raw-efi, qcow2-bios, qcow2-efi and
    /// dynamic-vhd map to these. On arm64 the ISO and the disks boot through UEFI only
    /// (BOOTAA64.EFI); the BIOS-only aliases are refused.
    /// rpi4 (NAME-rpi4.img, --arch arm64): a Raspberry Pi 4 (and 3) SD card booted by
    /// the Pi's own firmware.
    #[arg(long = "format", short = 'f', default_value = "kernel+initrd")]
    formats: Vec<String>,
    /// Size of the disk formats (e.g. 2G, 512M; rounded up to MiB); the space after the ESP
    /// stays free for data. Default: just large enough.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    disk_size: Option<u64>,
    /// The boot binaries image for uki, iso and the disk formats (default: `@pkg:` of the
    /// pkgs/bootloader found beside or above the first manifest, or in the working directory).
    #[arg(long, value_name = "IMAGE")]
    bootloader: Option<String>,
    /// The Raspberry Pi firmware image for rpi4 (default: `@pkg:` of the pkgs/raspi found
    /// beside or above the first manifest, or in the working directory).
    #[arg(long, value_name = "IMAGE")]
    firmware: Option<String>,
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
    /// Architecture to build for: amd64 or arm64 (default: the host's). Every image
    /// must have it; one that does not is an error naming the platforms it has.
    #[arg(long, default_value_t = Arch::host())]
    arch: Arch,
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
    let mut formats = Vec::new();
    for text in &args.formats {
        let (f, note) = Format::parse_alias(text)?;
        // arm64 machines have no PC BIOS: their images boot through UEFI only.
        anyhow::ensure!(
            args.arch.has_bios() || !Format::BIOS_ALIASES.contains(&text.as_str()),
            "--format {text} boots through a PC BIOS (isolinux), which {arch} machines do not \
             have: {arch} images boot through UEFI only; use --format {f}, which writes a UEFI \
             {f} for {arch}",
            arch = args.arch
        );
        if let Some(note) = note {
            if args.arch.has_bios() {
                tracing::info!("{note}");
            } else {
                tracing::info!(
                    "{text} is written as {f}, which boots through UEFI on {}",
                    args.arch
                );
            }
        }
        formats.push(f);
    }
    let formats = build::unique_formats(formats);
    anyhow::ensure!(
        args.arch == Arch::Arm64 || !formats.contains(&Format::Rpi4),
        "--format rpi4 is a Raspberry Pi's 64-bit card: build it with --arch arm64, not {}",
        args.arch
    );
    let mut resolve = Resolver::new(provider, args.arch).refresh(args.pull);
    let plan = build::plan(&m, &mut resolve)?;
    let boot = if formats.iter().any(|f| f.needs_boot()) {
        let image = package_ref(args.bootloader.as_deref(), &args.manifests, "bootloader")?;
        tracing::info!("boot binaries {image}");
        Some(resolve.image(&image)?)
    } else {
        None
    };
    let firmware = if formats.contains(&Format::Rpi4) {
        let image = package_ref(args.firmware.as_deref(), &args.manifests, "raspi")?;
        tracing::info!("Raspberry Pi firmware {image}");
        Some(resolve.image(&image)?)
    } else {
        None
    };
    let opts = BuildOptions {
        formats,
        dir: args.dir,
        name: args
            .name
            .unwrap_or_else(|| build::default_name(&args.manifests[0])),
        compress: args.compress,
        mtime: build::source_date_epoch()?,
        disk_size: args.disk_size,
        boot,
        firmware,
    };
    let written = build::build(&store, &spool, &plan, &opts)?;
    for path in written {
        tracing::info!("wrote {}", path.display());
    }
    Ok(())
}

/// The image given (`--bootloader`, `--firmware`), else the `pkgs/NAME`
/// package nearest the first manifest or the working directory.
fn package_ref(given: Option<&str>, manifests: &[PathBuf], name: &str) -> anyhow::Result<ImageRef> {
    if let Some(text) = given {
        let mut r = ImageRef::parse(text).map_err(anyhow::Error::msg)?;
        r.anchor(&std::env::current_dir()?);
        return Ok(r);
    }
    let cwd = std::env::current_dir()?;
    let first = manifests
        .first()
        .filter(|m| m.as_os_str() != "-")
        .and_then(|m| cwd.join(m).parent().map(Path::to_path_buf));
    for start in first.iter().chain(std::iter::once(&cwd)) {
        for dir in start.ancestors() {
            let pkg = dir.join("pkgs").join(name);
            if pkg.join("build.yml").is_file() {
                return Ok(ImageRef {
                    text: format!("@pkg:{}", pkg.display()),
                    source: ImageSource::Package(pkg),
                });
            }
        }
    }
    let (what, flag) = match name {
        "raspi" => (
            "rpi4 format needs the Raspberry Pi firmware image",
            "firmware",
        ),
        _ => (
            "bootable formats need osk's boot binaries image",
            "bootloader",
        ),
    };
    anyhow::bail!(
        "the {what} (pkgs/{name} in osk's source tree), and none was found beside or above the \
         manifest or the working directory: pass `--{flag} @pkg:PATH/pkgs/{name}` or an image \
         reference already in the store"
    )
}

/// Why `--size` was refused; each names the text given.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum SizeError {
    #[error("{0:?}: unknown size suffix (use K, M, G or T)")]
    Suffix(String),
    #[error("{0:?} is not a size (e.g. 2G, 512M, 1073741824)")]
    NotANumber(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// `SIZE` with an optional K, M, G or T suffix (powers of 1024), rounded up to MiB.
fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(SizeError::Suffix(s.to_string())),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::NotANumber(s.to_string()))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| SizeError::TooLarge(s.to_string()))?;
    Ok(bytes.div_ceil(1 << 20) * (1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_mib() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1"), Ok(1 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2X"), Err(SizeError::Suffix("2X".into())));
        assert!(parse_size("2X").unwrap_err().to_string().contains("suffix"));
        assert_eq!(parse_size("big"), Err(SizeError::NotANumber("big".into())));
        assert_eq!(
            parse_size("99999999999T"),
            Err(SizeError::TooLarge("99999999999T".into()))
        );
    }
}
