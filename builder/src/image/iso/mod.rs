//! Hybrid images: one layout that boots from CD and from disk, under BIOS and UEFI.
//!
//! From the start of the medium: the MBR and GPT in ISO 9660's system area,
//! the volume's descriptors and directories, isolinux, then the ESP holding
//! the UKI. The ISO files `/boot/vmlinuz` and `/boot/initrd.img` that
//! isolinux loads are the UKI's `.linux` and `.initrd` sections inside the
//! ESP, named twice but stored once. El Torito's catalog names isolinux.bin
//! (BIOS) and the ESP (UEFI); the GPT names the ESP for disks.

pub mod eltorito;
pub mod hybrid;
pub mod iso9660;

use super::gpt::BACKUP_LEN;
use super::{fat, uki, Disk, FatFile, ImageError, MIB};
use iso9660::{Data, IsoFile, Volume, BLOCK, BOOT_RECORD_LBA};

/// syslinux's BIOS boot pieces, from the bootloader package.
pub struct BiosLoader<'a> {
    /// `isolinux.bin`: loaded by the BIOS from CD, or by the MBR code from disk.
    pub isolinux: &'a [u8],
    /// `ldlinux.c32`: isolinux's second half, read from isolinux's directory.
    pub ldlinux: &'a [u8],
    /// `isohdpfx.bin`: the MBR code that starts isolinux.bin from a disk.
    pub mbr_code: &'a [u8],
}

/// What the image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// An `.iso` (also for USB sticks): as small as it can be.
    Cd,
    /// A disk of the given size (default: just large enough, whole MiB),
    /// the ESP at a MiB boundary; the space after it stays free.
    Disk(Option<u64>),
}

/// The UKI's sections isolinux boots, with the names they get in the volume.
const SHARED: [(&str, &str); 2] = [(".linux", "boot/vmlinuz"), (".initrd", "boot/initrd.img")];

/// isolinux's configuration: boot the kernel at once with `cmdline`, console on serial too.
fn isolinux_cfg(cmdline: &str) -> Vec<u8> {
    // A line break would end APPEND and start a directive.
    let cmdline: String = cmdline
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "SERIAL 0 115200\nDEFAULT osk\nPROMPT 0\nTIMEOUT 0\nLABEL osk\n  KERNEL /{}\n  INITRD /{}\n  APPEND {}\n",
        SHARED[0].1,
        SHARED[1].1,
        cmdline.trim()
    )
    .into_bytes()
}

/// The volume's files; `at` gives the kernel, initrd and ESP extents once
/// known. Without `bios` (UEFI-only architectures) there is no isolinux.
fn files<'a>(
    bios: Option<(&'a [u8], &BiosLoader<'a>, &'a [u8])>,
    catalog: &'a [u8],
    at: [(u32, u64); 3],
) -> Vec<IsoFile<'a>> {
    let ext = |(lba, len)| Data::At { lba, len };
    let mut v = Vec::new();
    if let Some((isolinux, bios, cfg)) = bios {
        v.extend([
            IsoFile {
                path: "isolinux/isolinux.bin",
                data: Data::Stored(isolinux),
            },
            IsoFile {
                path: "isolinux/ldlinux.c32",
                data: Data::Stored(bios.ldlinux),
            },
            IsoFile {
                path: "isolinux/isolinux.cfg",
                data: Data::Stored(cfg),
            },
        ]);
    }
    v.extend([
        IsoFile {
            path: if bios.is_some() {
                "isolinux/boot.cat"
            } else {
                "boot/boot.cat"
            },
            data: Data::Stored(catalog),
        },
        IsoFile {
            path: SHARED[0].1,
            data: ext(at[0]),
        },
        IsoFile {
            path: SHARED[1].1,
            data: ext(at[1]),
        },
        IsoFile {
            path: "boot/esp.img",
            data: ext(at[2]),
        },
    ]);
    v
}

/// Indices in [`files`]: isolinux.bin comes first when there is one.
const ISOLINUX: usize = 0;
fn catalog_index(bios: bool) -> usize {
    if bios {
        3
    } else {
        0
    }
}

/// The hybrid image of `uki`, which the ESP holds at `efi_path` (UEFI's
/// removable-media path for its architecture); with `bios`, isolinux boots
/// the same kernel with `cmdline` under a PC BIOS too. `seed` derives GUIDs
/// and serials; every timestamp is `mtime`.
pub fn hybrid_image(
    uki: &[u8],
    cmdline: &str,
    bios: Option<&BiosLoader>,
    efi_path: &str,
    medium: Medium,
    seed: &[u8],
    mtime: u32,
) -> Result<Disk, ImageError> {
    let cfg = isolinux_cfg(cmdline);
    let blank = vec![0u8; BLOCK as usize];
    let with = |isolinux| bios.map(|b| (isolinux, b, &cfg[..]));
    let mut vol = Volume {
        label: "OSK",
        mtime: i64::from(mtime),
        files: files(
            with(bios.map_or(&[][..], |b| b.isolinux)),
            &blank,
            [(0, 0); 3],
        ),
        boot_record: true,
    };
    let layout = vol.layout()?;

    let align = match medium {
        Medium::Cd => BLOCK,
        Medium::Disk(_) => MIB,
    };
    let esp_start = (u64::from(layout.end) * BLOCK).next_multiple_of(align);
    let esp = fat::write_fat_placed(
        &[FatFile {
            path: efi_path,
            data: uki,
        }],
        "ESP",
        seed,
        mtime,
        esp_start / 512,
    )?;
    let esp_len = esp.bytes.len() as u64;
    let esp_end = esp_start + esp_len;
    let block = |offset: u64| {
        debug_assert_eq!(offset % BLOCK, 0, "aligned by fat and uki");
        u32::try_from(offset / BLOCK).map_err(|_| ImageError::BootFile {
            path: "the image".into(),
            reason: format!("reaches byte {offset}, past ISO 9660's 8 TiB"),
        })
    };
    let mut at = [(0u32, 0u64); 3];
    for (i, (section, _)) in SHARED.iter().enumerate() {
        let (off, len) = uki::section(uki, section).ok_or_else(|| ImageError::BootFile {
            path: "the UKI".into(),
            reason: format!("has no {section} section"),
        })?;
        at[i] = (block(esp_start + esp.offsets[0] + off)?, len);
    }
    at[2] = (block(esp_start)?, esp_len);

    let needed = esp_end + BACKUP_LEN;
    let size = match medium {
        Medium::Cd => needed.next_multiple_of(BLOCK),
        Medium::Disk(None) => needed.next_multiple_of(MIB),
        Medium::Disk(Some(given)) if given < needed => {
            return Err(ImageError::DiskTooSmall { given, needed })
        }
        Medium::Disk(Some(given)) => given.next_multiple_of(MIB),
    };

    let catalog_lba = layout
        .stored_lba(catalog_index(bios.is_some()))
        .expect("stored");
    let (catalog, tables, isolinux);
    match bios {
        Some(b) => {
            let isolinux_lba = layout.stored_lba(ISOLINUX).expect("stored");
            let mut bin = b.isolinux.to_vec();
            eltorito::patch_boot_info(&mut bin, isolinux_lba, "isolinux.bin")?;
            isolinux = bin;
            catalog = eltorito::catalog(Some(isolinux_lba), block(esp_start)?, esp_len);
            tables = hybrid::tables(b.mbr_code, isolinux_lba, size, esp_start, esp_len, seed)?;
        }
        None => {
            isolinux = Vec::new();
            catalog = eltorito::catalog(None, block(esp_start)?, esp_len);
            // A protective MBR without boot code: UEFI reads the GPT.
            tables = super::gpt::tables(size, esp_start, esp_len, seed);
        }
    }
    vol.files = files(with(&isolinux), &catalog, at);
    let extents = vol.write(&layout, block(esp_end)?);

    let mut disk = Disk::new(size);
    disk.put(0, tables.primary);
    disk.put(
        u64::from(BOOT_RECORD_LBA) * BLOCK,
        eltorito::boot_record(catalog_lba),
    );
    for e in extents {
        disk.put(e.offset, e.data);
    }
    disk.put(esp_start, esp.bytes);
    disk.put(tables.backup_at, tables.backup);
    Ok(disk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::uki::tests::fake_stub;
    use crate::image::{write_uki, UkiParts};

    pub(crate) fn fake_isolinux() -> Vec<u8> {
        let mut b = vec![0x90u8; 4096];
        b[64..68].copy_from_slice(&0x7078_c0fbu32.to_le_bytes());
        b
    }

    fn image(medium: Medium) -> (Vec<u8>, Vec<u8>) {
        let linux: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let initrd = vec![0x17u8; 7000];
        let parts = UkiParts {
            osrel: b"ID=osk\n",
            cmdline: b"console=ttyS0",
            uname: None,
            initrd: &initrd,
            linux: &linux,
        };
        let uki = write_uki(&fake_stub(), "stub", &parts).unwrap();
        let isolinux = fake_isolinux();
        let bios = BiosLoader {
            isolinux: &isolinux,
            ldlinux: b"ldlinux",
            mbr_code: &[0x33; 432],
        };
        let disk = hybrid_image(
            &uki,
            "console=ttyS0\nDEFAULT evil",
            Some(&bios),
            "EFI/BOOT/BOOTX64.EFI",
            medium,
            b"seed",
            0,
        )
        .unwrap();
        let mut v = Vec::new();
        disk.write_all(&mut v).unwrap();
        (v, uki)
    }

    #[test]
    fn kernel_and_initrd_are_the_ukis_sections_in_the_esp() {
        let (img, uki) = image(Medium::Cd);
        let read = |path: &[&str]| {
            let (lba, len) = iso9660::tests::lookup(&img, path).unwrap();
            img[lba * 2048..lba * 2048 + len].to_vec()
        };
        let linux: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        assert_eq!(read(&["BOOT", "VMLINUZ.;1"]), linux);
        assert_eq!(read(&["BOOT", "INITRD.IMG;1"]), vec![0x17u8; 7000]);
        let esp = read(&["BOOT", "ESP.IMG;1"]);
        assert!(esp.windows(uki.len()).any(|w| w == uki));
        let cfg = String::from_utf8(read(&["ISOLINUX", "ISOLINUX.CFG;1"])).unwrap();
        assert!(cfg.contains("APPEND console=ttyS0 DEFAULT evil\n"), "{cfg}");
        let bin = read(&["ISOLINUX", "ISOLINUX.BIN;1"]);
        let (lba, _) = iso9660::tests::lookup(&img, &["ISOLINUX", "ISOLINUX.BIN;1"]).unwrap();
        assert_eq!(
            u32::from_le_bytes(bin[12..16].try_into().unwrap()) as usize,
            lba
        );
        assert_eq!(img.len() % 2048, 0);
        assert_eq!(&img[img.len() - 512..img.len() - 504], b"EFI PART");
        assert_eq!(image(Medium::Cd).0, img);
    }

    #[test]
    fn disks_put_the_esp_at_a_mib_and_check_their_size() {
        let (img, _) = image(Medium::Disk(None));
        assert_eq!(img.len() as u64 % MIB, 0);
        assert_eq!(&img[MIB as usize + 82..MIB as usize + 90], b"FAT32   ");
        let (big, _) = image(Medium::Disk(Some(100 * MIB)));
        assert_eq!(big.len() as u64, 100 * MIB);
        let uki = write_uki(
            &fake_stub(),
            "stub",
            &UkiParts {
                osrel: b"",
                cmdline: b"",
                uname: None,
                initrd: b"i",
                linux: b"l",
            },
        )
        .unwrap();
        let isolinux = fake_isolinux();
        let bios = BiosLoader {
            isolinux: &isolinux,
            ldlinux: b"",
            mbr_code: &[0; 432],
        };
        let err = hybrid_image(
            &uki,
            "",
            Some(&bios),
            "EFI/BOOT/BOOTX64.EFI",
            Medium::Disk(Some(MIB)),
            b"",
            0,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("too small"), "{err}");
    }
}
