//! GPT disks: protective MBR, primary and backup tables, one EFI System Partition.

use super::{derive_id, Disk, ImageError, MIB};

const SECTOR: u64 = 512;
/// The ESP starts at 1 MiB, the alignment every partitioning tool uses.
pub const ESP_START: u64 = MIB;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
/// C12A7328-F81F-11D2-BA4B-00A0C93EC93B in GPT's mixed-endian order.
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// A GUID derived from `seed` and `name`, marked as version 4, RFC 4122 variant.
fn guid(seed: &[u8], name: &str) -> [u8; 16] {
    let mut g = derive_id(seed, name);
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// The smallest disk for an ESP of `esp_len` bytes: 1 MiB before it, 1 MiB after it for the backup table.
pub fn min_disk_size(esp_len: u64) -> u64 {
    ESP_START + esp_len.div_ceil(MIB) * MIB + MIB
}

/// A GPT disk of `size` bytes (default: just large enough) with `esp` as its only
/// partition; the rest stays free. `seed` derives the disk and partition GUIDs.
pub fn efi_disk(esp: Vec<u8>, seed: &[u8], size: Option<u64>) -> Result<Disk, ImageError> {
    let needed = min_disk_size(esp.len() as u64);
    let size = match size {
        None => needed,
        Some(s) if s < needed => return Err(ImageError::DiskTooSmall { given: s, needed }),
        Some(s) => s.div_ceil(MIB) * MIB,
    };
    let t = tables(size, ESP_START, esp.len() as u64, seed);
    let mut disk = Disk::new(size);
    disk.put(0, t.primary);
    disk.put(ESP_START, esp);
    disk.put(t.backup_at, t.backup);
    Ok(disk)
}

/// Bytes the backup table takes at a disk's end: the entries, then the header.
pub const BACKUP_LEN: u64 = (ENTRY_SECTORS + 1) * SECTOR;

/// A disk's partition tables, to place around its contents.
pub struct Tables {
    /// Protective MBR, primary header and entries: the disk's first 17 KiB.
    pub primary: Vec<u8>,
    /// Backup entries and header, to go at `backup_at`.
    pub backup: Vec<u8>,
    pub backup_at: u64,
}

/// The protective MBR and GPT of a disk of `size` bytes (a multiple of 512)
/// whose one partition, the ESP, spans `esp_len` bytes at `esp_start`.
pub fn tables(size: u64, esp_start: u64, esp_len: u64, seed: &[u8]) -> Tables {
    let sectors = size / SECTOR;
    let last = sectors - 1;
    let esp_first = esp_start / SECTOR;
    let esp_last = esp_first + esp_len.div_ceil(SECTOR) - 1;
    assert!(
        esp_first >= 2 + ENTRY_SECTORS && esp_last < last - ENTRY_SECTORS,
        "ESP outside the usable sectors"
    );

    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    entries[..16].copy_from_slice(&ESP_TYPE);
    entries[16..32].copy_from_slice(&guid(seed, "esp"));
    entries[32..40].copy_from_slice(&esp_first.to_le_bytes());
    entries[40..48].copy_from_slice(&esp_last.to_le_bytes());
    for (i, u) in "EFI System Partition".encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);
    let disk_guid = guid(seed, "disk");
    let header = |mine: u64, other: u64, table: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&mine.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(last - 1 - ENTRY_SECTORS).to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid);
        h[72..80].copy_from_slice(&table.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };

    let mut mbr = vec![0u8; SECTOR as usize];
    let p = 446;
    mbr[p + 1..p + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[p + 4] = 0xee;
    mbr[p + 5..p + 8].copy_from_slice(&[0xff, 0xff, 0xff]);
    mbr[p + 8..p + 12].copy_from_slice(&1u32.to_le_bytes());
    mbr[p + 12..p + 16].copy_from_slice(&(u32::try_from(last).unwrap_or(u32::MAX)).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;

    let mut primary = mbr;
    primary.extend(header(1, last, 2));
    primary.extend_from_slice(&entries);
    let mut backup = entries;
    backup.extend(header(last, 1, last - ENTRY_SECTORS));
    Tables {
        primary,
        backup,
        backup_at: (last - ENTRY_SECTORS) * SECTOR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_point_at_each_other_with_valid_crcs() {
        let disk = efi_disk(vec![1u8; 3 * MIB as usize], b"seed", None).unwrap();
        assert_eq!(disk.size, 5 * MIB);
        let mut h = [0u8; 512];
        disk.read_at(512, &mut h);
        assert_eq!(&h[..8], b"EFI PART");
        let crc = u32::from_le_bytes(h[16..20].try_into().unwrap());
        let mut z = h;
        z[16..20].fill(0);
        assert_eq!(crc32fast::hash(&z[..92]), crc);
        let backup_lba = u64::from_le_bytes(h[32..40].try_into().unwrap());
        let mut b = [0u8; 512];
        disk.read_at(backup_lba * 512, &mut b);
        assert_eq!(&b[..8], b"EFI PART");
        assert_eq!(u64::from_le_bytes(b[32..40].try_into().unwrap()), 1);
        assert_eq!(h[56..72], b[56..72]);
        assert_eq!(
            disk,
            efi_disk(vec![1u8; 3 * MIB as usize], b"seed", None).unwrap()
        );
    }

    #[test]
    fn size_too_small_names_the_need_and_larger_rounds_to_mib() {
        let err = efi_disk(vec![0; 100], b"", Some(MIB))
            .unwrap_err()
            .to_string();
        assert!(err.contains("3145728 bytes (3 MiB)"), "{err}");
        let d = efi_disk(vec![0; 100], b"", Some(10 * MIB + 1)).unwrap();
        assert_eq!(d.size, 11 * MIB);
    }
}
