//! ISO 9660 volumes: descriptors, path tables and directories, laid out deterministically.
//!
//! Names are upper-cased ISO identifiers (`BOOT/VMLINUZ.;1`); Linux and
//! isolinux show and match them case-insensitively without the version, so
//! no Rock Ridge or Joliet is written. Every timestamp is one given time.

use std::collections::BTreeMap;

use super::super::{Extent, ImageError};
use crate::civil::Civil;

/// ISO 9660's logical block.
pub const BLOCK: u64 = 2048;
/// The primary volume descriptor's block; the 32 KiB before it are the system area.
pub const PVD_LBA: u32 = 16;
/// El Torito's boot record, when the volume has one.
pub const BOOT_RECORD_LBA: u32 = 17;

/// Where a file's bytes are.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// Stored by the volume; the same slice under several names is stored once.
    Stored(&'a [u8]),
    /// Already in the image at block `lba` (inside another file system): only named.
    At { lba: u32, len: u64 },
}

/// One file: a `/`-separated path (`boot/vmlinuz`) and its data.
#[derive(Debug, Clone, Copy)]
pub struct IsoFile<'a> {
    pub path: &'a str,
    pub data: Data<'a>,
}

/// A volume to lay out and write.
pub struct Volume<'a> {
    pub label: &'a str,
    /// Unix seconds, for every timestamp.
    pub mtime: i64,
    pub files: Vec<IsoFile<'a>>,
    /// Leave [`BOOT_RECORD_LBA`] for El Torito's boot record.
    pub boot_record: bool,
}

struct Dir {
    id: Vec<u8>,
    parent: usize,
    /// Child directories and files by identifier; a file is `Err(index into files)`.
    children: BTreeMap<Vec<u8>, Result<usize, usize>>,
}

/// Where everything goes; depends only on the names and stored lengths.
pub struct Layout {
    dirs: Vec<Dir>,
    /// Directories in path-table order (breadth first, by parent then name).
    order: Vec<usize>,
    dir_lba: Vec<u32>,
    dir_len: Vec<u32>,
    path_table_lba: u32,
    path_table_blocks: u32,
    path_table_len: u32,
    /// Block of each stored file's data, by index into `Volume::files`.
    stored: Vec<Option<u32>>,
    /// The first block after the volume's own data.
    pub end: u32,
}

impl Layout {
    /// The block of file `index`'s stored data.
    pub fn stored_lba(&self, index: usize) -> Option<u32> {
        self.stored[index]
    }
}

/// `boot/vmlinuz` → ["BOOT", "VMLINUZ.;1"]; a name without an extension keeps its dot.
fn identifiers(path: &str) -> Result<Vec<Vec<u8>>, ImageError> {
    let bad = |reason: &str| ImageError::IsoName {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some((leaf, dirs)) = parts.split_last() else {
        return Err(bad("is empty"));
    };
    let ok = |s: &str, dots: usize| {
        !s.is_empty()
            && s.len() <= 30
            && s.bytes().filter(|&c| c == b'.').count() <= dots
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
    };
    let mut ids = Vec::new();
    for d in dirs {
        if !ok(d, 0) {
            return Err(bad("a directory name is not 1-30 of A-Z 0-9 _ -"));
        }
        ids.push(d.to_ascii_uppercase().into_bytes());
    }
    if !ok(leaf, 1) {
        return Err(bad(
            "the file name is not 1-30 of A-Z 0-9 _ - with at most one dot",
        ));
    }
    let mut id = leaf.to_ascii_uppercase();
    if !id.contains('.') {
        id.push('.');
    }
    id.push_str(";1");
    ids.push(id.into_bytes());
    Ok(ids)
}

fn record_len(id_len: usize) -> usize {
    (33 + id_len).next_multiple_of(2)
}

impl Volume<'_> {
    /// Places the descriptors, path tables, directories and stored files from block 16 on.
    pub fn layout(&self) -> Result<Layout, ImageError> {
        let mut dirs = vec![Dir {
            id: vec![0],
            parent: 0,
            children: BTreeMap::new(),
        }];
        for (i, f) in self.files.iter().enumerate() {
            let ids = identifiers(f.path)?;
            let (leaf, path) = ids.split_last().expect("at least one");
            let mut at = 0;
            for d in path {
                at = match dirs[at].children.get(d) {
                    Some(Ok(sub)) => *sub,
                    Some(Err(_)) => {
                        return Err(ImageError::IsoName {
                            path: f.path.to_string(),
                            reason: "a directory of it is also a file".into(),
                        })
                    }
                    None => {
                        dirs.push(Dir {
                            id: d.clone(),
                            parent: at,
                            children: BTreeMap::new(),
                        });
                        let sub = dirs.len() - 1;
                        dirs[at].children.insert(d.clone(), Ok(sub));
                        sub
                    }
                };
            }
            if dirs[at].children.insert(leaf.clone(), Err(i)).is_some() {
                return Err(ImageError::IsoName {
                    path: f.path.to_string(),
                    reason: "is given twice (ISO 9660 names ignore case)".into(),
                });
            }
        }
        let mut order = vec![0];
        let mut k = 0;
        while k < order.len() {
            let d = order[k];
            order.extend(dirs[d].children.values().filter_map(|c| c.ok()));
            k += 1;
        }
        let path_table_len: usize = order
            .iter()
            .map(|&d| (8 + dirs[d].id.len()).next_multiple_of(2))
            .sum();
        let path_table_blocks = (path_table_len as u64).div_ceil(BLOCK).max(1) as u32;
        let terminator = PVD_LBA + 1 + u32::from(self.boot_record);
        let path_table_lba = terminator + 1;
        let mut lba = path_table_lba + 2 * path_table_blocks;
        let mut dir_lba = vec![0; dirs.len()];
        let mut dir_len = vec![0; dirs.len()];
        for &d in &order {
            let mut ids: Vec<usize> = vec![1, 1];
            ids.extend(dirs[d].children.keys().map(Vec::len));
            let blocks = pack(ids.into_iter().map(record_len)).len();
            dir_lba[d] = lba;
            dir_len[d] = blocks as u32 * BLOCK as u32;
            lba += blocks as u32;
        }
        let mut stored = vec![None; self.files.len()];
        let mut seen: BTreeMap<(usize, usize), u32> = BTreeMap::new();
        for (i, f) in self.files.iter().enumerate() {
            if let Data::Stored(bytes) = f.data {
                let key = (bytes.as_ptr() as usize, bytes.len());
                let at = *seen.entry(key).or_insert_with(|| {
                    let at = lba;
                    lba += (bytes.len() as u64).div_ceil(BLOCK) as u32;
                    at
                });
                stored[i] = Some(at);
            }
        }
        Ok(Layout {
            dirs,
            order,
            dir_lba,
            dir_len,
            path_table_lba,
            path_table_blocks,
            path_table_len: path_table_len as u32,
            stored,
            end: lba,
        })
    }

    /// The volume's bytes from block 16 on: descriptors (the boot record
    /// slot left out), path tables, directories, then each stored file.
    /// `blocks` is the volume's size; `files` must be as laid out.
    pub fn write(&self, layout: &Layout, blocks: u32) -> Vec<Extent> {
        let date = Civil::from_unix(self.mtime);
        let meta_start = u64::from(PVD_LBA) * BLOCK;
        let files_start = layout
            .order
            .last()
            .map(|&d| layout.dir_lba[d] + layout.dir_len[d] / BLOCK as u32)
            .expect("a root");
        let mut meta = vec![0u8; (u64::from(files_start) * BLOCK - meta_start) as usize];
        let at = |lba: u32| (u64::from(lba) * BLOCK - meta_start) as usize;

        let root = self.record(layout, &[0], Ok(0), &date);
        let pvd = primary_descriptor(
            self.label,
            blocks,
            layout.path_table_len,
            layout.path_table_lba,
            layout.path_table_lba + layout.path_table_blocks,
            &root,
            &date,
        );
        meta[..BLOCK as usize].copy_from_slice(&pvd);
        let term = at(PVD_LBA + 1 + u32::from(self.boot_record));
        meta[term..term + 7].copy_from_slice(&[255, b'C', b'D', b'0', b'0', b'1', 1]);

        // Path tables: directory numbers are 1-based positions in `order`.
        let number: BTreeMap<usize, u16> = (layout.order.iter())
            .enumerate()
            .map(|(n, &d)| (d, n as u16 + 1))
            .collect();
        for (big, lba) in [
            (false, layout.path_table_lba),
            (true, layout.path_table_lba + layout.path_table_blocks),
        ] {
            let mut t = Vec::new();
            for &d in &layout.order {
                let dir = &layout.dirs[d];
                t.push(dir.id.len() as u8);
                t.push(0);
                let (l, p) = (layout.dir_lba[d], number[&dir.parent]);
                if big {
                    t.extend(l.to_be_bytes());
                    t.extend(p.to_be_bytes());
                } else {
                    t.extend(l.to_le_bytes());
                    t.extend(p.to_le_bytes());
                }
                t.extend(&dir.id);
                if t.len() % 2 == 1 {
                    t.push(0);
                }
            }
            meta[at(lba)..at(lba) + t.len()].copy_from_slice(&t);
        }

        for &d in &layout.order {
            let dir = &layout.dirs[d];
            let mut records = vec![
                self.record(layout, &[0], Ok(d), &date),
                self.record(layout, &[1], Ok(dir.parent), &date),
            ];
            for (id, child) in &dir.children {
                records.push(self.record(layout, id, *child, &date));
            }
            let starts = pack(records.iter().map(Vec::len));
            let base = at(layout.dir_lba[d]);
            for (r, (block, off)) in records.iter().zip(starts.into_iter().flatten()) {
                let o = base + block * BLOCK as usize + off;
                meta[o..o + r.len()].copy_from_slice(r);
            }
        }

        let mut out = vec![Extent {
            offset: meta_start,
            data: meta,
        }];
        let mut written = std::collections::BTreeSet::new();
        for (i, f) in self.files.iter().enumerate() {
            if let (Data::Stored(bytes), Some(lba)) = (f.data, layout.stored[i]) {
                if !bytes.is_empty() && written.insert(lba) {
                    out.push(Extent {
                        offset: u64::from(lba) * BLOCK,
                        data: bytes.to_vec(),
                    });
                }
            }
        }
        if self.boot_record {
            // The caller's boot record goes between the PVD and the terminator.
            let meta = &mut out[0].data;
            let rest = meta.split_off(BLOCK as usize * 2);
            meta.truncate(BLOCK as usize);
            out.insert(
                1,
                Extent {
                    offset: meta_start + 2 * BLOCK,
                    data: rest,
                },
            );
        }
        out
    }

    /// The directory record of a directory (`Ok`) or file (`Err`).
    fn record(
        &self,
        layout: &Layout,
        id: &[u8],
        what: Result<usize, usize>,
        date: &Civil,
    ) -> Vec<u8> {
        let (lba, len, flags) = match what {
            Ok(d) => (layout.dir_lba[d], u64::from(layout.dir_len[d]), 2),
            Err(i) => match self.files[i].data {
                Data::Stored(b) => (layout.stored[i].unwrap_or(0), b.len() as u64, 0),
                Data::At { lba, len } => (lba, len, 0),
            },
        };
        let mut r = vec![0u8; record_len(id.len())];
        r[0] = r.len() as u8;
        both32(&mut r[2..10], lba);
        both32(&mut r[10..18], u32::try_from(len).unwrap_or(u32::MAX));
        r[18..25].copy_from_slice(&short_date(date));
        r[25] = flags;
        both16(&mut r[28..32], 1);
        r[32] = id.len() as u8;
        r[33..33 + id.len()].copy_from_slice(id);
        r
    }
}

/// Packs records of these lengths into blocks (none may cross a block's end);
/// returns, per block, the (block, offset) of each record that starts in it.
fn pack(lens: impl Iterator<Item = usize>) -> Vec<Vec<(usize, usize)>> {
    let mut blocks: Vec<Vec<(usize, usize)>> = vec![Vec::new()];
    let mut off = 0;
    for len in lens {
        if off + len > BLOCK as usize {
            blocks.push(Vec::new());
            off = 0;
        }
        let b = blocks.len() - 1;
        blocks[b].push((b, off));
        off += len;
    }
    blocks
}

fn primary_descriptor(
    label: &str,
    blocks: u32,
    path_table_len: u32,
    l_table: u32,
    m_table: u32,
    root: &[u8],
    date: &Civil,
) -> Vec<u8> {
    let mut d = vec![0u8; BLOCK as usize];
    d[0] = 1;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    for range in [
        8..40,
        40..72,
        190..318,
        318..446,
        446..574,
        574..702,
        702..739,
        739..776,
        776..813,
    ] {
        d[range].fill(b' ');
    }
    d[8..13].copy_from_slice(b"LINUX");
    let label = label.as_bytes();
    d[40..40 + label.len().min(32)].copy_from_slice(&label[..label.len().min(32)]);
    both32(&mut d[80..88], blocks);
    both16(&mut d[120..124], 1);
    both16(&mut d[124..128], 1);
    both16(&mut d[128..132], BLOCK as u16);
    both32(&mut d[132..140], path_table_len);
    d[140..144].copy_from_slice(&l_table.to_le_bytes());
    d[148..152].copy_from_slice(&m_table.to_be_bytes());
    d[156..190].copy_from_slice(root);
    d[574..577].copy_from_slice(b"OSK");
    let stamp = long_date(date);
    d[813..830].copy_from_slice(&stamp);
    d[830..847].copy_from_slice(&stamp);
    d[847..863].copy_from_slice(b"0000000000000000");
    d[864..881].copy_from_slice(&stamp);
    d[881] = 1;
    d
}

fn both16(field: &mut [u8], v: u16) {
    field[..2].copy_from_slice(&v.to_le_bytes());
    field[2..4].copy_from_slice(&v.to_be_bytes());
}

fn both32(field: &mut [u8], v: u32) {
    field[..4].copy_from_slice(&v.to_le_bytes());
    field[4..8].copy_from_slice(&v.to_be_bytes());
}

/// Directory record form: years since 1900, month, day, h, m, s, UTC offset.
fn short_date(c: &Civil) -> [u8; 7] {
    let y = (c.year - 1900).clamp(0, 255) as u8;
    [
        y,
        c.month as u8,
        c.day as u8,
        c.hour as u8,
        c.min as u8,
        c.sec as u8,
        0,
    ]
}

/// Volume descriptor form: "YYYYMMDDHHMMSScc" and a UTC offset byte.
fn long_date(c: &Civil) -> [u8; 17] {
    let s = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        c.year.clamp(0, 9999),
        c.month,
        c.day,
        c.hour,
        c.min,
        c.sec
    );
    let mut out = [0u8; 17];
    out[..16].copy_from_slice(s.as_bytes());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::Disk;

    fn le32(b: &[u8]) -> usize {
        u32::from_le_bytes(b[..4].try_into().unwrap()) as usize
    }

    /// The whole image of a volume's extents.
    pub(crate) fn flatten(extents: Vec<Extent>, blocks: u32) -> Vec<u8> {
        let mut disk = Disk::new(u64::from(blocks) * BLOCK);
        for e in extents {
            disk.put(e.offset, e.data);
        }
        let mut v = Vec::new();
        disk.write_all(&mut v).unwrap();
        v
    }

    /// Looks `path` (ISO identifiers) up the way a reader does: PVD → root → directories.
    pub(crate) fn lookup(img: &[u8], path: &[&str]) -> Option<(usize, usize)> {
        let pvd = &img[PVD_LBA as usize * BLOCK as usize..][..BLOCK as usize];
        assert_eq!(&pvd[1..6], b"CD001");
        let mut rec = pvd[156..190].to_vec();
        for name in path {
            let dir = &img[le32(&rec[2..]) * BLOCK as usize..][..le32(&rec[10..])];
            let mut off = 0;
            let mut found = None;
            while off < dir.len() {
                if dir[off] == 0 {
                    off = (off / BLOCK as usize + 1) * BLOCK as usize;
                    continue;
                }
                let r = &dir[off..off + dir[off] as usize];
                if &r[33..33 + r[32] as usize] == name.as_bytes() {
                    found = Some(r.to_vec());
                }
                off += r.len();
            }
            rec = found?;
        }
        Some((le32(&rec[2..]), le32(&rec[10..])))
    }

    #[test]
    fn nested_files_shared_and_external_extents() {
        let a = vec![1u8; 3000];
        let vol = Volume {
            label: "TEST",
            mtime: 0,
            files: vec![
                IsoFile {
                    path: "isolinux/isolinux.bin",
                    data: Data::Stored(&a),
                },
                IsoFile {
                    path: "copy",
                    data: Data::Stored(&a),
                },
                IsoFile {
                    path: "boot/vmlinuz",
                    data: Data::At { lba: 100, len: 5 },
                },
            ],
            boot_record: true,
        };
        let layout = vol.layout().unwrap();
        let img = flatten(vol.write(&layout, 101), 101);
        let (lba, len) = lookup(&img, &["ISOLINUX", "ISOLINUX.BIN;1"]).unwrap();
        assert_eq!(len, 3000);
        assert_eq!(&img[lba * 2048..lba * 2048 + 3000], &a[..]);
        assert_eq!(lookup(&img, &["COPY.;1"]), Some((lba, 3000)));
        assert_eq!(lookup(&img, &["BOOT", "VMLINUZ.;1"]), Some((100, 5)));
        assert_eq!(layout.end as usize, lba + 2);
        // The boot record's block is left for El Torito; the terminator follows it.
        assert!(img[17 * 2048..18 * 2048].iter().all(|&b| b == 0));
        assert_eq!(&img[18 * 2048..18 * 2048 + 6], b"\xffCD001");
    }

    #[test]
    fn dates_in_both_forms() {
        // 2024-02-29T12:34:56Z
        let d = Civil::from_unix(1_709_210_096);
        assert_eq!(&long_date(&d)[..16], b"2024022912345600");
        assert_eq!(short_date(&d), [124, 2, 29, 12, 34, 56, 0]);
    }

    #[test]
    fn bad_names_are_refused_with_the_path() {
        let vol = |path| Volume {
            label: "T",
            mtime: 0,
            files: vec![IsoFile {
                path,
                data: Data::Stored(b""),
            }],
            boot_record: false,
        };
        for p in ["a b", "x/y.z.w", "", "dir.d/f"] {
            let err = vol(p).layout().err().unwrap().to_string();
            assert!(err.contains(p), "{err}");
        }
    }

    #[test]
    fn many_entries_span_directory_blocks() {
        let names: Vec<String> = (0..100).map(|i| format!("file{i:03}.txt")).collect();
        let vol = Volume {
            label: "T",
            mtime: 0,
            files: names
                .iter()
                .map(|n| IsoFile {
                    path: n,
                    data: Data::At { lba: 0, len: 0 },
                })
                .collect(),
            boot_record: false,
        };
        let layout = vol.layout().unwrap();
        let img = flatten(vol.write(&layout, layout.end), layout.end);
        for i in [0, 57, 99] {
            assert!(lookup(&img, &[&format!("FILE{i:03}.TXT;1")]).is_some());
        }
    }
}
