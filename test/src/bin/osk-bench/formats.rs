//! The bootable formats: what each adds to a warm build, its size, and the
//! time to boot through firmware against kernel+initrd's direct boot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use osk_e2e::{BootOpts, Machine};
use osk_layout::marker::Event;

use super::{mib, size, timed_build_with, with_suffix, BOOT_TIMEOUT};

/// Formats measured: (`--format` value, output file after `bench.`).
const FORMATS: &[(&str, &str)] = &[
    ("uki", "efi"),
    ("iso", "iso"),
    ("raw", "raw"),
    ("qcow2", "qcow2"),
    ("vhd", "vhd"),
    ("vmdk", "vmdk"),
    ("gcp", "img.tar.gz"),
];

/// Boots measured besides kernel+initrd: (label, output file after `bench.`, UEFI).
const BOOTS: &[(&str, &str, bool)] = &[
    ("ISO as a CD, UEFI (OVMF)", "iso", true),
    ("raw disk, BIOS (SeaBIOS)", "raw", false),
    ("UKI, UEFI (OVMF)", "efi", true),
];

/// One boot through firmware, in seconds.
#[derive(Clone, Copy)]
struct FirmwareBoot {
    /// QEMU start → kernel start: `init-start` seen on the host minus its guest uptime.
    firmware: f64,
    /// Guest uptime at `all-services-started`.
    all: f64,
    /// QEMU start → `all-services-started` seen on the host.
    total: f64,
}

fn boot(image: &Path, uefi: bool) -> Result<FirmwareBoot> {
    let start = Instant::now();
    let mut vm = Machine::boot(
        image,
        &BootOpts {
            uefi,
            ..BootOpts::default()
        },
    )?;
    let init = vm.wait_for_marker(&Event::InitStart, BOOT_TIMEOUT)?;
    let init_seen = start.elapsed().as_secs_f64();
    let all = vm.wait_for_marker(&Event::AllServicesStarted, BOOT_TIMEOUT)?;
    let total = start.elapsed().as_secs_f64();
    vm.kill();
    Ok(FirmwareBoot {
        firmware: init_seen - init,
        all,
        total,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn median_boot(boots: &[FirmwareBoot]) -> FirmwareBoot {
    FirmwareBoot {
        firmware: median(boots.iter().map(|b| b.firmware).collect()),
        all: median(boots.iter().map(|b| b.all).collect()),
        total: median(boots.iter().map(|b| b.total).collect()),
    }
}

/// The `## Formats` section for `manifest`, built with the warm `cache`;
/// formats `osk build` refuses are left out and named in `notes`.
pub fn section(
    manifest: &Path,
    cache: &Path,
    work: &Path,
    runs: usize,
    notes: &mut Vec<String>,
) -> Result<String> {
    let m = [manifest];
    let timed = |extra: &[&str], dir: &str| -> Result<f64> {
        let out = work.join(dir);
        let mut walls = Vec::new();
        for _ in 0..runs.max(1) {
            // No previous output, as users meet a warm build.
            let _ = std::fs::remove_dir_all(&out);
            walls.push(timed_build_with(&m, extra, &out, cache)?.0);
        }
        Ok(median(walls))
    };
    let base = timed(&["--format", "kernel+initrd"], "fmt-kernel")?;
    let prefix = work.join("fmt-kernel/bench");
    let mut r = String::new();
    writeln!(r, "## Formats\n")?;
    writeln!(
        r,
        "`osk build --format F {}`, warm (store, spool and segments warm; no previous output), median of {runs}.\n",
        manifest.display()
    )?;
    writeln!(
        r,
        "| format | size | warm build | beyond kernel+initrd |\n|---|---|---|---|"
    )?;
    let kernel_initrd =
        size(&with_suffix(&prefix, "-kernel")) + size(&with_suffix(&prefix, "-initrd.img"));
    writeln!(
        r,
        "| kernel+initrd | {} | {base:.2} s | – |",
        mib(kernel_initrd)
    )?;
    let mut built: Vec<(&str, PathBuf)> = Vec::new();
    for &(format, ext) in FORMATS {
        let dir = format!("fmt-{format}");
        // The first build also makes the boot binaries image: not timed.
        if let Err(e) = timed_build_with(&m, &["--format", format], &work.join(&dir), cache) {
            notes.push(format!("format {format} not measured: {e:#}"));
            continue;
        }
        let wall = timed(&["--format", format], &dir)?;
        let file = work.join(&dir).join(format!("bench.{ext}"));
        writeln!(
            r,
            "| {format} | {} ({:.2}× kernel+initrd) | {wall:.2} s | {:+.2} s |",
            mib(size(&file)),
            size(&file) as f64 / kernel_initrd as f64,
            wall - base
        )?;
        built.push((ext, file));
    }

    // Boots alternate between the images, so a change in the host's load hits all alike.
    let boots_per = runs.clamp(1, 3);
    let plan: Vec<(&str, PathBuf, bool)> =
        std::iter::once(("kernel+initrd, direct (SeaBIOS)", prefix.clone(), false))
            .chain(BOOTS.iter().filter_map(|&(label, ext, uefi)| {
                built
                    .iter()
                    .find(|(e, _)| *e == ext)
                    .map(|(_, f)| (label, f.clone(), uefi))
            }))
            .collect();
    let mut results: Vec<Vec<FirmwareBoot>> = vec![Vec::new(); plan.len()];
    for i in 0..boots_per {
        for (j, (label, file, uefi)) in plan.iter().enumerate() {
            eprintln!("formats: boot {label} {}/{boots_per}", i + 1);
            match boot(file, *uefi) {
                Ok(b) => results[j].push(b),
                Err(e) => notes.push(format!("{label}: a boot failed: {e:#}")),
            }
        }
    }
    writeln!(
        r,
        "\nBoots through firmware (median of {boots_per}; 1 vCPU, 512 MiB, TCG). \
         Firmware = QEMU start → kernel start (host time when `init-start` is seen minus its guest uptime).\n"
    )?;
    writeln!(
        r,
        "| boot | firmware | kernel start → all-services-started | QEMU start → all-services-started | vs kernel+initrd |\n|---|---|---|---|---|"
    )?;
    let direct = results
        .first()
        .filter(|b| !b.is_empty())
        .map(|b| median_boot(b).total);
    for ((label, _, _), boots) in plan.iter().zip(&results) {
        if boots.is_empty() {
            continue;
        }
        let b = median_boot(boots);
        let vs = direct.map_or("–".into(), |d| format!("{:.2}×", b.total / d));
        writeln!(
            r,
            "| {label} | {:.1} s | {:.1} s | {:.1} s | {vs} |",
            b.firmware, b.all, b.total
        )?;
    }
    Ok(r)
}
