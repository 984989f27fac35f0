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
    let minimal = osk_e2e::workspace_root().join("examples/minimal.yml");
    osk_e2e::build_into(out, &["--arch", "arm64"], &minimal)?;
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

/// arm64's UEFI formats, written by one `osk build --arch arm64`.
const UEFI_FORMATS: &[&str] = &["uki", "iso", "raw", "qcow2"];

/// `OSK_E2E_CACHE/arm64-images/minimal.*`, built on first use.
fn built_uefi(ext: &str) -> Result<PathBuf> {
    static OUT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let dir = OUT
        .get_or_init(|| build_uefi("arm64-images").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("building arm64's UEFI formats failed: {e}"))?;
    let file = dir.join(format!("minimal.{ext}"));
    ensure!(file.is_file(), "osk build wrote no {}", file.display());
    Ok(file)
}

fn build_uefi(dir: &str) -> Result<PathBuf> {
    let _one = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = osk_e2e::cache_dir()?.join(dir);
    let minimal = osk_e2e::workspace_root().join("examples/minimal.yml");
    let mut args = vec!["--arch", "arm64"];
    for f in UEFI_FORMATS {
        args.extend(["--format", f]);
    }
    let started = std::time::Instant::now();
    osk_e2e::build_into(&out, &args, &minimal)?;
    eprintln!("arm64 UEFI formats built in {:.0?}", started.elapsed());
    Ok(out)
}

/// `bash -c script`'s output; an error with it when the script fails.
fn sh(script: &str) -> Result<String> {
    let o = std::process::Command::new("bash")
        .args(["-c", script])
        .output()
        .with_context(|| format!("running {script}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    ensure!(o.status.success(), "`{script}` failed:\n{text}");
    Ok(text)
}

/// A PE section: name, file offset, length.
type Section = (String, usize, usize);

/// A PE image's machine type and sections.
fn pe_sections(pe: &[u8]) -> Option<(u16, Vec<Section>)> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(pe.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(pe.get(o..o + 4)?.try_into().ok()?));
    let coff = u32_at(0x3c)? as usize + 4;
    if pe.get(..2)? != b"MZ" || pe.get(coff - 4..coff)? != b"PE\0\0" {
        return None;
    }
    let (machine, count, opt_size) = (u16_at(coff)?, u16_at(coff + 2)?, u16_at(coff + 16)?);
    let table = coff + 20 + opt_size as usize;
    let sections = (0..count as usize)
        .map(|i| {
            let h = table + i * 40;
            let raw = pe.get(h..h + 8)?;
            let name = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string();
            Some((name, u32_at(h + 20)? as usize, u32_at(h + 8)? as usize))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((machine, sections))
}

/// The arm64 UKI is an AArch64 PE (machine 0xaa64) whose `.linux` is the
/// uncompressed Image; the ISO's El Torito catalog has only a UEFI image;
/// the raw disk's ESP holds the UKI as `EFI/BOOT/BOOTAA64.EFI`; the qcow2
/// is clean and holds the same disk. A second build writes the same bytes.
#[test]
fn arm64_uefi_formats_are_uefi_only_and_well_formed() -> Result<()> {
    let uki_path = built_uefi("efi")?;
    let again = build_uefi("arm64-images-again")?;
    for ext in ["efi", "iso", "raw", "qcow2"] {
        let f = format!("minimal.{ext}");
        ensure!(
            std::fs::read(built_uefi(ext)?)? == std::fs::read(again.join(&f))?,
            "{f} differs between two arm64 builds"
        );
    }
    let uki = std::fs::read(&uki_path)?;
    let (machine, sections) = pe_sections(&uki).context("the arm64 UKI is not a PE image")?;
    ensure!(machine == 0xaa64, "UKI PE machine {machine:#x}, not 0xaa64");
    let names: Vec<&str> = sections.iter().map(|s| s.0.as_str()).collect();
    for want in [".osrel", ".cmdline", ".uname", ".initrd", ".linux"] {
        ensure!(names.contains(&want), "UKI sections {names:?} lack {want}");
    }
    let (_, at, len) = sections.iter().find(|s| s.0 == ".linux").unwrap();
    let linux = &uki[*at..at + len];
    ensure!(
        linux.get(0x38..0x3c) == Some(b"ARM\x64") && linux.starts_with(b"MZ"),
        ".linux is not the uncompressed arm64 Image (its EFI stub's PE)"
    );
    // binutils for aarch64 reads the PE too, where it is installed.
    if sh("command -v aarch64-linux-gnu-objdump").is_ok() {
        let f = sh(&format!(
            "aarch64-linux-gnu-objdump -f {}",
            uki_path.display()
        ))?;
        ensure!(f.contains("aarch64"), "objdump -f: {f}");
        let h = sh(&format!(
            "aarch64-linux-gnu-objdump -h {}",
            uki_path.display()
        ))?;
        ensure!(h.contains(".linux") && h.contains(".initrd"), "{h}");
    }

    let iso = built_uefi("iso")?;
    let report = sh(&format!(
        "xorriso -indev {} -report_el_torito plain 2>&1",
        iso.display()
    ))?;
    let images: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img"))
        .collect();
    ensure!(
        images.len() == 1 && images[0].contains("UEFI"),
        "the arm64 ISO's El Torito images are not one UEFI image:\n{report}"
    );
    ensure!(!report.contains("BIOS"), "a BIOS boot image:\n{report}");
    let listing = sh(&format!("xorriso -indev {} -find / 2>&1", iso.display()))?;
    ensure!(!listing.to_lowercase().contains("isolinux"), "{listing}");

    let raw = built_uefi("raw")?;
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().display();
    sh(&format!(
        "mcopy -i {}@@1M ::/EFI/BOOT/BOOTAA64.EFI {d}/boot.efi && cmp {d}/boot.efi {}",
        raw.display(),
        uki_path.display()
    ))?;
    sh(&format!("sgdisk -v {}", raw.display()))?;

    let qcow2 = built_uefi("qcow2")?;
    let check = sh(&format!("qemu-img check -f qcow2 {}", qcow2.display()))?;
    ensure!(check.contains("No errors"), "{check}");
    let info = sh(&format!(
        "qemu-img info --output=json -f qcow2 {}",
        qcow2.display()
    ))?;
    let raw_len = std::fs::metadata(&raw)?.len();
    ensure!(
        info.contains(&format!("\"virtual-size\": {raw_len}")),
        "qcow2 virtual size is not the raw disk's {raw_len} bytes:\n{info}"
    );
    sh(&format!(
        "qemu-img compare -f raw -F qcow2 {} {}",
        raw.display(),
        qcow2.display()
    ))?;
    Ok(())
}

/// LinuxKit's BIOS-only formats have no meaning on arm64: refused by name.
#[test]
fn arm64_bios_only_formats_are_refused() -> Result<()> {
    let minimal = osk_e2e::workspace_root().join("examples/minimal.yml");
    let tmp = tempfile::tempdir()?;
    let o = osk_e2e::osk(&[
        "--cache",
        tmp.path().join("store").to_str().unwrap(),
        "build",
        "--arch",
        "arm64",
        "--format",
        "raw-bios",
        "--dir",
        tmp.path().to_str().unwrap(),
        minimal.to_str().unwrap(),
    ])?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "raw-bios for arm64 was accepted");
    ensure!(
        err.contains("raw-bios") && err.contains("UEFI only") && err.contains("--format raw"),
        "{err}"
    );
    Ok(())
}

/// The arm64 qcow2 disk boots through AAVMF from its ESP (systemd's stub
/// starting the kernel with the UKI's initrd): every service starts and the
/// demo page is served through --publish.
#[test]
fn arm64_qcow2_boots_through_aavmf_and_serves() -> Result<()> {
    let image = built_uefi("qcow2")?;
    // Its own copy: a booted disk is written to.
    let copy = image.with_file_name("minimal-boot.qcow2");
    std::fs::copy(&image, &copy)?;
    let mut vm = Machine::boot(
        &copy,
        &BootOpts {
            publish: vec![80],
            mem_mib: 1024,
            ..BootOpts::default()
        },
    )?;
    let all = vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    let page = wait_http(vm.port(80), "/", Duration::from_secs(120))?;
    let demo = std::fs::read_to_string(osk_e2e::workspace_root().join("pkgs/demo/index.html"))?;
    ensure!(
        page == demo,
        "GET / through --publish is not pkgs/demo/index.html"
    );
    let console = vm.console();
    ensure!(
        console.contains("EFI stub: Booting Linux Kernel"),
        "no `EFI stub: Booting Linux Kernel` on the console: not booted through UEFI"
    );
    eprintln!("arm64 qcow2 under AAVMF: all-services-started at {all:.1} s guest time");
    vm.monitor("system_powerdown")?;
    vm.wait_exit(Duration::from_secs(180))?;
    Ok(())
}

/// The arm64 ISO as a CD-ROM (virtio-scsi) and the UKI (on the ESP `osk run`
/// makes for it) each boot through AAVMF to every service.
#[test]
fn arm64_iso_and_uki_boot_through_aavmf() -> Result<()> {
    for ext in ["iso", "efi"] {
        let image = built_uefi(ext)?;
        let copy = image.with_file_name(format!("minimal-boot.{ext}"));
        std::fs::copy(&image, &copy)?;
        let mut vm = Machine::boot(
            &copy,
            &BootOpts {
                mem_mib: 1024,
                ..BootOpts::default()
            },
        )?;
        let all = vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
        let console = vm.console();
        ensure!(
            console.contains("BdsDxe: starting Boot")
                && console.contains("EFI stub: Booting Linux Kernel"),
            "{ext}: AAVMF did not start the UKI's kernel"
        );
        eprintln!("arm64 {ext} under AAVMF: all-services-started at {all:.1} s guest time");
        vm.monitor("quit")?;
        vm.wait_exit(Duration::from_secs(30))?;
    }
    Ok(())
}

/// The hostname `--data` gives the arm64 guest.
const DATA_HOSTNAME: &str = "arm64-from-data";

/// arm64 minimal plus osk-metadata and a container that prints what it wrote.
fn metadata_manifest(dir: &Path) -> Result<PathBuf> {
    let pkgs = osk_e2e::workspace_root().join("pkgs");
    let p = pkgs.display();
    let text = format!(
        r#"kernel:
  image: "@pkg:{p}/kernel"
  cmdline: "console=ttyS0"
init:
  - "@pkg:{p}/init"
onboot:
  - name: metadata
    image: "@pkg:{p}/metadata"
  - name: show
    image: "@pkg:{p}/demo"
    command: ["/usr/bin/busybox", "sh", "-c", "echo hostname from metadata: $(cat /run/config/hostname)"]
    binds.add: ["/run/config:/run/config"]
services:
  - name: getty
    image: "@pkg:{p}/getty"
    env:
      - INSECURE=true
"#
    );
    let path = dir.join("metadata.yml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `osk run qemu --data` on arm64's virt machine: the metadata CD-ROM sits
/// on virtio-scsi (virt has no IDE or AHCI); osk-metadata finds its CIDATA
/// volume and writes the hostname to /run/config.
#[test]
fn arm64_data_reaches_the_guest_on_a_virtio_scsi_cdrom() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let manifest = metadata_manifest(tmp.path())?;
    let out = osk_e2e::cache_dir()?.join("arm64-metadata");
    {
        let _one = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        osk_e2e::build_into(&out, &["--arch", "arm64"], &manifest)?;
    }
    let data = osk_e2e::metadata::linuxkit_json(&[("hostname", 0o644, DATA_HOSTNAME)]);
    let mut vm = Machine::boot(
        &out.join("metadata"),
        &BootOpts {
            data: Some(data),
            mem_mib: 1024,
            ..BootOpts::default()
        },
    )?;
    // Onboot runs before the services: the line comes first.
    vm.wait_for_line(&format!("hostname from metadata: {DATA_HOSTNAME}"), BOOT)?;
    let all = vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    eprintln!("arm64 with --data: all-services-started at {all:.1} s guest time");
    let console = vm.console();
    ensure!(
        console.contains("metadata: NoCloud volume on /dev/sr0"),
        "osk-metadata did not name the CD-ROM /dev/sr0 on the console"
    );
    // virt has no IDE or AHCI: the CD-ROM can only be the virtio-scsi one.
    ensure!(
        console.contains("Machine model: linux,dummy-virt"),
        "not QEMU's arm64 virt machine"
    );
    vm.monitor("quit")?;
    vm.wait_exit(Duration::from_secs(30))?;
    Ok(())
}
