//! The Raspberry Pi card, `osk build --arch arm64 --format rpi4`: its
//! partition table and boot partition read back with sfdisk and mtools, and
//! the kernel, Pi 3 device tree and initrd taken out of that partition
//! booted on QEMU's `raspi3b` with the card in its SD slot (QEMU cannot run
//! the Pi's GPU firmware, so QEMU loads them as the firmware would).
//!
//! Run under the VM lock: `flock /tmp/osk-team/vm.lock cargo test -p osk-e2e --test rpi`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use osk_layout::marker::{self, Event};

/// Where the boot partition starts (sector 8192), as mtools' `IMG@@OFFSET`.
const BOOT_OFFSET: &str = "4M";
/// Guest time under TCG emulating four Cortex-A53s: generous.
const BOOT: Duration = Duration::from_secs(600);

/// The files the Pi's firmware reads from the boot partition.
const CARD_FILES: &[&str] = &[
    "bootcode.bin",
    "start.elf",
    "fixup.dat",
    "start4.elf",
    "fixup4.dat",
    "bcm2711-rpi-4-b.dtb",
    "bcm2837-rpi-3-b.dtb",
    "config.txt",
    "cmdline.txt",
    "kernel8.img",
    "initrd.img",
];

/// `osk build --arch arm64 --format rpi4 --format kernel+initrd` of minimal into `out`.
fn build(out: &Path) -> Result<PathBuf> {
    let minimal = osk_e2e::workspace_root().join("examples/minimal.yml");
    osk_e2e::build_into(
        out,
        &[
            "--arch",
            "arm64",
            "--format",
            "rpi4",
            "--format",
            "kernel+initrd",
        ],
        &minimal,
    )?;
    Ok(out.join("minimal-rpi4.img"))
}

fn run(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is it installed? see .ci/host-packages.sh)"))?;
    ensure!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The card's MBR as sfdisk reads it: one FAT32 (LBA) partition at sector 8192.
fn check_partition_table(card: &Path) -> Result<()> {
    let json = run(Command::new("sfdisk").arg("--json").arg(card))?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let table = &v["partitiontable"];
    ensure!(table["label"] == "dos", "not an MBR (dos) table: {json}");
    let parts = table["partitions"].as_array().context("no partitions")?;
    ensure!(parts.len() == 1, "not one partition: {json}");
    ensure!(
        parts[0]["type"] == "c" && parts[0]["start"] == 8192,
        "not a FAT32 (LBA) partition at sector 8192: {json}"
    );
    Ok(())
}

/// Boots the card's kernel, Pi 3 device tree, initrd and cmdline.txt on
/// raspi3b, with the card itself in the SD slot, until
/// `all-services-started` and the card's partition on the console; returns
/// the console.
fn boot_raspi3b(dir: &Path, card: &Path) -> Result<String> {
    // `loglevel=7`: osk-init keeps the kernel's info lines (the SD card's
    // partitions among them) off the console otherwise.
    let cmdline = std::fs::read_to_string(dir.join("cmdline.txt"))?;
    let cmdline = format!("{} loglevel=7", cmdline.trim());
    // QEMU's SD cards are a power of two in size.
    let sd = dir.join("sd.img");
    std::fs::copy(card, &sd)?;
    let len = std::fs::metadata(&sd)?.len().next_power_of_two();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&sd)?
        .set_len(len)?;
    let console = dir.join("console.log");
    // raspi3b's first serial port is the PL011 (ttyAMA0, Bluetooth on a
    // real Pi 3), its second the mini UART (ttyS1): the card's console.
    let mut qemu = Command::new("qemu-system-aarch64")
        .current_dir(dir)
        .args(["-M", "raspi3b", "-m", "1G", "-accel", "tcg"])
        .args(["-kernel", "kernel8.img", "-dtb", "bcm2837-rpi-3-b.dtb"])
        .args(["-initrd", "initrd.img", "-append", &cmdline])
        .arg("-drive")
        .arg(format!("file={},if=sd,format=raw", sd.display()))
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .args(["-serial", "null", "-serial"])
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .spawn()
        .context("starting qemu-system-aarch64 (qemu-system-arm)")?;
    let start = Instant::now();
    let result = loop {
        let text = std::fs::read(&console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text).into_owned();
        let done = BufReader::new(text.as_bytes())
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| marker::parse(&l))
            .find(|(_, e)| *e == Event::AllServicesStarted);
        if let Some((at, _)) = done.filter(|_| text.contains("mmcblk0: p1")) {
            eprintln!(
                "raspi3b: all-services-started at {at:.1} s guest time, {:.0} s wall",
                start.elapsed().as_secs_f64()
            );
            break Ok(text);
        }
        if let Some(status) = qemu.try_wait()? {
            break Err(anyhow::anyhow!(
                "QEMU exited ({status}) before all-services-started; console:\n{}",
                tail(&text)
            ));
        }
        if start.elapsed() > BOOT {
            break Err(anyhow::anyhow!(
                "no all-services-started and `mmcblk0: p1` within {BOOT:?}; console:\n{}",
                tail(&text)
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    result
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The card holds the Pi 3 and Pi 4 boot files in an MBR FAT32 partition
/// (sfdisk, mdir, fsck.fat), the build's own kernel and initrd, and a
/// second build writes the same bytes; the kernel, Pi 3 device tree,
/// initrd and cmdline.txt copied out of it (mcopy) reach
/// `all-services-started` on QEMU's raspi3b, console on the mini UART, and
/// the kernel reads the card's partition in the SD slot through the SD host
/// driver osk-init loaded.
#[test]
fn rpi4_card_holds_the_boot_files_and_boots_on_raspi3b() -> Result<()> {
    let cache = osk_e2e::cache_dir()?;
    let out = cache.join("rpi");
    let card = build(&out)?;
    let size = std::fs::metadata(&card)?.len();
    eprintln!("minimal-rpi4.img: {size} bytes");
    check_partition_table(&card)?;

    let image = format!("{}@@{BOOT_OFFSET}", card.display());
    let listing = run(Command::new("mdir").args(["-b", "-i", &image, "::"]))?;
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .collect();
    for f in CARD_FILES {
        ensure!(
            names.contains(f),
            "{f} is not on the boot partition: {names:?}"
        );
    }

    // fsck.fat reads a file system, not a partition of a disk: a copy of it.
    let tmp = tempfile::tempdir()?;
    let part = tmp.path().join("boot.vfat");
    let bytes = std::fs::read(&card)?;
    std::fs::write(&part, &bytes[4 << 20..])?;
    run(Command::new("fsck.fat").arg("-n").arg(&part))?;

    let dir = tmp.path().join("boot");
    std::fs::create_dir(&dir)?;
    for f in CARD_FILES {
        run(Command::new("mcopy")
            .args(["-n", "-i", &image])
            .arg(format!("::{f}"))
            .arg(dir.join(f)))?;
    }
    for (on_card, built) in [
        ("kernel8.img", "minimal-kernel"),
        ("initrd.img", "minimal-initrd.img"),
    ] {
        ensure!(
            std::fs::read(dir.join(on_card))? == std::fs::read(out.join(built))?,
            "{on_card} on the card is not the build's {built}"
        );
    }
    let config = std::fs::read_to_string(dir.join("config.txt"))?;
    for line in [
        "arm_64bit=1",
        "kernel=kernel8.img",
        "initramfs initrd.img followkernel",
        "enable_uart=1",
    ] {
        ensure!(
            config.lines().any(|l| l == line),
            "config.txt has no `{line}`:\n{config}"
        );
    }
    let cmdline = std::fs::read_to_string(dir.join("cmdline.txt"))?;
    ensure!(
        cmdline.trim_end().ends_with("console=ttyS1,115200") && !cmdline.contains("ttyS0"),
        "cmdline.txt does not end with the boards' console: {cmdline:?}"
    );

    let again = build(&cache.join("rpi-b"))?;
    if std::fs::read(&again)? != bytes {
        bail!("two builds of minimal-rpi4.img differ");
    }

    let console = boot_raspi3b(&dir, &card)?;
    ensure!(
        console.contains("Machine model: Raspberry Pi 3 Model B"),
        "not booted with the card's Pi 3 device tree"
    );
    // The Pi 3's SD host driver, a module osk-init loaded for the device.
    ensure!(
        console.contains("sdhost-bcm2835"),
        "the card was not read through the Pi 3's SD host (bcm2835)"
    );
    Ok(())
}
