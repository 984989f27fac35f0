//! arm64 built on this host and booted under qemu-system-aarch64 (TCG):
//! examples/minimal.yml's sizes and boot markers next to the arm64 floor,
//! the same arm64 kernel with a busybox-only initramfs (busybox from osk's
//! arm64 `demo` package), booted the same way.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use osk_e2e::floor;

use super::{boot_floor, boot_osk, mib, size, summarize, with_suffix, Boot};

const MANIFEST: &str = "examples/minimal.yml";

/// The arm64 section of the report. `store` is the image store the arm64
/// packages are built into (or found in).
pub fn section(store: &Path, work: &Path, runs: usize, notes: &mut Vec<String>) -> Result<String> {
    let mut r = String::new();
    writeln!(
        r,
        "## arm64 (cross-built here, booted under qemu-system-aarch64 TCG)\n"
    )?;
    let out = work.join("arm64");
    eprintln!("arm64: osk build --arch arm64 {MANIFEST}");
    let o = osk_e2e::osk(&[
        "--cache",
        store.to_str().context("store path is not UTF-8")?,
        "build",
        "--arch",
        "arm64",
        "--dir",
        out.to_str().context("work path is not UTF-8")?,
        MANIFEST,
    ])?;
    if !o.status.success() {
        notes.push(format!(
            "arm64 not measured: `osk build --arch arm64` failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
        return Ok(String::new());
    }
    let prefix = out.join("minimal");
    let floor = floor_image(store, work, &with_suffix(&prefix, "-kernel"))?;

    let (mut floors, mut osks) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("arm64 floor: boot {}/{runs}", i + 1);
        floors.push(boot_floor(&floor)?);
        eprintln!("arm64 osk: boot {}/{runs}", i + 1);
        osks.push(boot_osk(&prefix)?);
    }
    let (f, m) = (summarize(&floors), summarize(&osks));
    let nan = f64::NAN;
    let all = m.all_services.unwrap_or(nan);
    let (k, i) = (
        size(&with_suffix(&prefix, "-kernel")),
        size(&with_suffix(&prefix, "-initrd.img")),
    );
    writeln!(
        r,
        "| image | kernel + initrd | kernel→init-start | init-start→containerd-ready | init-start→all-services-started | all services (guest uptime) | wall (QEMU start→exit) |"
    )?;
    writeln!(r, "|---|---|---|---|---|---|---|")?;
    writeln!(
        r,
        "| arm64 floor | {} + {} | {:.2} s | – | – | – | {:.1} s |",
        mib(size(&with_suffix(&floor, "-kernel"))),
        mib(size(&with_suffix(&floor, "-initrd.img"))),
        f.init_start,
        f.wall
    )?;
    writeln!(
        r,
        "| arm64 osk `{MANIFEST}` | {} + {} = {} | {:.2} s ({:.2}× floor) | {:.2} s | {:.2} s | {:.2} s (floor + {:.2} s) | {:.1} s ({:.1}× floor) |",
        mib(k),
        mib(i),
        mib(k + i),
        m.init_start,
        m.init_start / f.init_start,
        m.containerd_ready.unwrap_or(nan) - m.init_start,
        all - m.init_start,
        all,
        all - f.init_start,
        m.wall,
        m.wall / f.wall
    )?;
    writeln!(
        r,
        "\narm64 osk boots (init-start / all-services-started / wall): {}; arm64 floor (init-start / wall): {}",
        list(&osks, |b| format!("{:.2} / {:.2} / {:.1} s", b.init_start, b.all_services.unwrap_or(nan), b.wall)),
        list(&floors, |b| format!("{:.2} / {:.1} s", b.init_start, b.wall)),
    )?;
    Ok(r)
}

fn list(boots: &[Boot], f: impl Fn(&Boot) -> String) -> String {
    boots.iter().map(f).collect::<Vec<_>>().join("; ")
}

/// The arm64 floor: osk's arm64 kernel (`kernel`) and an initramfs of the
/// static aarch64 busybox in osk's arm64 demo package.
fn floor_image(store: &Path, work: &Path, kernel: &Path) -> Result<PathBuf> {
    let demo = osk_e2e::workspace_root().join("pkgs/demo");
    let reference = osk_e2e::pkg_build(store, &demo, "arm64")?;
    let busybox = osk_e2e::package_file(store, &reference, "arm64", "usr/bin/busybox")?;
    let prefix = work.join("arm64-floor");
    floor::write_artifacts(
        &prefix,
        kernel,
        &floor::busybox_initramfs_of(busybox, floor::FLOOR_INIT, &[])?,
        "console=ttyAMA0 panic=-1",
    )?;
    Ok(prefix)
}
