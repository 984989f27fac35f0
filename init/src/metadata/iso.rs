//! A read-only ISO 9660 reader: the volume label and files by path, read
//! straight from a block device so no `isofs` module and no mount is needed.
//!
//! Names match the way Linux shows them with its default `map=normal`: the
//! `;1` version and a trailing `.` dropped, case ignored (`CONFIG.;1` is
//! `config`). A Rock Ridge `NM` name, when present, wins. Joliet trees are
//! not read: the primary tree always exists beside them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Where the volume descriptors start, in 2048-byte sectors.
const DESCRIPTORS_SECTOR: u64 = 16;
const SECTOR: u64 = 2048;
/// No metadata file is this large; a bigger extent means a corrupt image.
const MAX_FILE: u64 = 16 << 20;
/// Deeper paths than this are not followed (loops in a crafted image).
const MAX_DEPTH: usize = 8;

/// Bytes at an offset: a block device, a file, or an image in memory.
pub trait Medium {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Medium for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl Medium for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("reading the image: {0}")]
    Io(#[from] io::Error),
    #[error("not an ISO 9660 image (no CD001 primary volume descriptor at sector 16)")]
    NotIso,
    #[error("corrupt ISO 9660 image: {0}")]
    Corrupt(&'static str),
}

/// A directory entry's location.
#[derive(Debug, Clone, Copy)]
struct Extent {
    sector: u64,
    len: u64,
    dir: bool,
}

/// An opened ISO 9660 volume.
pub struct Iso<'m, M: Medium + ?Sized> {
    medium: &'m M,
    block: u64,
    /// The volume identifier, trailing spaces removed.
    pub label: String,
    root: Extent,
}

impl<'m, M: Medium + ?Sized> Iso<'m, M> {
    /// Reads the primary volume descriptor.
    pub fn open(medium: &'m M) -> Result<Self, IsoError> {
        let mut d = [0u8; SECTOR as usize];
        // The set ends with type 255; a handful of descriptors is all real images have.
        for i in 0..16 {
            if medium
                .read_at(&mut d, (DESCRIPTORS_SECTOR + i) * SECTOR)
                .is_err()
            {
                return Err(IsoError::NotIso);
            }
            if &d[1..6] != b"CD001" || d[0] == 255 {
                return Err(IsoError::NotIso);
            }
            if d[0] == 1 {
                let block = u64::from(u16::from_le_bytes([d[128], d[129]]));
                if !(512..=SECTOR).contains(&block) || !block.is_power_of_two() {
                    return Err(IsoError::Corrupt("logical block size"));
                }
                let label = String::from_utf8_lossy(&d[40..72]).trim_end().to_string();
                let root = record(&d[156..190]).ok_or(IsoError::Corrupt("root record"))?;
                return Ok(Iso {
                    medium,
                    block,
                    label,
                    root: root.1,
                });
            }
        }
        Err(IsoError::NotIso)
    }

    /// The contents of the file at `path` (`/`-separated, matched as the
    /// module doc says), or `None` when it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>, IsoError> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.is_empty() || parts.len() > MAX_DEPTH {
            return Ok(None);
        }
        let mut at = self.root;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            match self.lookup(at, part)? {
                Some(e) if e.dir != last => at = e,
                _ => return Ok(None),
            }
        }
        if at.len > MAX_FILE {
            return Err(IsoError::Corrupt("file larger than 16 MiB"));
        }
        let mut data = vec![0u8; at.len as usize];
        self.medium.read_at(&mut data, at.sector * self.block)?;
        Ok(Some(data))
    }

    fn lookup(&self, dir: Extent, name: &str) -> Result<Option<Extent>, IsoError> {
        if dir.len > MAX_FILE {
            return Err(IsoError::Corrupt("directory larger than 16 MiB"));
        }
        let mut buf = vec![0u8; dir.len as usize];
        self.medium.read_at(&mut buf, dir.sector * self.block)?;
        let mut off = 0usize;
        while off < buf.len() {
            let len = usize::from(buf[off]);
            if len == 0 {
                // Records never cross a sector: the rest of this one is padding.
                off = (off / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            let rec = buf
                .get(off..off + len)
                .ok_or(IsoError::Corrupt("directory record past its directory"))?;
            if let Some((id, extent)) = record(rec) {
                if id.eq_ignore_ascii_case(name) {
                    return Ok(Some(extent));
                }
            }
            off += len;
        }
        Ok(None)
    }
}

/// A directory record's display name and extent; `None` for `.`, `..` and
/// records too short to be real.
fn record(rec: &[u8]) -> Option<(String, Extent)> {
    if rec.len() < 34 {
        return None;
    }
    let id_len = usize::from(rec[32]);
    let id = rec.get(33..33 + id_len)?;
    if id == [0] || id == [1] {
        // `.` and `..`: still a valid root record in the descriptor.
        let extent = extent(rec);
        return Some((String::new(), extent));
    }
    // The system use area starts after the identifier, padded to even.
    let su_start = 33 + id_len + (1 - id_len % 2);
    let name = rec
        .get(su_start..)
        .and_then(rock_ridge_name)
        .unwrap_or_else(|| plain_name(id));
    Some((name, extent(rec)))
}

fn extent(rec: &[u8]) -> Extent {
    let le32 = |o: usize| u64::from(u32::from_le_bytes(rec[o..o + 4].try_into().unwrap()));
    Extent {
        sector: le32(2),
        len: le32(10),
        dir: rec[25] & 2 != 0,
    }
}

/// `CONFIG.;1` → `CONFIG`, `META_DATA.JSON;1` → `META_DATA.JSON`.
fn plain_name(id: &[u8]) -> String {
    let s = String::from_utf8_lossy(id);
    let s = s.split(';').next().unwrap_or_default();
    s.strip_suffix('.').unwrap_or(s).to_string()
}

/// The Rock Ridge alternate name (`NM` entries, concatenated) in a system
/// use area. Continuation areas (`CE`) are not followed: short names never
/// need them.
fn rock_ridge_name(mut su: &[u8]) -> Option<String> {
    let mut name = Vec::new();
    let mut found = false;
    while su.len() >= 4 {
        let len = usize::from(su[2]);
        if len < 4 || len > su.len() {
            break;
        }
        if &su[..2] == b"NM" && len >= 5 {
            // Flags bit 1/2: the entry means `.`/`..`; not a name.
            if su[4] & 0b110 == 0 {
                name.extend_from_slice(&su[5..len]);
                found = true;
            }
        }
        su = &su[len..];
    }
    found.then(|| String::from_utf8_lossy(&name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::super::testiso::{Entry, IsoBuilder};
    use super::*;

    #[test]
    fn reads_label_and_files_the_way_osk_run_writes_them() {
        let img = IsoBuilder::new("CIDATA")
            .file("CONFIG.;1", b"{}")
            .file("USER-DATA.;1", b"#cloud-config\n")
            .build();
        let iso = Iso::open(img.as_slice()).unwrap();
        assert_eq!(iso.label, "CIDATA");
        assert_eq!(iso.read("config").unwrap().unwrap(), b"{}");
        assert_eq!(iso.read("/user-data").unwrap().unwrap(), b"#cloud-config\n");
        assert_eq!(iso.read("meta-data").unwrap(), None);
        // A file is not a directory.
        assert_eq!(iso.read("config/x").unwrap(), None);
    }

    #[test]
    fn walks_directories_and_prefers_rock_ridge_names() {
        let img = IsoBuilder::new("config-2")
            .dir(
                "OPENSTACK",
                vec![Entry::dir(
                    "LATEST",
                    vec![
                        Entry::file("META_DATA.JSON;1", b"{\"hostname\":\"h\"}"),
                        Entry::file("USER_DAT.;1", b"payload").rock_ridge("user_data"),
                    ],
                )],
            )
            .build();
        let iso = Iso::open(img.as_slice()).unwrap();
        assert_eq!(iso.label, "config-2");
        assert_eq!(
            iso.read("openstack/latest/meta_data.json")
                .unwrap()
                .unwrap(),
            b"{\"hostname\":\"h\"}"
        );
        assert_eq!(
            iso.read("openstack/latest/user_data").unwrap().unwrap(),
            b"payload"
        );
        // The 9660 name is hidden behind the Rock Ridge one.
        assert_eq!(iso.read("openstack/latest/user_dat").unwrap(), None);
        // A directory is not a file.
        assert_eq!(iso.read("openstack/latest").unwrap(), None);
    }

    #[test]
    fn lowercase_identifiers_match_too() {
        let img = IsoBuilder::new("cidata").file("user-data", b"x").build();
        let iso = Iso::open(img.as_slice()).unwrap();
        assert_eq!(iso.read("USER-DATA").unwrap().unwrap(), b"x");
    }

    #[test]
    fn rejects_what_is_not_iso_9660() {
        let blank = vec![0u8; 64 * 1024];
        assert!(matches!(Iso::open(blank.as_slice()), Err(IsoError::NotIso)));
        let short = vec![0u8; 100];
        assert!(matches!(Iso::open(short.as_slice()), Err(IsoError::NotIso)));
    }

    #[test]
    fn a_corrupt_extent_is_an_error_not_a_panic() {
        let mut img = IsoBuilder::new("CIDATA").file("CONFIG.;1", b"abc").build();
        // Point the file's extent far past the end of the image.
        let pvd = 16 * 2048;
        let root = u32::from_le_bytes(img[pvd + 158..pvd + 162].try_into().unwrap());
        let mut off = root as usize * 2048;
        while img[off] != 0 {
            let len = img[off] as usize;
            if img[off + 33] == b'C' {
                img[off + 2..off + 6].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
            }
            off += len;
        }
        let iso = Iso::open(img.as_slice()).unwrap();
        assert!(matches!(iso.read("config"), Err(IsoError::Io(_))));
    }
}
