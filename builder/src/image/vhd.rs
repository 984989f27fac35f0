//! Fixed VHD (Hyper-V, Azure): the raw disk followed by a 512-byte footer.

use std::fs::File;
use std::io::{self, Write};

use super::{derive_id, Disk};

/// Seconds from the Unix epoch to VHD's, 2000-01-01.
const VHD_EPOCH: u32 = 946_684_800;

/// Writes the disk, sparse, then its footer; Azure needs the size MiB-aligned, as [`Disk`]s are.
pub fn write_vhd(disk: &Disk, seed: &[u8], mtime: u32, f: &mut File) -> io::Result<()> {
    disk.write_sparse(f)?;
    f.write_all(&footer(disk.size, seed, mtime))
}

fn footer(size: u64, seed: &[u8], mtime: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..8].copy_from_slice(b"conectix");
    b[8..12].copy_from_slice(&2u32.to_be_bytes());
    b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    b[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    b[24..28].copy_from_slice(&mtime.saturating_sub(VHD_EPOCH).to_be_bytes());
    // Hyper-V's creator: readers (QEMU, Azure) then take the size field, not the
    // geometry, which cannot express every MiB-aligned size.
    b[28..32].copy_from_slice(b"win ");
    b[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    b[36..40].copy_from_slice(b"Wi2k");
    b[40..48].copy_from_slice(&size.to_be_bytes());
    b[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size / 512);
    b[56..58].copy_from_slice(&c.to_be_bytes());
    b[58] = h;
    b[59] = s;
    b[60..64].copy_from_slice(&2u32.to_be_bytes());
    b[68..84].copy_from_slice(&derive_id(seed, "vhd"));
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[64..68].copy_from_slice(&(!sum).to_be_bytes());
    b
}

/// The VHD specification's CHS for a sector count.
fn geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(65_535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65_535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_checksum_and_fields() {
        let f = footer(64 << 20, b"s", 0);
        assert_eq!(&f[..8], b"conectix");
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let sum: u32 = f
            .iter()
            .enumerate()
            .filter(|(i, _)| !(64..68).contains(i))
            .map(|(_, &x)| u32::from(x))
            .sum();
        assert_eq!(stored, !sum);
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 64 << 20);
        assert_eq!(footer(64 << 20, b"s", 0), f);
    }

    #[test]
    fn geometry_covers_the_disk() {
        let (c, h, s) = geometry(131_072);
        assert!(u64::from(c) * u64::from(h) * u64::from(s) <= 131_072);
        assert!(u64::from(c) * u64::from(h) * u64::from(s) > 120_000);
    }
}
