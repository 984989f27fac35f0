//! The bootable formats from a real store: reproducible, and read back by the tools users trust
//! (objdump, sgdisk, fsck.vfat, mtools, qemu-img, xorriso).

use crate::support;

use std::path::Path;

use osk_builder::assemble::Spool;
use osk_builder::build::{
    build, BuildOptions, BuildPlan, Compression, Format, FormatError, KernelPlan,
};
use osk_builder::store::Store;
use support::{sh, simple, E};

const FORMATS: [Format; 7] = [
    Format::Uki,
    Format::Iso,
    Format::Raw,
    Format::Qcow2,
    Format::Vhd,
    Format::Vmdk,
    Format::Gcp,
];

/// A PE32+ EFI application with one `.text` section and room for more headers.
fn stub() -> Vec<u8> {
    let mut b = vec![0u8; 0x600];
    let put = |b: &mut Vec<u8>, at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(&mut b, 0, b"MZ");
    put(&mut b, 0x3c, &0x80u32.to_le_bytes());
    put(&mut b, 0x80, b"PE\0\0");
    put(&mut b, 0x84, &0x8664u16.to_le_bytes());
    put(&mut b, 0x86, &1u16.to_le_bytes());
    put(&mut b, 0x94, &240u16.to_le_bytes());
    put(&mut b, 0x96, &0x206u16.to_le_bytes());
    let opt = 0x98;
    put(&mut b, opt, &0x20bu16.to_le_bytes());
    put(&mut b, opt + 16, &0x1000u32.to_le_bytes());
    put(&mut b, opt + 32, &0x200u32.to_le_bytes());
    put(&mut b, opt + 36, &0x200u32.to_le_bytes());
    put(&mut b, opt + 56, &0x1200u32.to_le_bytes());
    put(&mut b, opt + 60, &0x400u32.to_le_bytes());
    put(&mut b, opt + 68, &10u16.to_le_bytes());
    put(&mut b, opt + 108, &16u32.to_le_bytes());
    let s = opt + 240;
    put(&mut b, s, b".text");
    put(&mut b, s + 8, &0x100u32.to_le_bytes());
    put(&mut b, s + 12, &0x1000u32.to_le_bytes());
    put(&mut b, s + 16, &0x200u32.to_le_bytes());
    put(&mut b, s + 20, &0x400u32.to_le_bytes());
    put(&mut b, s + 36, &0x6000_0020u32.to_le_bytes());
    b
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    plan: BuildPlan,
    boot: osk_builder::store::Image,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // Not a real bzImage: the UKI just gets no .uname.
    let kernel_bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let kernel = simple(
        &store,
        "test/kernel:1",
        &[E::File("kernel", &kernel_bytes, 0o644)],
    );
    let init = simple(
        &store,
        "test/init:1",
        &[
            E::File("init", b"#!/bin/osk-init\n", 0o755),
            E::Dir("etc", 0o755),
            E::File("etc/os-release", b"ID=osk-test\n", 0o644),
        ],
    );
    let stub = stub();
    // Shaped like syslinux's: isolinux.bin's isohybrid mark, 432 bytes of MBR code.
    let mut isolinux = vec![0x90u8; 4096];
    isolinux[64..68].copy_from_slice(&0x7078_c0fbu32.to_le_bytes());
    let mbr_code = [0xfau8; 432];
    let boot = simple(
        &store,
        "test/bootloader:1",
        &[
            E::Dir("usr", 0o755),
            E::Dir("usr/lib", 0o755),
            E::Dir("usr/lib/systemd", 0o755),
            E::Dir("usr/lib/systemd/boot", 0o755),
            E::Dir("usr/lib/systemd/boot/efi", 0o755),
            E::File("usr/lib/systemd/boot/efi/linuxx64.efi.stub", &stub, 0o644),
            E::Dir("usr/lib/ISOLINUX", 0o755),
            E::File("usr/lib/ISOLINUX/isolinux.bin", &isolinux, 0o644),
            E::File("usr/lib/ISOLINUX/isohdpfx.bin", &mbr_code, 0o644),
            E::Dir("usr/lib/syslinux", 0o755),
            E::Dir("usr/lib/syslinux/modules", 0o755),
            E::Dir("usr/lib/syslinux/modules/bios", 0o755),
            E::File(
                "usr/lib/syslinux/modules/bios/ldlinux.c32",
                b"ldlinux",
                0o644,
            ),
        ],
    );
    let mut k = KernelPlan::new(kernel, "console=ttyS0");
    k.tar = None;
    let plan = BuildPlan {
        kernel: Some(k),
        init: vec![init],
        ..Default::default()
    };
    Fixture {
        dir,
        store,
        plan,
        boot,
    }
}

fn opts(f: &Fixture, dir: &Path) -> BuildOptions {
    BuildOptions {
        formats: FORMATS.to_vec(),
        dir: dir.to_path_buf(),
        name: "node".into(),
        compress: Compression::Gzip,
        mtime: 1_700_000_000,
        disk_size: None,
        boot: Some(f.boot.clone()),
        firmware: None,
    }
}

#[test]
fn every_bootable_format_is_reproducible_and_reads_back() {
    let f = fixture();
    let a = f.dir.path().join("a");
    let b = f.dir.path().join("elsewhere/b");
    build(
        &f.store,
        &Spool::temporary().unwrap(),
        &f.plan,
        &opts(&f, &a),
    )
    .unwrap();
    build(
        &f.store,
        &Spool::temporary().unwrap(),
        &f.plan,
        &opts(&f, &b),
    )
    .unwrap();
    for format in FORMATS {
        let name = format.file_name("node");
        let x = std::fs::read(a.join(&name)).unwrap();
        assert_eq!(x, std::fs::read(b.join(&name)).unwrap(), "{name} differs");
    }
    let d = a.display();

    let sections = sh(&format!("objdump -h {d}/node.efi"));
    for s in [".text", ".osrel", ".cmdline", ".initrd", ".linux"] {
        assert!(sections.contains(s), "{s} missing:\n{sections}");
    }
    for disk in ["node.raw", "node.iso"] {
        let v = sh(&format!("sgdisk -v {d}/{disk}"));
        assert!(v.contains("No problems found"), "{disk}: {v}");
        let parts = sh(&format!("sgdisk -p {d}/{disk}"));
        assert!(parts.contains("EF00"), "{disk}: {parts}");
    }
    // Both El Torito entries, and the volume's files as a reader sees them.
    let report = sh(&format!(
        "xorriso -indev {d}/node.iso -report_el_torito plain -find / -type f 2>&1"
    ));
    for want in [
        "El Torito boot img :   1  BIOS  y   none",
        "El Torito boot img :   2  UEFI  y   none",
        "El Torito img path :   1  /isolinux/isolinux.bin",
        "El Torito img path :   2  /boot/esp.img",
        "'/boot/vmlinuz'",
        "'/boot/initrd.img'",
        "'/isolinux/ldlinux.c32'",
    ] {
        assert!(
            report.to_lowercase().contains(&want.to_lowercase()),
            "{want} missing:\n{report}"
        );
    }
    // isolinux loads the kernel and initrd: the UKI's own sections, stored once.
    sh(&format!(
        "xorriso -osirrox on -indev {d}/node.iso -extract /BOOT/VMLINUZ {d}/vmlinuz \
         -extract /BOOT/INITRD.IMG {d}/initrd.img -extract /BOOT/ESP.IMG {d}/esp.img"
    ));
    sh(&format!(
        "objcopy -O binary --only-section=.linux {d}/node.efi {d}/linux.sec && cmp {d}/linux.sec {d}/vmlinuz"
    ));
    sh(&format!("fsck.vfat -n {d}/esp.img"));
    sh(&format!(
        "mcopy -i {d}/esp.img ::/EFI/BOOT/BOOTX64.EFI {d}/iso.efi && cmp {d}/iso.efi {d}/node.efi"
    ));
    let cfg = sh(&format!(
        "xorriso -osirrox on -indev {d}/node.iso -extract /ISOLINUX/ISOLINUX.CFG {d}/isolinux.cfg 2>/dev/null && cat {d}/isolinux.cfg"
    ));
    assert!(cfg.contains("APPEND console=ttyS0"), "{cfg}");
    // The ESP at 1 MiB: a clean FAT whose BOOTX64.EFI is the UKI.
    sh(&format!(
        "dd if={d}/node.raw of={d}/esp bs=1M skip=1 status=none && fsck.vfat -n {d}/esp \
         && mcopy -i {d}/esp ::/EFI/BOOT/BOOTX64.EFI {d}/back.efi && cmp {d}/back.efi {d}/node.efi"
    ));
    for (file, fmt) in [("node.qcow2", "qcow2"), ("node.vmdk", "vmdk")] {
        sh(&format!("qemu-img check -f {fmt} {d}/{file}"));
        sh(&format!(
            "qemu-img compare -f raw -F {fmt} {d}/node.raw {d}/{file}"
        ));
    }
    sh(&format!(
        "qemu-img compare -f raw -F vpc {d}/node.raw {d}/node.vhd"
    ));
    let info = sh(&format!("qemu-img info -f vpc {d}/node.vhd"));
    let raw_len = std::fs::metadata(a.join("node.raw")).unwrap().len();
    assert!(info.contains(&format!("({raw_len} bytes)")), "{info}");
    assert_eq!(raw_len % (1 << 20), 0);
    sh(&format!(
        "tar -xzf {d}/node.img.tar.gz -C {d} disk.raw && cmp {d}/disk.raw {d}/node.raw"
    ));
}

#[test]
fn disk_size_too_small_names_the_size_needed_and_writes_nothing() {
    let f = fixture();
    let out = f.dir.path().join("out");
    let mut o = opts(&f, &out);
    o.disk_size = Some(1 << 20);
    let err = build(&f.store, &Spool::temporary().unwrap(), &f.plan, &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--disk-size 1048576 is too small"), "{err}");
    assert!(err.contains("MiB)"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    o.disk_size = Some(100 << 20);
    build(&f.store, &Spool::temporary().unwrap(), &f.plan, &o).unwrap();
    assert_eq!(
        std::fs::metadata(out.join("node.raw")).unwrap().len(),
        100 << 20
    );
    let v = sh(&format!("sgdisk -v {}/node.raw", out.display()));
    assert!(v.contains("No problems found"), "{v}");
}

#[test]
fn bootable_formats_without_the_boot_image_say_how_to_get_it() {
    let f = fixture();
    let mut o = opts(&f, &f.dir.path().join("out"));
    o.boot = None;
    let err = build(&f.store, &Spool::temporary().unwrap(), &f.plan, &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("osk pkg build pkgs/bootloader"), "{err}");
}

#[test]
fn linuxkit_aliases_map_or_fail_clearly() {
    let (f, note) = Format::parse_alias("raw-efi").unwrap();
    assert_eq!(f, Format::Raw);
    assert!(note.unwrap().contains("raw"));
    assert_eq!(Format::parse_alias("qcow2").unwrap(), (Format::Qcow2, None));
    for alias in ["iso-bios", "iso-efi", "kernel+iso"] {
        let (f, note) = Format::parse_alias(alias).unwrap();
        assert_eq!(f, Format::Iso);
        assert!(note.unwrap().contains("BIOS and UEFI"));
    }
    assert_eq!(Format::parse_alias("raw-bios").unwrap().0, Format::Raw);
    assert_eq!(Format::parse_alias("qcow2-bios").unwrap().0, Format::Qcow2);
    let err = Format::parse_alias("floppy").unwrap_err();
    assert_eq!(
        err,
        FormatError::Unknown {
            name: "floppy".into()
        }
    );
    let err = err.to_string();
    assert!(err.contains("uki, iso, raw, qcow2"), "{err}");
    assert!(err.contains("iso-bios"), "{err}");
}
