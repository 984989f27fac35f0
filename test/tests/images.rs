//! The bootable formats end to end: one `osk build` of examples/minimal.yml
//! writes every format; each test boots one of them through `osk run qemu FILE`
//! under the firmware a user's machine or cloud would use, and checks that
//! every service starts and the demo page is served through `--publish`.
//!
//! The formats' structure (PE sections, GPT, FAT, qemu-img check,
//! reproducibility) is checked without booting in builder/tests/it/build_images.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use osk_e2e::{wait_http, BootOpts, Machine};
use osk_layout::marker::Event;

/// Firmware plus TCG: slower than direct kernel boot, so more room than scenarios.rs.
const BOOT: Duration = Duration::from_secs(480);

const MINIMAL: &str = "examples/minimal.yml";
const NAME: &str = "minimal";

/// Every format the tests below boot, built once.
const FORMATS: &[&str] = &["uki", "iso", "raw", "qcow2", "vmdk"];

/// `OSK_E2E_CACHE/images/minimal.*`, built on first use by one `osk build`.
fn built(ext: &str) -> Result<PathBuf> {
    static OUT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = OUT
        .get_or_init(|| build_all().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("building the image formats failed: {e}"))?;
    let file = dir.join(format!("{NAME}.{ext}"));
    ensure!(file.is_file(), "osk build wrote no {}", file.display());
    Ok(file)
}

fn build_all() -> Result<PathBuf> {
    let cache = osk_e2e::cache_dir()?;
    let out = cache.join("images");
    // Never boot a previous run's image.
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let started = Instant::now();
    let mut cmd = Command::new(osk_e2e::osk_bin()?);
    cmd.arg("--cache")
        .arg(cache.join("store"))
        .args(["build", "--dir"])
        .arg(&out)
        .args(["--name", NAME]);
    for f in FORMATS {
        cmd.args(["--format", f]);
    }
    cmd.arg(osk_e2e::workspace_root().join(MINIMAL));
    let o = cmd.output().context("running osk build")?;
    ensure!(
        o.status.success(),
        "osk build --format {} failed ({}):\n{}",
        FORMATS.join(" --format "),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "osk build of {} took {:.0?}",
        FORMATS.join(", "),
        started.elapsed()
    );
    Ok(out)
}

/// Boots `image`, waits for every service, and fetches the demo page from the host.
fn boots_and_serves(image: &Path, uefi: bool) -> Result<Machine> {
    boot_with(
        image,
        BootOpts {
            uefi,
            ..BootOpts::default()
        },
    )
}

fn boot_with(image: &Path, opts: BootOpts) -> Result<Machine> {
    // Each boot gets its own copy: the tests run in parallel, and QEMU locks
    // an image one VM opens writable (a disk, an ISO as a USB stick) against
    // every other VM.
    static BOOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let ext = image.extension().unwrap_or_default().to_string_lossy();
    let copy = image.with_file_name(format!("{NAME}-boot{n}.{ext}"));
    std::fs::copy(image, &copy)
        .with_context(|| format!("copying {} to {}", image.display(), copy.display()))?;
    let image = copy.as_path();
    let mut vm = Machine::boot(
        image,
        &BootOpts {
            publish: vec![80],
            ..opts
        },
    )?;
    vm.wait_for_marker(&Event::InitStart, BOOT)
        .with_context(|| format!("{} did not reach osk-init", image.display()))?;
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    let page = wait_http(vm.port(80), "/", Duration::from_secs(60))?;
    let demo = std::fs::read_to_string(osk_e2e::workspace_root().join("pkgs/demo/index.html"))?;
    ensure!(
        page == demo,
        "GET / through --publish is not pkgs/demo/index.html"
    );
    eprintln!(
        "{}: all services started and the demo page served {:.0?} after boot",
        image.display(),
        vm.booted_at.elapsed()
    );
    Ok(vm)
}

/// OVMF names the boot option it starts on the serial console: proof that
/// the firmware booted the image rather than QEMU loading a kernel directly.
fn firmware_booted(vm: &Machine) -> Result<()> {
    let console = vm.console();
    ensure!(
        console.contains("BdsDxe: starting Boot"),
        "no `BdsDxe: starting Boot...` line from OVMF on the console"
    );
    Ok(())
}

/// isolinux's banner on the serial console: SeaBIOS started isolinux.bin
/// (from El Torito on a CD, or through the isohybrid MBR on a disk), which
/// loaded the kernel and initrd from the ISO 9660 volume.
fn isolinux_booted(vm: &Machine) -> Result<()> {
    let console = vm.console();
    ensure!(
        console.contains("ISOLINUX 6.04") && console.contains("Loading /boot/initrd.img"),
        "no isolinux banner and initrd load on the console"
    );
    Ok(())
}

#[test]
fn iso_cd_under_seabios() -> Result<()> {
    let vm = boots_and_serves(&built("iso")?, false)?;
    isolinux_booted(&vm)
}

#[test]
fn iso_cd_under_ovmf() -> Result<()> {
    let vm = boots_and_serves(&built("iso")?, true)?;
    firmware_booted(&vm)
}

/// The ISO written to a USB stick, under UEFI: the GPT's ESP.
#[test]
fn iso_as_disk_under_ovmf() -> Result<()> {
    let vm = boot_with(
        &built("iso")?,
        BootOpts {
            uefi: true,
            extra: vec!["--as-disk".into()],
            ..BootOpts::default()
        },
    )?;
    firmware_booted(&vm)
}

/// The disk formats under legacy BIOS: the isohybrid MBR starts isolinux.
#[test]
fn raw_under_seabios() -> Result<()> {
    let vm = boots_and_serves(&built("raw")?, false)?;
    isolinux_booted(&vm)
}

#[test]
fn uki_under_ovmf() -> Result<()> {
    let vm = boots_and_serves(&built("efi")?, true)?;
    firmware_booted(&vm)
}

#[test]
fn raw_under_ovmf() -> Result<()> {
    let vm = boots_and_serves(&built("raw")?, true)?;
    firmware_booted(&vm)
}

#[test]
fn qcow2_under_ovmf() -> Result<()> {
    let vm = boots_and_serves(&built("qcow2")?, true)?;
    firmware_booted(&vm)
}

/// vSphere's streamOptimized VMDK, attached as QEMU reads it.
#[test]
fn vmdk_under_ovmf() -> Result<()> {
    let vm = boots_and_serves(&built("vmdk")?, true)?;
    firmware_booted(&vm)
}
