//! A minimal ISO 9660 writer for the metadata CD-ROM (`--data`).
//!
//! Debian 12 ships no ISO maker without extra packages, and the image is tiny
//! (one directory, two files), so osk writes it itself. Like LinuxKit's
//! metadata CD the volume is labelled `CIDATA` and the payload is stored as
//! both `config` (LinuxKit) and `user-data` (cloud-init NoCloud). Names are
//! stored upper-case as `CONFIG.;1`: Linux's default `map=normal` shows them
//! lower-case without the version, which is all the guest needs; no Rock
//! Ridge or Joliet. Timestamps come from SOURCE_DATE_EPOCH (else the epoch),
//! so the same data gives the same bytes.

use std::io::Write;
use std::path::Path;

use super::{Error, Result};
use crate::civil::Civil;

const SECTOR: usize = 2048;
const PVD_SECTOR: usize = 16;
const L_PATH_SECTOR: usize = 18;
const M_PATH_SECTOR: usize = 19;
const ROOT_SECTOR: usize = 20;
const FIRST_FILE_SECTOR: usize = 21;

/// Volume label; cloud-init's NoCloud also looks for it.
pub const VOLUME_ID: &str = "CIDATA";
/// File names the payload is stored under, as ISO 9660 identifiers.
const FILE_IDS: [&str; 2] = ["CONFIG.;1", "USER-DATA.;1"];

/// Builds the ISO image holding `data` as `config` and `user-data`.
pub fn metadata_iso(data: &[u8]) -> Vec<u8> {
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let date = civil(epoch);

    // Both names point at one extent: the payload is stored once.
    let data_sectors = data.len().div_ceil(SECTOR).max(1);
    let total_sectors = FIRST_FILE_SECTOR + data_sectors;
    let mut img = vec![0u8; total_sectors * SECTOR];

    // Root directory: ".", "..", then the files in identifier order.
    let mut root = Vec::new();
    root.extend(dir_record(&[0], ROOT_SECTOR, SECTOR, true, &date));
    root.extend(dir_record(&[1], ROOT_SECTOR, SECTOR, true, &date));
    let mut ids = FILE_IDS;
    ids.sort();
    for id in ids {
        root.extend(dir_record(
            id.as_bytes(),
            FIRST_FILE_SECTOR,
            data.len(),
            false,
            &date,
        ));
    }
    assert!(root.len() <= SECTOR, "root directory fits one sector");
    put(&mut img, ROOT_SECTOR * SECTOR, &root);

    // Path tables: a single entry for the root, little- then big-endian.
    let path_entry = |big: bool| {
        let mut e = vec![1u8, 0];
        let loc = ROOT_SECTOR as u32;
        e.extend(if big {
            loc.to_be_bytes()
        } else {
            loc.to_le_bytes()
        });
        e.extend(if big {
            1u16.to_be_bytes()
        } else {
            1u16.to_le_bytes()
        });
        e.extend([0, 0]); // root identifier and padding
        e
    };
    let l_path = path_entry(false);
    put(&mut img, L_PATH_SECTOR * SECTOR, &l_path);
    put(&mut img, M_PATH_SECTOR * SECTOR, &path_entry(true));

    put(&mut img, FIRST_FILE_SECTOR * SECTOR, data);

    let pvd = primary_volume_descriptor(total_sectors, l_path.len(), &date);
    put(&mut img, PVD_SECTOR * SECTOR, &pvd);
    // Volume descriptor set terminator.
    put(
        &mut img,
        (PVD_SECTOR + 1) * SECTOR,
        &[255, b'C', b'D', b'0', b'0', b'1', 1],
    );
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

fn primary_volume_descriptor(total_sectors: usize, path_table_len: usize, date: &Civil) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = 1;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    pad(&mut d[8..40], "LINUX");
    pad(&mut d[40..72], VOLUME_ID);
    both32(&mut d[80..88], total_sectors as u32);
    both16(&mut d[120..124], 1); // volume set size
    both16(&mut d[124..128], 1); // volume sequence number
    both16(&mut d[128..132], SECTOR as u16);
    both32(&mut d[132..140], path_table_len as u32);
    d[140..144].copy_from_slice(&(L_PATH_SECTOR as u32).to_le_bytes());
    d[148..152].copy_from_slice(&(M_PATH_SECTOR as u32).to_be_bytes());
    let root = dir_record(&[0], ROOT_SECTOR, SECTOR, true, date);
    d[156..190].copy_from_slice(&root);
    for range in [
        190..318,
        318..446,
        446..574,
        574..702,
        702..739,
        739..776,
        776..813,
    ] {
        pad(&mut d[range], "");
    }
    pad(&mut d[574..702], "OSK");
    let stamp = date.long_form();
    d[813..830].copy_from_slice(&stamp); // creation
    d[830..847].copy_from_slice(&stamp); // modification
    d[847..863].copy_from_slice(b"0000000000000000"); // never expires
    d[864..881].copy_from_slice(&stamp); // effective
    d[881] = 1; // file structure version
    d
}

fn dir_record(id: &[u8], sector: usize, len: usize, dir: bool, date: &Civil) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    both32(&mut r[2..10], sector as u32);
    both32(&mut r[10..18], len as u32);
    r[18..25].copy_from_slice(&date.short_form());
    r[25] = if dir { 2 } else { 0 };
    both16(&mut r[28..32], 1);
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

fn put(img: &mut [u8], at: usize, bytes: &[u8]) {
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

fn pad(field: &mut [u8], s: &str) {
    field.fill(b' ');
    field[..s.len()].copy_from_slice(s.as_bytes());
}

fn both16(field: &mut [u8], v: u16) {
    field[..2].copy_from_slice(&v.to_le_bytes());
    field[2..4].copy_from_slice(&v.to_be_bytes());
}

fn both32(field: &mut [u8], v: u32) {
    field[..4].copy_from_slice(&v.to_le_bytes());
    field[4..8].copy_from_slice(&v.to_be_bytes());
}

/// ISO 9660 date forms of a calendar time.
trait IsoDate {
    fn short_form(&self) -> [u8; 7];
    fn long_form(&self) -> [u8; 17];
}

impl IsoDate for Civil {
    /// Directory record form: years since 1900, month, day, h, m, s, UTC offset.
    fn short_form(&self) -> [u8; 7] {
        let y = (self.year - 1900).clamp(0, 255) as u8;
        [
            y,
            self.month as u8,
            self.day as u8,
            self.hour as u8,
            self.min as u8,
            self.sec as u8,
            0,
        ]
    }

    /// Volume descriptor form: "YYYYMMDDHHMMSScc" and a UTC offset byte.
    fn long_form(&self) -> [u8; 17] {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year.clamp(0, 9999),
            self.month,
            self.day,
            self.hour,
            self.min,
            self.sec
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(s.as_bytes());
        out
    }
}

/// Seconds since the Unix epoch to a UTC date (Howard Hinnant's days-from-civil inverse).
fn civil(epoch: i64) -> Civil {
    Civil::from_unix(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn civil_dates() {
        let d = civil(0);
        assert_eq!((d.year, d.month, d.day, d.hour), (1970, 1, 1, 0));
        // 2024-02-29T12:34:56Z
        let d = civil(1_709_210_096);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.min, d.sec),
            (2024, 2, 29, 12, 34, 56)
        );
        assert_eq!(&d.long_form()[..16], b"2024022912345600");
    }
}
