//! Reading uncompressed newc archives back, several in a row as the kernel
//! does, into the tree they unpack to (for tests and checks of outputs).

use std::collections::{BTreeMap, HashMap};
use std::io;

/// What one path unpacks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// File type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub rdev: (u32, u32),
    /// A file's contents or a symlink's target.
    pub data: Vec<u8>,
    /// For a hard-linked file, the first path of its inode; else None.
    pub link_group: Option<Vec<u8>>,
}

/// Unpacks concatenated archives (zero padding between them allowed); a
/// later entry replaces an earlier one of the same path, as in the kernel.
/// An entry whose parent directory was not unpacked before it is an error,
/// since the kernel would fail to create it.
pub fn unpack_newc(mut b: &[u8]) -> io::Result<BTreeMap<Vec<u8>, Unpacked>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut out = BTreeMap::new();
    let mut offset = 0usize; // within the current archive, for padding
                             // (ino, archive) -> first path, and whose data the last link carries.
    let mut links: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut pending: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    while !b.is_empty() {
        if offset == 0 && b[0] == 0 {
            b = &b[1..];
            continue;
        }
        if b.len() < 110 || &b[..6] != b"070701" {
            return Err(bad("not a newc header"));
        }
        let field = |i: usize| -> io::Result<u32> {
            let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).map_err(|_| bad("header"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad("header field"))
        };
        let (ino, mode, uid, gid, nlink) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let mtime = field(5)?;
        let (size, rmaj, rmin, namesize) = (field(6)? as usize, field(9)?, field(10)?, field(11)?);
        let name_end = 110 + namesize as usize;
        let data_start = pad4(offset + name_end) - offset;
        let data_end = data_start + size;
        let next = pad4(offset + data_end) - offset;
        if b.len() < data_end || namesize == 0 {
            return Err(bad("archive cut short"));
        }
        let name = b[110..name_end - 1].to_vec();
        let data = b[data_start..data_end].to_vec();
        b = &b[next.min(b.len())..];
        offset += next;
        if name == b"TRAILER!!!" {
            offset = 0;
            links.clear();
            pending.clear();
            continue;
        }
        if let Some(i) = name.iter().rposition(|c| *c == b'/') {
            let parent_is_dir = out
                .get(&name[..i])
                .is_some_and(|p: &Unpacked| p.mode & 0o170000 == 0o040000);
            if !parent_is_dir {
                return Err(bad(&format!(
                    "{} comes before its directory",
                    String::from_utf8_lossy(&name).escape_debug()
                )));
            }
        }
        let regular = mode & 0o170000 == 0o100000;
        let mut link_group = None;
        if regular && nlink >= 2 {
            let first = links.entry(ino).or_insert_with(|| name.clone()).clone();
            link_group = Some(first);
            let names = pending.entry(ino).or_default();
            names.push(name.clone());
            // The data comes with the inode's last link, for all of them.
            if size > 0 {
                for earlier in names.iter() {
                    if let Some(u) = out.get_mut(earlier) {
                        u.data = data.clone();
                    }
                }
            }
        }
        out.insert(
            name,
            Unpacked {
                mode,
                uid,
                gid,
                mtime,
                rdev: (rmaj, rmin),
                data,
                link_group,
            },
        );
    }
    Ok(out)
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}
