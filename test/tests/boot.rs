//! Real boots that work today: Debian's kernel with busybox initramfses,
//! started through the real `osk run qemu` under TCG.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use osk_e2e::floor::{self, busybox_initramfs, debian_kernel, write_artifacts};
use osk_e2e::{http_get, BootOpts, Machine};
use osk_layout::marker::Event;

/// TCG on a loaded 2-core machine: the kernel alone needs 10-40 s.
const BOOT: Duration = Duration::from_secs(180);
const EXIT: Duration = Duration::from_secs(60);

fn image(dir: &Path, body: &str, modules: &[&str]) -> Result<PathBuf> {
    let kernel = debian_kernel()?;
    let kos = kernel.modules(modules)?;
    let prefix = dir.join("vm");
    write_artifacts(
        &prefix,
        &kernel.vmlinuz,
        &busybox_initramfs(body, &kos)?,
        "console=ttyS0 panic=-1",
    )?;
    Ok(prefix)
}

#[test]
fn floor_boots_and_powers_off() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = floor::floor_image(dir.path())?;
    let mut vm = Machine::boot(&prefix, &BootOpts::default())?;
    vm.wait_for_line("floor: /init reached at uptime", BOOT)?;
    let uptime = vm.wait_for_marker(&Event::InitStart, BOOT)?;
    assert!(uptime > 0.0 && uptime < 120.0, "uptime {uptime}");
    vm.wait_exit(EXIT)?;
    assert!(
        vm.console().contains("Linux version"),
        "kernel messages on the serial console"
    );
    assert!(
        !vm.console().contains(EFI_BOOT),
        "a BIOS boot unless --uefi"
    );
    Ok(())
}

/// What the kernel prints when firmware started it as an EFI application.
const EFI_BOOT: &str = "efi: EFI v";

/// `--uefi`: OVMF (Debian's `ovmf`) starts the same kernel through its EFI
/// stub, with the initrd and command line as under BIOS.
#[test]
fn floor_boots_through_uefi() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = floor::floor_image(dir.path())?;
    let opts = BootOpts {
        uefi: true,
        ..BootOpts::default()
    };
    let mut vm = Machine::boot(&prefix, &opts)?;
    vm.wait_for_line("floor: /init reached at uptime", BOOT)?;
    vm.wait_exit(EXIT)?;
    assert!(
        vm.console().contains(EFI_BOOT),
        "no EFI boot in the console:\n{}",
        vm.console()
    );
    Ok(())
}

#[test]
fn monitor_quit_stops_qemu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = image(
        dir.path(),
        "mark init-start\nwhile :; do sleep 1; done\n",
        &[],
    )?;
    let mut vm = Machine::boot(&prefix, &BootOpts::default())?;
    vm.wait_for_marker(&Event::InitStart, BOOT)?;
    assert!(vm.is_running());
    let status = vm.monitor("info status")?;
    assert!(status.contains("running"), "info status: {status:?}");
    vm.monitor("quit")?;
    vm.wait_exit(Duration::from_secs(10))?;
    Ok(())
}

/// QEMU's system_powerdown presses the ACPI power button; the guest sees it
/// once `button` (and `evdev`, to read it) are loaded, as osk-init will.
#[test]
fn system_powerdown_reaches_the_guest() -> Result<()> {
    let body = r#"
for ev in /sys/class/input/event*; do
  grep -q "Power Button" $ev/device/name && btn=/dev/input/${ev##*/}
done
[ -n "$btn" ] || { echo "no power button"; poweroff -f; }
# Open the device before saying we are ready: a press before the open is lost.
exec 3<$btn
mark all-services-started
head -c 1 <&3 >/dev/null
mark shutdown-start
echo "power button pressed"
poweroff -f
"#;
    let dir = tempfile::tempdir()?;
    let prefix = image(dir.path(), body, &["evdev", "button"])?;
    let mut vm = Machine::boot(&prefix, &BootOpts::default())?;
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    // Press again if a slow guest missed it, as a person would.
    let mut presses = 0;
    loop {
        vm.monitor("system_powerdown")?;
        presses += 1;
        match vm.wait_for_marker(&Event::ShutdownStart, Duration::from_secs(20)) {
            Ok(_) => break,
            Err(e) if presses == 3 => return Err(e),
            Err(_) => {}
        }
    }
    vm.wait_exit(EXIT)?;
    Ok(())
}

/// --data (ISO on a CD-ROM), --disk (virtio-blk) and --publish (virtio-net
/// user networking) as the guest sees them; a second boot with the same state
/// directory finds what the first wrote on the disk.
#[test]
fn data_disk_and_publish_reach_the_guest() -> Result<()> {
    let modules = [
        "ahci",
        "sr_mod",
        "isofs",
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
    ];
    let first = r#"
wait_for() { i=0; while [ ! -e "$1" ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done; }
wait_for /dev/sr0
mount -t iso9660 -o ro /dev/sr0 /mnt && echo "data files: $(ls /mnt | tr '\n' ' ')" && echo "data config: $(cat /mnt/config)"
wait_for /dev/vda
echo osk-persist-0123456789 | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null && echo "disk written"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
mkdir -p /www && echo "hello from the guest" > /www/index.html
httpd -p 80 -h /www
mark all-services-started
while :; do sleep 1; done
"#;
    let second = r#"
i=0; while [ ! -e /dev/vda ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); done
echo "disk holds: $(head -c 22 /dev/vda)"
poweroff -f
"#;
    let dir = tempfile::tempdir()?;
    let state = tempfile::Builder::new().prefix("osk-e2e-").tempdir()?;
    let opts = BootOpts {
        publish: vec![80],
        disks: vec!["size=8M".into()],
        data: Some("{\"hostname\":\"e2e\"}".into()),
        state_dir: Some(state.path().to_path_buf()),
        ..BootOpts::default()
    };

    let prefix = image(dir.path(), first, &modules)?;
    let mut vm = Machine::boot(&prefix, &opts)?;
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    let console = vm.console();
    assert!(
        console.contains("data files: config user-data"),
        "{console}"
    );
    assert!(
        console.contains("data config: {\"hostname\":\"e2e\"}"),
        "{console}"
    );
    assert!(console.contains("disk written"), "{console}");
    let (status, body) = http_get(vm.port(80), "/")?;
    assert_eq!((status, body.trim()), (200, "hello from the guest"));
    vm.monitor("quit")?;
    vm.wait_exit(Duration::from_secs(10))?;
    drop(vm);

    let prefix = image(dir.path(), second, &modules)?;
    let mut vm = Machine::boot(&prefix, &opts)?;
    vm.wait_for_line("disk holds: osk-persist-0123456789", BOOT)?;
    vm.wait_exit(EXIT)?;
    Ok(())
}

#[test]
fn missing_artifacts_fail_clearly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("nothing");
    let out = osk_e2e::osk(&["run", "qemu", "--accel", "tcg", prefix.to_str().unwrap()])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing-kernel") && err.contains("osk build"),
        "{err}"
    );
    Ok(())
}

#[test]
fn missing_qemu_says_how_to_install_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("vm");
    write_artifacts(&prefix, Path::new("/bin/busybox"), b"", "")?;
    // The kernel here is not a real one: name its architecture.
    let out = osk_e2e::osk(&[
        "run",
        "qemu",
        "--arch",
        "amd64",
        "--qemu",
        "/nonexistent/qemu",
        "--state",
        dir.path().join("st").to_str().unwrap(),
        prefix.to_str().unwrap(),
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
    Ok(())
}
