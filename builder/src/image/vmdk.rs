//! streamOptimized VMDK (vSphere, OVF): deflated 64 KiB grains, grain tables and directory at the end.

use std::io::{self, Write};

use flate2::write::ZlibEncoder;

use super::Disk;

const SECTOR: u64 = 512;
const GRAIN_SECTORS: u64 = 128;
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
const GT_ENTRIES: u64 = 512;
/// Newline detection valid, compressed grains, markers.
const FLAGS: u32 = 0x0003_0001;
const GD_AT_END: u64 = u64::MAX;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// Writes `disk` as a streamOptimized VMDK; `cid` (from the content) names this version of the disk.
pub fn write_vmdk(disk: &Disk, name: &str, cid: u32, w: &mut impl Write) -> io::Result<()> {
    let capacity = disk.size.div_ceil(SECTOR);
    let descriptor = descriptor(name, capacity, cid);
    let desc_sectors = (descriptor.len() as u64).div_ceil(SECTOR).max(20);
    let overhead = 1 + desc_sectors;
    let mut out = Counted { w, at: 0 };
    out.write_all(&header(capacity, desc_sectors, overhead, GD_AT_END))?;
    let mut d = descriptor.into_bytes();
    d.resize((desc_sectors * SECTOR) as usize, 0);
    out.write_all(&d)?;

    let grains = disk.size.div_ceil(GRAIN);
    let tables = grains.div_ceil(GT_ENTRIES);
    let mut gt = vec![0u32; (tables * GT_ENTRIES) as usize];
    let mut buf = vec![0u8; GRAIN as usize];
    for g in 0..grains {
        let len = GRAIN.min(disk.size - g * GRAIN);
        if !disk.has_data(g * GRAIN, len) {
            continue;
        }
        disk.read_at(g * GRAIN, &mut buf[..len as usize]);
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&buf[..len as usize])?;
        let z = z.finish()?;
        gt[g as usize] = sector_of(out.at)?;
        let mut rec = Vec::with_capacity(z.len() + 12 + SECTOR as usize);
        rec.extend_from_slice(&(g * GRAIN_SECTORS).to_le_bytes());
        rec.extend_from_slice(&(z.len() as u32).to_le_bytes());
        rec.extend_from_slice(&z);
        rec.resize(rec.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
        out.write_all(&rec)?;
    }
    let gt_sectors = GT_ENTRIES * 4 / SECTOR;
    let mut gd = Vec::with_capacity(tables as usize);
    for t in gt.chunks(GT_ENTRIES as usize) {
        out.write_all(&marker(gt_sectors, MARKER_GT))?;
        gd.push(sector_of(out.at)?);
        let bytes: Vec<u8> = t.iter().flat_map(|e| e.to_le_bytes()).collect();
        out.write_all(&bytes)?;
    }
    let gd_sectors = (tables * 4).div_ceil(SECTOR);
    out.write_all(&marker(gd_sectors, MARKER_GD))?;
    let gd_at = out.at / SECTOR;
    let mut bytes: Vec<u8> = gd.iter().flat_map(|e| e.to_le_bytes()).collect();
    bytes.resize((gd_sectors * SECTOR) as usize, 0);
    out.write_all(&bytes)?;
    out.write_all(&marker(1, MARKER_FOOTER))?;
    out.write_all(&header(capacity, desc_sectors, overhead, gd_at))?;
    out.write_all(&marker(0, MARKER_EOS))?;
    out.w.flush()
}

fn sector_of(offset: u64) -> io::Result<u32> {
    u32::try_from(offset / SECTOR)
        .map_err(|_| io::Error::other("VMDK larger than 2 TiB of sectors"))
}

struct Counted<'a, W> {
    w: &'a mut W,
    at: u64,
}

impl<W: Write> Counted<'_, W> {
    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.at += b.len() as u64;
        Ok(())
    }
}

fn header(capacity: u64, desc_sectors: u64, overhead: u64, gd: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&desc_sectors.to_le_bytes());
    h[44..48].copy_from_slice(&(GT_ENTRIES as u32).to_le_bytes());
    h[56..64].copy_from_slice(&gd.to_le_bytes());
    h[64..72].copy_from_slice(&overhead.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

fn marker(sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn descriptor(name: &str, capacity: u64, cid: u32) -> String {
    let cylinders = (capacity / (255 * 63)).clamp(1, 65_535);
    format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
         # Extent description\nRW {capacity} SPARSE \"{name}\"\n\n\
         # The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"lsilogic\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ends_with_footer_and_eos() {
        let mut disk = Disk::new(1 << 20);
        disk.put(0, vec![7; 1000]);
        let mut out = Vec::new();
        write_vmdk(&disk, "x.vmdk", 1, &mut out).unwrap();
        assert_eq!(out.len() % 512, 0);
        assert_eq!(&out[..4], b"KDMV");
        let n = out.len();
        assert_eq!(&out[n - 512..], &[0u8; 512][..]);
        let footer = &out[n - 1024..n - 512];
        assert_eq!(&footer[..4], b"KDMV");
        let gd = u64::from_le_bytes(footer[56..64].try_into().unwrap());
        assert_ne!(gd, GD_AT_END);
        let mut again = Vec::new();
        write_vmdk(&disk, "x.vmdk", 1, &mut again).unwrap();
        assert_eq!(out, again);
    }
}
