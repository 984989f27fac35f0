//! `--format rpi4`: the Raspberry Pi's SD card from the assembled system, the
//! Pi firmware image (`pkgs/raspi`) and the kernel image's device trees.

use std::io::Read;

use sha2::{Digest, Sha256};

use super::{Assembled, BuildError, BuildOptions};
use crate::assemble::{self, FileInode, Spool};
use crate::image::{self, Disk, RpiParts};
use crate::store::{Image, Store};

/// Where Debian's `raspi-firmware` puts the firmware.
pub const RPI_FIRMWARE_DIR: &str = "usr/lib/raspi-firmware";
/// The Pi 3's firmware (bootcode.bin, start.elf, fixup.dat) and the Pi 4's
/// (start4.elf, fixup4.dat; its first stage is in its EEPROM).
pub const RPI_FIRMWARE: &[&str] = &[
    "bootcode.bin",
    "fixup.dat",
    "fixup4.dat",
    "start.elf",
    "start4.elf",
];
/// The device tree the card cannot do without: the Pi 4 B's.
pub const RPI4_DTB: &str = "bcm2711-rpi-4-b.dtb";

/// Reads the firmware files out of the Pi firmware image, by file name.
pub fn load_firmware(
    store: &Store,
    spool: &Spool,
    image: &Image,
) -> Result<Vec<(String, Vec<u8>)>, BuildError> {
    let name = image.reference.familiar();
    let tree = assemble::flatten(store, spool, image)?;
    RPI_FIRMWARE
        .iter()
        .map(|f| {
            let path = format!("{RPI_FIRMWARE_DIR}/{f}");
            let inode = tree.file(path.as_bytes()).ok_or_else(|| BuildError::Boot {
                image: name.clone(),
                reason: format!(
                    "has no {path:?}; is it the pkgs/raspi image? Rebuild it with `osk pkg build --arch arm64 pkgs/raspi`"
                ),
            })?;
            Ok((f.to_string(), read(spool, inode, &path)?))
        })
        .collect()
}

fn read(spool: &Spool, inode: &FileInode, what: &str) -> Result<Vec<u8>, BuildError> {
    let io = |source| BuildError::Io {
        path: spool.root().join(what),
        source,
    };
    let mut v = Vec::new();
    spool
        .open_exact(&inode.sha, inode.size)
        .map_err(io)?
        .read_to_end(&mut v)
        .map_err(io)?;
    Ok(v)
}

/// The card: the firmware, the kernel image's device trees, config.txt,
/// cmdline.txt, the kernel and `initrd` (the finished initramfs).
pub fn card(
    spool: &Spool,
    a: &Assembled,
    firmware: &[(String, Vec<u8>)],
    initrd: &[u8],
    opts: &BuildOptions,
) -> Result<Disk, BuildError> {
    if !a.dtbs.iter().any(|(n, _)| n == RPI4_DTB) {
        return Err(BuildError::Kernel {
            image: a.kernel_image.clone(),
            reason: format!(
                "has no {}/{RPI4_DTB}, which --format rpi4 puts on the card: list \
                 broadcom/{RPI4_DTB} in its build.yml's kernel.dtbs (pkgs/kernel does)",
                osk_layout::KERNEL_DTBS
            ),
        });
    }
    let kernel = read(
        spool,
        a.kernel.as_ref().expect("checked by build()"),
        "kernel",
    )?;
    let dtbs = (a.dtbs.iter())
        .map(|(n, f)| Ok((n.clone(), read(spool, f, n)?)))
        .collect::<Result<Vec<_>, BuildError>>()?;
    let mut h = Sha256::new();
    h.update(&kernel);
    h.update(initrd);
    h.update(opts.mtime.to_le_bytes());
    let seed = h.finalize();
    let parts = RpiParts {
        firmware,
        dtbs: &dtbs,
        kernel: &kernel,
        initrd,
        cmdline: &a.cmdline,
    };
    Ok(image::rpi_image(&parts, &seed, opts.mtime, opts.disk_size)?)
}
