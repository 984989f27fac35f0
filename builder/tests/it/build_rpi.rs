//! `--format rpi4` from stand-in images: the card read back with mtools and
//! sfdisk, and the errors that name the missing firmware or device tree.

use crate::support;

use std::path::Path;

use osk_builder::assemble::Spool;
use osk_builder::build::{build, BuildOptions, BuildPlan, Compression, Format, KernelPlan};
use osk_builder::store::{Image, Store};
use support::{sh, simple, E};

const FIRMWARE: &[&str] = &[
    "bootcode.bin",
    "fixup.dat",
    "fixup4.dat",
    "start.elf",
    "start4.elf",
];

fn kernel(store: &Store, name: &str, dtbs: bool) -> Image {
    let mut entries = vec![
        E::File("kernel", b"ARM64 pretend Image", 0o644),
        E::Dir("dtbs", 0o755),
    ];
    if dtbs {
        entries.push(E::File(
            "dtbs/bcm2711-rpi-4-b.dtb",
            b"\xd0\x0d\xfe\xed pi4",
            0o644,
        ));
        entries.push(E::File(
            "dtbs/bcm2837-rpi-3-b.dtb",
            b"\xd0\x0d\xfe\xed pi3",
            0o644,
        ));
    }
    simple(store, name, &entries)
}

fn firmware(store: &Store) -> Image {
    let mut entries = vec![
        E::Dir("usr", 0o755),
        E::Dir("usr/lib", 0o755),
        E::Dir("usr/lib/raspi-firmware", 0o755),
    ];
    let paths: Vec<String> = FIRMWARE
        .iter()
        .map(|f| format!("usr/lib/raspi-firmware/{f}"))
        .collect();
    for p in &paths {
        entries.push(E::File(p, p.as_bytes(), 0o644));
    }
    simple(store, "test/raspi:1", &entries)
}

/// A plan of just the kernel (no modules tar) and its command line.
fn plan(kernel: Image, cmdline: &str) -> BuildPlan {
    let mut k = KernelPlan::new(kernel, cmdline);
    k.tar = None;
    BuildPlan {
        kernel: Some(k),
        ..BuildPlan::default()
    }
}

fn opts(dir: &Path, firmware: Option<Image>) -> BuildOptions {
    BuildOptions {
        formats: vec![Format::Rpi4],
        dir: dir.to_path_buf(),
        name: "pi".into(),
        compress: Compression::Gzip,
        mtime: 0,
        disk_size: None,
        boot: None,
        firmware,
    }
}

#[test]
fn rpi4_card_holds_firmware_device_trees_config_and_the_system() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let spool = Spool::open(tmp.path().join("spool")).unwrap();
    let plan = plan(
        kernel(&store, "test/kernel:pi", true),
        "console=ttyS0 quiet",
    );
    let out = tmp.path().join("out");
    let written = build(&store, &spool, &plan, &opts(&out, Some(firmware(&store)))).unwrap();
    let card = out.join("pi-rpi4.img");
    assert_eq!(written, std::slice::from_ref(&card));

    let table = sh(&format!("sfdisk --dump {}", card.display()));
    assert!(
        table.contains("start=        8192") && table.contains("type=c"),
        "{table}"
    );
    let img = format!("{}@@4M", card.display());
    let listing = sh(&format!("mdir -b -i {img} ::"));
    for f in FIRMWARE.iter().chain(&[
        "bcm2711-rpi-4-b.dtb",
        "bcm2837-rpi-3-b.dtb",
        "config.txt",
        "cmdline.txt",
        "kernel8.img",
        "initrd.img",
    ]) {
        assert!(listing.contains(&format!("::/{f}\n")), "{f}: {listing}");
    }
    assert_eq!(
        sh(&format!("mtype -i {img} ::cmdline.txt")),
        "quiet console=ttyS1,115200\n"
    );
    assert_eq!(
        sh(&format!("mtype -i {img} ::start4.elf")),
        "usr/lib/raspi-firmware/start4.elf"
    );
    assert_eq!(
        sh(&format!("mtype -i {img} ::kernel8.img")),
        "ARM64 pretend Image"
    );
    // The same inputs, the same bytes.
    let first = std::fs::read(&card).unwrap();
    build(&store, &spool, &plan, &opts(&out, Some(firmware(&store)))).unwrap();
    assert_eq!(std::fs::read(&card).unwrap(), first);
}

#[test]
fn rpi4_names_the_missing_firmware_image_or_device_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let spool = Spool::open(tmp.path().join("spool")).unwrap();
    let plan = plan(kernel(&store, "test/kernel:nodtb", false), "");
    let out = tmp.path().join("out");
    let e = build(&store, &spool, &plan, &opts(&out, None)).unwrap_err();
    assert!(e.to_string().contains("pkgs/raspi"), "{e}");
    let e = build(&store, &spool, &plan, &opts(&out, Some(firmware(&store)))).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("test/kernel:nodtb") && msg.contains("dtbs/bcm2711-rpi-4-b.dtb"),
        "{msg}"
    );
    // The firmware image must be the Pi's.
    let other = simple(&store, "test/other:1", &[E::File("x", b"x", 0o644)]);
    let e = build(&store, &spool, &plan, &opts(&out, Some(other))).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("test/other:1") && msg.contains("usr/lib/raspi-firmware/"),
        "{msg}"
    );
    assert!(!out.join("pi-rpi4.img").exists());
}
