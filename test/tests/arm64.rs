//! arm64 built on this (amd64) host: osk's own binaries cross-compiled into
//! arm64 package images, and arm64 minimal booted under qemu-system-aarch64.
//!
//! Run under the VM lock: `flock /tmp/osk-team/vm.lock cargo test -p osk-e2e --test arm64`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use osk_e2e::{wait_http, BootOpts, Machine};
use osk_layout::marker::Event;

/// `ELF` class 64, little-endian, e_machine 183 (AArch64), and no PT_INTERP:
/// a static arm64 executable.
fn is_static_aarch64(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    if u16_at(18) != 183 {
        return false;
    }
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    (0..phnum as usize).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3: a dynamic loader would be needed.
        elf.get(o..o + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

#[test]
fn arm64_metadata_package_holds_a_static_aarch64_osk_metadata() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store_dir = tmp.path().join("store");
    let pkg = osk_e2e::workspace_root().join("pkgs/metadata");
    let reference = osk_e2e::pkg_build(&store_dir, &pkg, "arm64")?;
    let bin = osk_e2e::package_file(&store_dir, &reference, "arm64", "usr/bin/osk-metadata")?;
    ensure!(
        is_static_aarch64(&bin),
        "usr/bin/osk-metadata is not a static AArch64 executable"
    );
    Ok(())
}

/// Guest time under TCG emulating another architecture: generous.
const BOOT: Duration = Duration::from_secs(600);
const GOODBYE: &str = "osk minimal: onshutdown ran, powering off";

/// One `osk build` at a time: the tests run in parallel, and two first-time
/// builds of one package would race in the store.
static BUILD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `osk build --arch arm64 examples/minimal.yml` into the shared cache's store.
fn build_minimal(out: &Path) -> Result<PathBuf> {
    let _one = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cache = osk_e2e::cache_dir()?;
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let minimal = osk_e2e::workspace_root().join("examples/minimal.yml");
    let o = osk_e2e::osk(&[
        "--cache",
        cache.join("store").to_str().unwrap(),
        "build",
        "--arch",
        "arm64",
        "--dir",
        out.to_str().unwrap(),
        minimal.to_str().unwrap(),
    ])?;
    ensure!(
        o.status.success(),
        "osk build --arch arm64 examples/minimal.yml: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out.join("minimal"))
}

/// arm64 minimal, built on this host, boots under qemu-system-aarch64 (virt,
/// TCG, chosen by `osk run qemu` from the kernel): every service starts, the
/// demo page is served through --publish, and the power button runs
/// onshutdown and ends QEMU.
#[test]
fn arm64_minimal_boots_serves_and_powers_off() -> Result<()> {
    let out = osk_e2e::cache_dir()?.join("arm64");
    let prefix = build_minimal(&out)?;
    let kernel = std::fs::read(out.join("minimal-kernel"))?;
    ensure!(
        osk_builder::arch::Arch::of_kernel(&kernel) == Some(osk_builder::arch::Arch::Arm64),
        "minimal-kernel is not an arm64 Image(.gz)"
    );
    let sizes = ["minimal-kernel", "minimal-initrd.img"]
        .map(|f| std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0));
    eprintln!("arm64 kernel {} B, initrd {} B", sizes[0], sizes[1]);

    let mut vm = Machine::boot(
        &prefix,
        &BootOpts {
            publish: vec![80],
            mem_mib: 1024,
            ..BootOpts::default()
        },
    )?;
    vm.wait_for_marker(&Event::InitStart, BOOT)
        .context("arm64 minimal did not reach osk-init")?;
    let all = vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    let page = wait_http(vm.port(80), "/", Duration::from_secs(120))?;
    let demo = std::fs::read_to_string(osk_e2e::workspace_root().join("pkgs/demo/index.html"))?;
    ensure!(
        page == demo,
        "GET / through --publish is not pkgs/demo/index.html"
    );
    ensure!(
        vm.console().contains("Machine model: linux,dummy-virt"),
        "not QEMU's arm64 virt machine"
    );
    eprintln!("arm64: all-services-started at {all:.1} s guest time");

    vm.monitor("system_powerdown")?;
    vm.wait_for_marker(&Event::ShutdownStart, Duration::from_secs(120))?;
    vm.wait_for_line(GOODBYE, Duration::from_secs(120))?;
    vm.wait_exit(Duration::from_secs(120))?;
    Ok(())
}

/// The size promise, as for amd64: kernel + initrd of minimal.
const MAX_KERNEL_INITRD: u64 = 30_000_000;

/// Two builds of arm64 minimal write the same bytes, and its kernel (an
/// Image.gz) + initrd stay within 30 MB.
#[test]
fn arm64_minimal_builds_the_same_bytes_twice_within_30_mb() -> Result<()> {
    let cache = osk_e2e::cache_dir()?;
    let (a, b) = (cache.join("arm64-a"), cache.join("arm64-b"));
    build_minimal(&a)?;
    build_minimal(&b)?;
    for f in ["minimal-kernel", "minimal-initrd.img", "minimal-cmdline"] {
        ensure!(
            std::fs::read(a.join(f))? == std::fs::read(b.join(f))?,
            "{f} differs between two builds"
        );
    }
    let kernel = std::fs::read(a.join("minimal-kernel"))?;
    ensure!(
        kernel.starts_with(&[0x1f, 0x8b]),
        "minimal-kernel is not gzip'd (Image.gz)"
    );
    let size = |f: &str| std::fs::metadata(a.join(f)).map(|m| m.len());
    let (k, i) = (size("minimal-kernel")?, size("minimal-initrd.img")?);
    eprintln!("arm64 minimal: kernel {k} B + initrd {i} B = {} B", k + i);
    ensure!(
        k + i <= MAX_KERNEL_INITRD,
        "arm64 kernel {k} B + initrd {i} B = {} B, over {MAX_KERNEL_INITRD}",
        k + i
    );
    Ok(())
}

/// The same kernel and initrd through UEFI: AAVMF (qemu-efi-aarch64) starts
/// the kernel's EFI stub.
#[test]
fn arm64_minimal_boots_through_aavmf() -> Result<()> {
    let prefix = build_minimal(&osk_e2e::cache_dir()?.join("arm64-uefi"))?;
    let mut vm = Machine::boot(
        &prefix,
        &BootOpts {
            uefi: true,
            mem_mib: 1024,
            ..BootOpts::default()
        },
    )?;
    let all = vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    ensure!(
        vm.console().contains("EFI stub: Booting Linux Kernel"),
        "no `EFI stub: Booting Linux Kernel` on the console: not booted through UEFI"
    );
    eprintln!("arm64 under AAVMF: all-services-started at {all:.1} s guest time");
    Ok(())
}
