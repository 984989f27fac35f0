//! The Raspberry Pi's SD card: an MBR and one FAT32 boot partition holding
//! what the Pi's own firmware reads (its GPU firmware, `config.txt`, a board
//! device tree, the kernel, the initrd and `cmdline.txt`).

use super::{derive_id, write_fat, Disk, FatFile, ImageError, MIB};

/// The boot partition's start: 4 MiB, the erase-block alignment SD cards like.
pub const RPI_BOOT_START: u64 = 4 * MIB;
const SECTOR: u64 = 512;
/// MBR partition type: FAT32 with LBA addressing.
const FAT32_LBA: u8 = 0x0c;

/// The card's file names for the kernel and the initrd (`config.txt` names them).
pub const RPI_KERNEL: &str = "kernel8.img";
pub const RPI_INITRD: &str = "initrd.img";

/// What goes on the card.
pub struct RpiParts<'a> {
    /// The GPU firmware (start4.elf, fixup4.dat ...), by file name.
    pub firmware: &'a [(String, Vec<u8>)],
    /// Device trees by file name; the firmware picks its board's.
    pub dtbs: &'a [(String, Vec<u8>)],
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    /// The manifest's kernel command line.
    pub cmdline: &'a str,
}

/// `config.txt`: 64-bit mode, Debian's (mainline) kernel and device tree
/// names, the serial console, and the kernel and initrd on the card.
pub fn config_txt() -> String {
    format!(
        "# Written by `osk build --format rpi4`; read by the Pi's firmware.\n\
         [all]\n\
         arm_64bit=1\n\
         # A mainline kernel: the firmware loads the upstream device tree\n\
         # names (bcm2711-rpi-4-b.dtb, bcm2837-rpi-3-b.dtb).\n\
         upstream_kernel=1\n\
         kernel={RPI_KERNEL}\n\
         initramfs {RPI_INITRD} followkernel\n\
         # The mini UART on GPIO 14/15 (ttyS1) at a fixed clock: the console.\n\
         enable_uart=1\n\
         disable_splash=1\n"
    )
}

/// The console the boards need: the mini UART on the GPIO header, which the
/// mainline device trees of the Pi 3 and 4 call `serial1` (ttyS1); the
/// PL011 serves Bluetooth.
pub const RPI_CONSOLE: &str = "console=ttyS1,115200";

/// `cmdline.txt`: the manifest's line and the boards' console, last (the
/// one `/dev/console` is), on one line. The line's own 8250 consoles (an
/// amd64 manifest's `console=ttyS0`) are dropped: the 8250 driver serves
/// one console, and a port the Pi lacks would take it from ttyS1.
pub fn cmdline_txt(cmdline: &str) -> String {
    let mut words: Vec<&str> = (cmdline.split_whitespace())
        .filter(|w| !w.starts_with("console=ttyS"))
        .collect();
    words.push(RPI_CONSOLE);
    format!("{}\n", words.join(" "))
}

/// The card image: the boot partition at [`RPI_BOOT_START`], the rest of
/// `size` (default: just large enough) left free.
pub fn rpi_image(
    parts: &RpiParts,
    seed: &[u8],
    mtime: u32,
    size: Option<u64>,
) -> Result<Disk, ImageError> {
    let config = config_txt();
    let cmdline = cmdline_txt(parts.cmdline);
    let mut files: Vec<FatFile> = Vec::new();
    for (name, data) in parts.firmware.iter().chain(parts.dtbs) {
        files.push(FatFile { path: name, data });
    }
    files.push(FatFile {
        path: "config.txt",
        data: config.as_bytes(),
    });
    files.push(FatFile {
        path: "cmdline.txt",
        data: cmdline.as_bytes(),
    });
    files.push(FatFile {
        path: RPI_KERNEL,
        data: parts.kernel,
    });
    files.push(FatFile {
        path: RPI_INITRD,
        data: parts.initrd,
    });
    let start_lba = RPI_BOOT_START / SECTOR;
    let fat = write_fat(&files, "OSK-BOOT", seed, mtime, start_lba)?;
    let needed = RPI_BOOT_START + fat.len() as u64;
    let size = match size {
        Some(given) if given < needed => return Err(ImageError::DiskTooSmall { given, needed }),
        Some(given) => given,
        None => needed,
    };
    let mut disk = Disk::new(size);
    disk.put(0, mbr(start_lba, fat.len() as u64 / SECTOR, seed));
    disk.put(RPI_BOOT_START, fat);
    Ok(disk)
}

/// A DOS partition table with one FAT32 partition (LBA only: CHS says so).
fn mbr(start_lba: u64, sectors: u64, seed: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; SECTOR as usize];
    m[440..444].copy_from_slice(&derive_id(seed, "mbr-signature")[..4]);
    let p = 446;
    m[p + 1..p + 4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    m[p + 4] = FAT32_LBA;
    m[p + 5..p + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    m[p + 8..p + 12].copy_from_slice(&(start_lba as u32).to_le_bytes());
    m[p + 12..p + 16].copy_from_slice(&(sectors as u32).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_the_boards_console_once() {
        assert_eq!(cmdline_txt("console=ttyS0\n"), "console=ttyS1,115200\n");
        assert_eq!(cmdline_txt(""), "console=ttyS1,115200\n");
        assert_eq!(
            cmdline_txt("console=tty1 quiet console=ttyS1 console=ttyS2,9600"),
            "console=tty1 quiet console=ttyS1,115200\n"
        );
    }

    #[test]
    fn card_is_an_mbr_and_a_fat32_partition_at_4_mib_and_reproducible() {
        let firmware = [("start4.elf".to_string(), vec![1u8; 3000])];
        let dtbs = [("bcm2711-rpi-4-b.dtb".to_string(), vec![2u8; 100])];
        let parts = RpiParts {
            firmware: &firmware,
            dtbs: &dtbs,
            kernel: b"kernel",
            initrd: b"initrd",
            cmdline: "console=ttyS0",
        };
        let a = rpi_image(&parts, b"seed", 0, None).unwrap();
        assert_eq!(a, rpi_image(&parts, b"seed", 0, None).unwrap());
        let mut m = [0u8; 512];
        a.read_at(0, &mut m);
        assert_eq!(&m[510..], &[0x55, 0xaa]);
        assert_eq!(m[446 + 4], 0x0c);
        let start = u32::from_le_bytes(m[454..458].try_into().unwrap()) as u64;
        let len = u32::from_le_bytes(m[458..462].try_into().unwrap()) as u64;
        assert_eq!(start * 512, RPI_BOOT_START);
        assert_eq!((start + len) * 512, a.size);
        let mut bs = [0u8; 90];
        a.read_at(RPI_BOOT_START, &mut bs);
        assert_eq!(&bs[82..90], b"FAT32   ");
        let e = rpi_image(&parts, b"seed", 0, Some(MIB)).unwrap_err();
        assert!(matches!(e, ImageError::DiskTooSmall { .. }));
    }
}
