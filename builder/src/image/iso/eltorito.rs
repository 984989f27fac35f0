//! El Torito: the boot record, a catalog with a BIOS and a UEFI entry, and isolinux's boot info table.

use super::super::ImageError;
use super::iso9660::{BLOCK, PVD_LBA};

/// The boot record volume descriptor, pointing at the catalog's block.
pub fn boot_record(catalog_lba: u32) -> Vec<u8> {
    let mut d = vec![0u8; BLOCK as usize];
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    let id = b"EL TORITO SPECIFICATION";
    d[7..7 + id.len()].copy_from_slice(id);
    d[71..75].copy_from_slice(&catalog_lba.to_le_bytes());
    d
}

/// Sectors of 512 bytes that BIOSes load of a no-emulation image: isolinux.bin loads the rest itself.
const BIOS_LOAD_SECTORS: u16 = 4;

/// UEFI's El Torito platform id.
const PLATFORM_EFI: u8 = 0xef;

/// The boot catalog: a BIOS no-emulation entry for `bios_lba` (isolinux.bin)
/// and a UEFI section whose entry is the FAT image of `efi_len` bytes at
/// `efi_lba`. Without `bios_lba` (UEFI-only), the FAT image is the default
/// entry and the catalog's platform is UEFI.
pub fn catalog(bios_lba: Option<u32>, efi_lba: u32, efi_len: u64) -> Vec<u8> {
    let mut c = vec![0u8; BLOCK as usize];
    // The count is 16 bits; above it 0 makes EDK2 take the image up to the volume's end.
    let efi_sectors = u16::try_from(efi_len.div_ceil(512)).unwrap_or(0);
    // Validation entry: header, platform (x86: 0), then a checksum making the 16 words sum to 0.
    c[0] = 1;
    if bios_lba.is_none() {
        c[1] = PLATFORM_EFI;
    }
    c[4..7].copy_from_slice(b"OSK");
    c[30] = 0x55;
    c[31] = 0xaa;
    let sum = (0..16).fold(0u16, |s, i| {
        s.wrapping_add(u16::from_le_bytes([c[2 * i], c[2 * i + 1]]))
    });
    c[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    let Some(bios_lba) = bios_lba else {
        // Default entry: the ESP, bootable, no emulation.
        let e = &mut c[32..64];
        e[0] = 0x88;
        e[6..8].copy_from_slice(&efi_sectors.to_le_bytes());
        e[8..12].copy_from_slice(&efi_lba.to_le_bytes());
        return c;
    };
    // Default entry: bootable, no emulation, loaded at the default segment.
    let e = &mut c[32..64];
    e[0] = 0x88;
    e[6..8].copy_from_slice(&BIOS_LOAD_SECTORS.to_le_bytes());
    e[8..12].copy_from_slice(&bios_lba.to_le_bytes());
    // The last section header: platform EFI, one entry.
    let h = &mut c[64..96];
    h[0] = 0x91;
    h[1] = PLATFORM_EFI;
    h[2..4].copy_from_slice(&1u16.to_le_bytes());
    let e = &mut c[96..128];
    e[0] = 0x88;
    e[6..8].copy_from_slice(&efi_sectors.to_le_bytes());
    e[8..12].copy_from_slice(&efi_lba.to_le_bytes());
    c
}

/// isolinux.bin's mark at byte 64 that it can also start from a hard disk's MBR.
const HYBRID_MAGIC: u32 = 0x7078_c0fb;

/// Fills the boot info table (bytes 8..64) of isolinux.bin, stored at `file_lba`:
/// where the volume and the file are, the file's length, and its checksum.
pub fn patch_boot_info(isolinux: &mut [u8], file_lba: u32, name: &str) -> Result<(), ImageError> {
    let bad = |reason: &str| ImageError::BootFile {
        path: name.to_string(),
        reason: reason.to_string(),
    };
    if isolinux.len() < 2048 || !isolinux.len().is_multiple_of(4) {
        return Err(bad(
            "is not isolinux.bin (under 2 KiB or not whole 32-bit words)",
        ));
    }
    if u32::from_le_bytes(isolinux[64..68].try_into().expect("4 bytes")) != HYBRID_MAGIC {
        return Err(bad(
            "has no isohybrid mark at byte 64: not syslinux 4 or later's isolinux.bin",
        ));
    }
    let sum = isolinux[64..].chunks(4).fold(0u32, |s, w| {
        s.wrapping_add(u32::from_le_bytes(w.try_into().expect("4 bytes")))
    });
    isolinux[8..64].fill(0);
    isolinux[8..12].copy_from_slice(&PVD_LBA.to_le_bytes());
    isolinux[12..16].copy_from_slice(&file_lba.to_le_bytes());
    let len = isolinux.len() as u32;
    isolinux[16..20].copy_from_slice(&len.to_le_bytes());
    isolinux[20..24].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_validates_and_names_both_images() {
        let c = catalog(Some(30), 40, 100 << 20);
        let sum = (0..16).fold(0u16, |s, i| {
            s.wrapping_add(u16::from_le_bytes([c[2 * i], c[2 * i + 1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(&c[30..32], &[0x55, 0xaa]);
        assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 30);
        assert_eq!(c[65], 0xef);
        assert_eq!(u32::from_le_bytes(c[104..108].try_into().unwrap()), 40);
        assert_eq!(&c[102..104], &[0, 0]);
        assert_eq!(
            catalog(Some(30), 40, 1 << 20)[102..104],
            2048u16.to_le_bytes()
        );
        assert_eq!(&boot_record(33)[71..75], &33u32.to_le_bytes());
    }

    #[test]
    fn a_uefi_only_catalog_defaults_to_the_esp() {
        let c = catalog(None, 40, 1 << 20);
        let sum = (0..16).fold(0u16, |s, i| {
            s.wrapping_add(u16::from_le_bytes([c[2 * i], c[2 * i + 1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(c[1], 0xef);
        assert_eq!(c[32], 0x88);
        assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 40);
        assert_eq!(c[38..40], 2048u16.to_le_bytes());
        assert!(c[64..].iter().all(|&b| b == 0), "no BIOS section");
    }

    #[test]
    fn boot_info_table_sums_the_file_past_64() {
        let mut f = vec![0u8; 4096];
        f[64..68].copy_from_slice(&HYBRID_MAGIC.to_le_bytes());
        f[100] = 5;
        f[20] = 0xaa;
        patch_boot_info(&mut f, 77, "isolinux.bin").unwrap();
        assert_eq!(&f[8..12], &16u32.to_le_bytes());
        assert_eq!(&f[12..16], &77u32.to_le_bytes());
        assert_eq!(&f[16..20], &4096u32.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(f[20..24].try_into().unwrap()),
            HYBRID_MAGIC.wrapping_add(5)
        );
        let err = patch_boot_info(&mut vec![0u8; 4096], 1, "x.bin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.bin") && err.contains("isohybrid"), "{err}");
    }
}
