//! The metadata CD-ROM (`--data`): a tiny ISO 9660 volume.
//!
//! Written by osk's own ISO 9660 writer (the one the bootable ISO uses). Like LinuxKit's
//! metadata CD the volume is labelled `CIDATA` and the payload is stored as
//! both `config` (LinuxKit) and `user-data` (cloud-init NoCloud). Names are
//! stored upper-case as `CONFIG.;1`: Linux's default `map=normal` shows them
//! lower-case without the version, which is all the guest needs; no Rock
//! Ridge or Joliet. Timestamps come from SOURCE_DATE_EPOCH (else the epoch),
//! so the same data gives the same bytes.

use std::io::Write;
use std::path::Path;

use super::{Error, Result};
use crate::image::iso::iso9660::{Data, IsoFile, Volume, BLOCK};
use crate::image::Disk;

/// Volume label; cloud-init's NoCloud also looks for it.
pub const VOLUME_ID: &str = "CIDATA";
/// File names the payload is stored under.
const FILE_NAMES: [&str; 2] = ["config", "user-data"];

/// Builds the ISO image holding `data` as `config` and `user-data`.
pub fn metadata_iso(data: &[u8]) -> Vec<u8> {
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    // Both names point at one extent: the payload is stored once.
    let vol = Volume {
        label: VOLUME_ID,
        mtime: epoch,
        files: FILE_NAMES
            .iter()
            .map(|path| IsoFile {
                path,
                data: Data::Stored(data),
            })
            .collect(),
        boot_record: false,
    };
    let layout = vol.layout().expect("fixed names are valid");
    // At least one data block, as before, so an empty payload still has an extent.
    let blocks = layout.end.max(layout.stored_lba(0).unwrap_or(0) + 1);
    let mut disk = Disk::new(u64::from(blocks) * BLOCK);
    for e in vol.write(&layout, blocks) {
        disk.put(e.offset, e.data);
    }
    let mut img = Vec::new();
    disk.write_all(&mut img).expect("writing to memory");
    img
}

/// Writes [`metadata_iso`] of `data` to `path` (through a temp file and rename).
pub fn write_metadata_iso(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(Error::io(dir))?;
    tmp.write_all(&metadata_iso(data))
        .map_err(Error::io(tmp.path()))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTOR: usize = BLOCK as usize;
    const PVD_SECTOR: usize = 16;
    const FIRST_FILE_SECTOR: usize = 21;

    fn le32(b: &[u8]) -> usize {
        u32::from_le_bytes(b[..4].try_into().unwrap()) as usize
    }

    /// Walks the image the way a reader does: PVD → root record → directory → files.
    fn read_files(img: &[u8]) -> Vec<(String, Vec<u8>)> {
        let pvd = &img[PVD_SECTOR * SECTOR..][..SECTOR];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(&pvd[40..46], VOLUME_ID.as_bytes());
        assert_eq!(le32(&pvd[80..]) * SECTOR, img.len());
        assert_eq!(&img[17 * SECTOR..][..6], b"\xffCD001");
        let root = &pvd[156..190];
        let dir = &img[le32(&root[2..]) * SECTOR..][..le32(&root[10..])];
        let mut out = Vec::new();
        let mut off = 0;
        while off < dir.len() && dir[off] != 0 {
            let rec = &dir[off..off + dir[off] as usize];
            let id = &rec[33..33 + rec[32] as usize];
            if rec[25] & 2 == 0 {
                let data = img[le32(&rec[2..]) * SECTOR..][..le32(&rec[10..])].to_vec();
                out.push((String::from_utf8(id.to_vec()).unwrap(), data));
            }
            off += rec.len();
        }
        out
    }

    #[test]
    fn holds_config_and_user_data() {
        let img = metadata_iso(b"{\"hostname\":\"x\"}");
        let files = read_files(&img);
        assert_eq!(
            files,
            [
                ("CONFIG.;1".to_string(), b"{\"hostname\":\"x\"}".to_vec()),
                ("USER-DATA.;1".to_string(), b"{\"hostname\":\"x\"}".to_vec()),
            ]
        );
    }

    #[test]
    fn large_and_empty_payloads() {
        let big = vec![7u8; 5000];
        let img = metadata_iso(&big);
        assert_eq!(read_files(&img)[0].1, big);
        assert_eq!(img.len(), (FIRST_FILE_SECTOR + 3) * SECTOR);
        assert_eq!(read_files(&metadata_iso(b""))[1].1, b"");
    }

    #[test]
    fn same_data_same_bytes() {
        assert_eq!(metadata_iso(b"a"), metadata_iso(b"a"));
    }
}
