//! A write-once FAT32 file system (an EFI System Partition, a Pi's boot
//! partition), laid out deterministically; names that are not 8.3 get VFAT
//! long names.

use std::collections::BTreeMap;

use super::{ImageError, MIB};
use crate::civil::Civil;

const SECTOR: u64 = 512;
const RESERVED: u64 = 32;
/// The fewest clusters a FAT32 volume may have.
const FAT32_MIN_CLUSTERS: u64 = 65_525;
const END_OF_CHAIN: u32 = 0x0fff_ffff;

/// One file of the volume: a `/`-separated path; a part that is not an 8.3
/// name (too long, mixed case) is written as a VFAT long name.
pub struct FatFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

enum Node<'a> {
    Dir(BTreeMap<[u8; 11], Entry<'a>>),
    /// The file's bytes and its index in the caller's list.
    File(&'a [u8], usize),
}

struct Entry<'a> {
    /// FAT's NT case bits: the base (0x08) or extension (0x10) shows in lower case.
    case: u8,
    /// The VFAT long name (UTF-16), for a name that is not 8.3.
    long: Option<Vec<u16>>,
    node: Node<'a>,
}

impl Entry<'_> {
    /// Directory slots: the long name's (13 characters each), then the short entry.
    fn slots(&self) -> u64 {
        self.long
            .as_ref()
            .map_or(0, |l| (l.len() as u64 + 1).div_ceil(13))
            + 1
    }
}

/// Every file's data starts on a boundary of this many bytes of the volume,
/// so an ISO 9660 directory on the same medium can point into it.
pub const FILE_ALIGN: u64 = 2048;

/// A FAT volume and where each file's data landed in it.
pub struct FatImage {
    pub bytes: Vec<u8>,
    /// Byte offset of each file's data in `bytes`, in the order given.
    pub offsets: Vec<u64>,
}

/// Writes a FAT32 volume holding `files`, to sit at `start_lba` of its disk.
///
/// The volume is just large enough (rounded up to MiB, with an eighth spare
/// for a signed UKI or loader entries later); `seed` gives its serial, and
/// every timestamp is `mtime`.
pub fn write_fat(
    files: &[FatFile],
    label: &str,
    seed: &[u8],
    mtime: u32,
    start_lba: u64,
) -> Result<Vec<u8>, ImageError> {
    Ok(write_fat_placed(files, label, seed, mtime, start_lba)?.bytes)
}

/// [`write_fat`], also saying where each file's data is.
pub fn write_fat_placed(
    files: &[FatFile],
    label: &str,
    seed: &[u8],
    mtime: u32,
    start_lba: u64,
) -> Result<FatImage, ImageError> {
    let mut root = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        insert(&mut root, f, i)?;
    }
    let spc = 1u64;
    let cluster = SECTOR * spc;
    // Aligning a file's start skips at most FILE_ALIGN / cluster - 1 clusters.
    let needed = clusters_of(&Node::Dir(BTreeMap::new()), cluster, true)
        + files.len() as u64 * (FILE_ALIGN / cluster)
        + root
            .values()
            .map(|e| clusters_of(&e.node, cluster, false))
            .sum::<u64>();
    let want = (needed + needed / 8).max(FAT32_MIN_CLUSTERS + 1024);
    let fat_sectors = |clusters: u64| ((clusters + 2) * 4).div_ceil(SECTOR);
    let sectors =
        (RESERVED + 2 * fat_sectors(want) + want * spc).div_ceil(MIB / SECTOR) * (MIB / SECTOR);
    let fat_len = fat_sectors((sectors - RESERVED) / spc);
    let clusters = (sectors - RESERVED - 2 * fat_len) / spc;

    let mut w = Writer {
        image: vec![0u8; (sectors * SECTOR) as usize],
        fat: vec![0u32; clusters as usize + 2],
        next: 2,
        data_start: (RESERVED + 2 * fat_len) * SECTOR,
        cluster,
        stamp: fat_stamp(mtime),
        placed: vec![0; files.len()],
    };
    w.fat[0] = 0x0fff_fff8;
    w.fat[1] = END_OF_CHAIN;
    let serial = {
        let id = super::derive_id(seed, "fat-serial");
        u32::from_le_bytes([id[0], id[1], id[2], id[3]])
    };
    let root_cluster = w.place_dir(&root, None, Some(label_bytes(label)));
    debug_assert_eq!(root_cluster, 2);
    let free = w.fat[2..].iter().filter(|&&e| e == 0).count() as u32;

    let mut bs = [0u8; 512];
    bs[..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
    bs[3..11].copy_from_slice(b"OSK     ");
    bs[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    bs[13] = spc as u8;
    bs[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    bs[16] = 2;
    bs[21] = 0xf8;
    bs[24..26].copy_from_slice(&32u16.to_le_bytes());
    bs[26..28].copy_from_slice(&64u16.to_le_bytes());
    bs[28..32].copy_from_slice(&(start_lba as u32).to_le_bytes());
    bs[32..36].copy_from_slice(&(sectors as u32).to_le_bytes());
    bs[36..40].copy_from_slice(&(fat_len as u32).to_le_bytes());
    bs[44..48].copy_from_slice(&2u32.to_le_bytes());
    bs[48..50].copy_from_slice(&1u16.to_le_bytes());
    bs[50..52].copy_from_slice(&6u16.to_le_bytes());
    bs[64] = 0x80;
    bs[66] = 0x29;
    bs[67..71].copy_from_slice(&serial.to_le_bytes());
    bs[71..82].copy_from_slice(&label_bytes(label));
    bs[82..90].copy_from_slice(b"FAT32   ");
    bs[510] = 0x55;
    bs[511] = 0xaa;
    let mut info = [0u8; 512];
    info[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    info[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    info[488..492].copy_from_slice(&free.to_le_bytes());
    info[492..496].copy_from_slice(&(w.next as u32).to_le_bytes());
    info[508..512].copy_from_slice(&0xaa55_0000u32.to_le_bytes());
    for base in [0usize, 6 * 512] {
        w.image[base..base + 512].copy_from_slice(&bs);
        w.image[base + 512..base + 1024].copy_from_slice(&info);
    }
    let fat_bytes: Vec<u8> = w.fat.iter().flat_map(|e| e.to_le_bytes()).collect();
    for copy in 0..2 {
        let at = ((RESERVED + copy * fat_len) * SECTOR) as usize;
        w.image[at..at + fat_bytes.len()].copy_from_slice(&fat_bytes);
    }
    Ok(FatImage {
        bytes: w.image,
        offsets: w.placed,
    })
}

fn insert<'a>(
    root: &mut BTreeMap<[u8; 11], Entry<'a>>,
    f: &FatFile<'a>,
    index: usize,
) -> Result<(), ImageError> {
    let bad = |reason: String| ImageError::FatName {
        path: f.path.to_string(),
        reason,
    };
    let parts: Vec<&str> = f.path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((leaf, dirs)) = parts.split_last() else {
        return Err(bad("is empty".into()));
    };
    let mut dir = root;
    for d in dirs {
        let key = match find(dir, d) {
            Some(key) => key,
            None => {
                let (key, case, long) = names(dir, d).map_err(|e| bad(e.to_string()))?;
                let e = Entry {
                    case,
                    long,
                    node: Node::Dir(BTreeMap::new()),
                };
                dir.insert(key, e);
                key
            }
        };
        dir = match &mut dir.get_mut(&key).expect("found or inserted").node {
            Node::Dir(children) => children,
            Node::File(..) => return Err(bad(format!("{d} is a file"))),
        };
    }
    if find(dir, leaf).is_some() {
        return Err(bad("is given twice (FAT names ignore case)".into()));
    }
    let (key, case, long) = names(dir, leaf).map_err(|e| bad(e.to_string()))?;
    dir.insert(
        key,
        Entry {
            case,
            long,
            node: Node::File(f.data, index),
        },
    );
    Ok(())
}

/// The short-name key of the entry called `name` in `dir`, ignoring case as FAT does.
fn find(dir: &BTreeMap<[u8; 11], Entry>, name: &str) -> Option<[u8; 11]> {
    let wanted: Vec<u16> = name.to_ascii_uppercase().encode_utf16().collect();
    dir.iter().find_map(|(key, e)| {
        let same = match &e.long {
            Some(l) => String::from_utf16_lossy(l)
                .to_ascii_uppercase()
                .encode_utf16()
                .eq(wanted.iter().copied()),
            None => short_name(name).is_ok_and(|(k, _)| k == *key),
        };
        same.then_some(*key)
    })
}

/// A short name, its NT case bits and the long name, if any.
type Names = ([u8; 11], u8, Option<Vec<u16>>);

/// A new entry's short name, case bits and (for a name that is not 8.3)
/// long name, its short alias unique in `dir` (`BASENA~1.EXT`).
fn names(dir: &BTreeMap<[u8; 11], Entry>, name: &str) -> Result<Names, ShortNameError> {
    match short_name(name) {
        Ok((key, case)) => return Ok((key, case, None)),
        Err(ShortNameError::Forbidden(_)) => {
            return Err(ShortNameError::Forbidden(name.to_string()))
        }
        Err(_) => {}
    }
    if name.len() > 255
        || name
            .chars()
            .any(|c| c.is_control() || "\"*/:<>?\\|".contains(c))
    {
        return Err(ShortNameError::Forbidden(name.to_string()));
    }
    let long = Some(name.encode_utf16().collect());
    // Mixed case that fits 8.3 keeps its upper-case form as the alias.
    if let Ok((key, _)) = short_name(&name.to_ascii_uppercase()) {
        if !dir.contains_key(&key) {
            return Ok((key, 0, long));
        }
    }
    let (base, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let keep = |s: &str, n: usize| -> Vec<u8> {
        s.bytes()
            .filter(|c| c.is_ascii_alphanumeric() || b"_-~!#$%&'()@^{}".contains(c))
            .map(|c| c.to_ascii_uppercase())
            .take(n)
            .collect()
    };
    let (base, ext) = (keep(base, 8), keep(ext, 3));
    for n in 1u32.. {
        let tail = format!("~{n}");
        let mut key = [b' '; 11];
        let head = base.len().min(8 - tail.len());
        key[..head].copy_from_slice(&base[..head]);
        key[head..head + tail.len()].copy_from_slice(tail.as_bytes());
        key[8..8 + ext.len()].copy_from_slice(&ext);
        if !dir.contains_key(&key) {
            return Ok((key, 0, long));
        }
    }
    unreachable!("a directory cannot hold every alias")
}

/// The checksum of a short name that ties its long-name entries to it.
fn alias_checksum(name: &[u8; 11]) -> u8 {
    name.iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// The long-name entries of `long` for the short entry `alias`, in on-disk order (last part first).
fn long_entries(long: &[u16], alias: &[u8; 11]) -> Vec<[u8; 32]> {
    let sum = alias_checksum(alias);
    let mut chars = long.to_vec();
    chars.push(0);
    let parts = chars.len().div_ceil(13);
    chars.resize(parts * 13, 0xffff);
    let mut out = Vec::new();
    for (i, part) in chars.chunks(13).enumerate().rev() {
        let mut e = [0u8; 32];
        e[0] = (i + 1) as u8 | if i + 1 == parts { 0x40 } else { 0 };
        e[11] = 0x0f;
        e[13] = sum;
        let at = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (c, &o) in part.iter().zip(&at) {
            e[o..o + 2].copy_from_slice(&c.to_le_bytes());
        }
        out.push(e);
    }
    out
}

/// Why a path component cannot be a FAT short name; each names the component.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum ShortNameError {
    #[error("{0:?} is not an 8.3 name")]
    Not83(String),
    #[error("{0:?} mixes upper and lower case in one part")]
    MixedCase(String),
    #[error("{0:?} has a character FAT short names forbid")]
    Forbidden(String),
}

/// An 8.3 name and its NT case bits; mixed case within a part needs a long name.
fn short_name(s: &str) -> Result<([u8; 11], u8), ShortNameError> {
    let (base, ext) = s.split_once('.').unwrap_or((s, ""));
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || ext.contains('.') {
        return Err(ShortNameError::Not83(s.to_string()));
    }
    let mut name = [b' '; 11];
    let mut case = 0u8;
    for (part, at, bit) in [(base, 0usize, 0x08u8), (ext, 8, 0x10)] {
        let lower = part.bytes().any(|c| c.is_ascii_lowercase());
        if lower && part.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(ShortNameError::MixedCase(s.to_string()));
        }
        if lower {
            case |= bit;
        }
        for (i, c) in part.bytes().enumerate() {
            if !(c.is_ascii_alphanumeric() || b"_-~!#$%&'()@^{}".contains(&c)) {
                return Err(ShortNameError::Forbidden(s.to_string()));
            }
            name[at + i] = c.to_ascii_uppercase();
        }
    }
    Ok((name, case))
}

fn label_bytes(label: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (i, c) in label.bytes().take(11).enumerate() {
        l[i] = c.to_ascii_uppercase();
    }
    l
}

fn clusters_of(node: &Node, cluster: u64, root: bool) -> u64 {
    match node {
        Node::File(data, _) => (data.len() as u64).div_ceil(cluster),
        Node::Dir(children) => {
            let entries =
                children.values().map(Entry::slots).sum::<u64>() + if root { 1 } else { 2 };
            (entries * 32).div_ceil(cluster).max(1)
                + children
                    .values()
                    .map(|e| clusters_of(&e.node, cluster, false))
                    .sum::<u64>()
        }
    }
}

/// FAT's (date, time) for Unix seconds, clamped to FAT's 1980..=2107.
fn fat_stamp(secs: u32) -> (u16, u16) {
    let c = Civil::from_unix(i64::from(secs));
    if c.year < 1980 {
        return ((1 << 5) | 1, 0);
    }
    let year = (c.year - 1980).min(127) as u16;
    let date = (year << 9) | ((c.month as u16) << 5) | c.day as u16;
    let time = ((c.hour as u16) << 11) | ((c.min as u16) << 5) | (c.sec as u16 / 2);
    (date, time)
}

struct Writer {
    image: Vec<u8>,
    fat: Vec<u32>,
    next: u64,
    data_start: u64,
    cluster: u64,
    stamp: (u16, u16),
    /// Data offset of each file, by its index in the caller's list.
    placed: Vec<u64>,
}

impl Writer {
    /// Takes `n` clusters in a row and chains them; returns the first (0 for none).
    fn alloc(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let first = self.next;
        for c in first..first + n {
            self.fat[c as usize] = if c + 1 == first + n {
                END_OF_CHAIN
            } else {
                (c + 1) as u32
            };
        }
        self.next += n;
        first
    }

    fn offset(&self, cluster: u64) -> usize {
        (self.data_start + (cluster - 2) * self.cluster) as usize
    }

    fn entry(&self, name: &[u8; 11], attr: u8, case: u8, first: u64, size: u32) -> [u8; 32] {
        let (date, time) = self.stamp;
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(name);
        e[11] = attr;
        e[12] = case;
        e[14..16].copy_from_slice(&time.to_le_bytes());
        e[16..18].copy_from_slice(&date.to_le_bytes());
        e[18..20].copy_from_slice(&date.to_le_bytes());
        e[20..22].copy_from_slice(&((first >> 16) as u16).to_le_bytes());
        e[22..24].copy_from_slice(&time.to_le_bytes());
        e[24..26].copy_from_slice(&date.to_le_bytes());
        e[26..28].copy_from_slice(&(first as u16).to_le_bytes());
        e[28..32].copy_from_slice(&size.to_le_bytes());
        e
    }

    /// Places a directory and everything below it; `parent` is None for the root.
    fn place_dir(
        &mut self,
        children: &BTreeMap<[u8; 11], Entry>,
        parent: Option<u64>,
        label: Option<[u8; 11]>,
    ) -> u64 {
        let extra = if parent.is_none() { 1 } else { 2 };
        let slots = children.values().map(Entry::slots).sum::<u64>();
        let n = ((slots + extra) * 32).div_ceil(self.cluster).max(1);
        let first = self.alloc(n);
        let mut entries = Vec::new();
        if let Some(l) = label {
            entries.push(self.entry(&l, 0x08, 0, 0, 0));
        }
        if let Some(p) = parent {
            // `..` of a child of the root points at cluster 0, as FAT requires.
            let up = if p == 2 { 0 } else { p };
            entries.push(self.entry(b".          ", 0x10, 0, first, 0));
            entries.push(self.entry(b"..         ", 0x10, 0, up, 0));
        }
        for (name, e) in children {
            if let Some(long) = &e.long {
                entries.extend(long_entries(long, name));
            }
            match &e.node {
                Node::File(data, index) => {
                    // Skipped clusters stay free.
                    while !(self.offset(self.next) as u64).is_multiple_of(FILE_ALIGN) {
                        self.next += 1;
                    }
                    let c = self.alloc((data.len() as u64).div_ceil(self.cluster));
                    if c != 0 {
                        let at = self.offset(c);
                        self.image[at..at + data.len()].copy_from_slice(data);
                        self.placed[*index] = at as u64;
                    }
                    entries.push(self.entry(name, 0x20, e.case, c, data.len() as u32));
                }
                Node::Dir(sub) => {
                    let c = self.place_dir(sub, Some(first), None);
                    entries.push(self.entry(name, 0x10, e.case, c, 0));
                }
            }
        }
        let at = self.offset(first);
        for (i, e) in entries.iter().enumerate() {
            self.image[at + i * 32..at + i * 32 + 32].copy_from_slice(e);
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_case_bits() {
        assert_eq!(short_name("BOOTX64.EFI").unwrap(), (*b"BOOTX64 EFI", 0));
        assert_eq!(short_name("initrd.img").unwrap(), (*b"INITRD  IMG", 0x18));
        assert!(short_name("loader.conf").is_err());
        assert_eq!(short_name("loader").unwrap(), (*b"LOADER     ", 0x08));
        assert_eq!(
            short_name("Boot"),
            Err(ShortNameError::MixedCase("Boot".into()))
        );
        assert!(short_name("toolongname.efi")
            .unwrap_err()
            .to_string()
            .contains("8.3"));
        assert_eq!(
            short_name("a*b"),
            Err(ShortNameError::Forbidden("a*b".into()))
        );
    }

    #[test]
    fn fat_stamps_clamp_to_1980() {
        assert_eq!(fat_stamp(0), (0x21, 0));
        // 2024-01-02 03:04:06
        let (d, t) = fat_stamp(1_704_164_646);
        assert_eq!(d, (44 << 9) | (1 << 5) | 2);
        assert_eq!(t, (3 << 11) | (4 << 5) | 3);
    }

    #[test]
    fn layout_is_fat32_and_reproducible() {
        let big = vec![0xabu8; 5000];
        let files = [
            FatFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                data: &big,
            },
            FatFile {
                path: "loader/entries/a.txt",
                data: b"x",
            },
        ];
        let a = write_fat(&files, "ESP", b"seed", 0, 2048).unwrap();
        assert_eq!(a, write_fat(&files, "ESP", b"seed", 0, 2048).unwrap());
        assert_ne!(a, write_fat(&files, "ESP", b"other", 0, 2048).unwrap());
        assert_eq!(a.len() as u64 % MIB, 0);
        assert_eq!(&a[82..90], b"FAT32   ");
        assert_eq!(&a[510..512], &[0x55, 0xaa]);
        let err = write_fat(
            &[FatFile {
                path: "EFI/a*b/x",
                data: b"",
            }],
            "ESP",
            b"",
            0,
            0,
        );
        assert!(err.unwrap_err().to_string().contains("EFI/a*b/x"));
    }

    #[test]
    fn long_names_get_unique_aliases_and_their_entries() {
        let mut root = BTreeMap::new();
        for (i, path) in ["bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb", "Boot/x"]
            .iter()
            .enumerate()
        {
            let f = FatFile { path, data: b"x" };
            insert(&mut root, &f, i).unwrap();
        }
        let keys: Vec<&[u8; 11]> = root.keys().collect();
        assert_eq!(keys, [b"BCM271~1DTB", b"BCM283~1DTB", b"BOOT       "]);
        let e = &root[b"BCM271~1DTB"];
        assert_eq!(e.slots(), 3);
        let twice = FatFile {
            path: "BCM2711-rpi-4-b.DTB",
            data: b"",
        };
        assert!(insert(&mut root, &twice, 3).is_err());
        // The same directory, whatever its case.
        insert(
            &mut root,
            &FatFile {
                path: "BOOT/y",
                data: b"",
            },
            4,
        )
        .unwrap();
        assert_eq!(root.len(), 3);

        let long: Vec<u16> = "bcm2711-rpi-4-b.dtb".encode_utf16().collect();
        let entries = long_entries(&long, b"BCM271~1DTB");
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0][0], entries[1][0]), (0x42, 0x01));
        assert!(entries
            .iter()
            .all(|e| e[11] == 0x0f && e[13] == alias_checksum(b"BCM271~1DTB")));
        // The second part: "-b.dtb", the terminator, then 0xffff padding.
        assert_eq!(&entries[0][1..3], &[b'-', 0]);
        assert_eq!(&entries[0][14..16], &[b'b', 0]);
        assert_eq!(&entries[0][16..18], &[0, 0]);
        assert_eq!(&entries[0][18..20], &[0xff, 0xff]);
    }
}
