//! The disk half of a hybrid image: syslinux's isohdpfx MBR code, pointed at
//! isolinux.bin, over a protective MBR and a GPT whose one partition is the ESP.
//!
//! A BIOS runs the MBR code, which loads isolinux.bin from the ISO 9660
//! volume at the disk's start; UEFI firmware reads the GPT and boots the ESP.
//! The MBR's only entry is the protective 0xEE one, without a boot flag, as
//! the UEFI specification asks; `sgdisk -v` sees a plain GPT disk.

use super::super::gpt::{self, Tables};
use super::super::{derive_id, ImageError};

/// Bytes of MBR code in isohdpfx.bin; the LBA, disk signature and partition table follow.
pub const MBR_CODE_LEN: usize = 432;

/// The partition tables of a `size`-byte hybrid disk: the ESP at `esp_start`,
/// and `mbr_code` (isohdpfx.bin) loading isolinux.bin from 2 KiB block `isolinux_lba`.
pub fn tables(
    mbr_code: &[u8],
    isolinux_lba: u32,
    size: u64,
    esp_start: u64,
    esp_len: u64,
    seed: &[u8],
) -> Result<Tables, ImageError> {
    if mbr_code.len() != MBR_CODE_LEN {
        return Err(ImageError::BootFile {
            path: "isohdpfx.bin".into(),
            reason: format!(
                "is {} bytes, not the {MBR_CODE_LEN} of syslinux's isohybrid MBR code",
                mbr_code.len()
            ),
        });
    }
    let mut t = gpt::tables(size, esp_start, esp_len, seed);
    let mbr = &mut t.primary[..512];
    mbr[..MBR_CODE_LEN].copy_from_slice(mbr_code);
    // isolinux.bin's place in 512-byte sectors, as a 64-bit number.
    mbr[432..440].copy_from_slice(&(u64::from(isolinux_lba) * 4).to_le_bytes());
    mbr[440..444].copy_from_slice(&derive_id(seed, "mbr-signature")[..4]);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_code_and_boot_lba_over_a_protective_entry() {
        let code = [0x33u8; MBR_CODE_LEN];
        let t = tables(&code, 40, 8 << 20, 1 << 20, 4 << 20, b"s").unwrap();
        let mbr = &t.primary[..512];
        assert_eq!(&mbr[..432], &code[..]);
        assert_eq!(u64::from_le_bytes(mbr[432..440].try_into().unwrap()), 160);
        assert_eq!(mbr[446], 0);
        assert_eq!(mbr[450], 0xee);
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
        assert_eq!(&t.primary[512..520], b"EFI PART");
        let err = tables(&[0; 10], 40, 8 << 20, 1 << 20, 4 << 20, b"s")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("isohdpfx.bin"), "{err}");
    }
}
