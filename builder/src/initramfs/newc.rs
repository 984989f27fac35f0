//! A streaming writer of the newc ("070701") cpio format the kernel unpacks.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::assemble::{FileInode, Kind, NodeId, Spool, Tree};

const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFDIR: u32 = 0o040000;
const S_IFBLK: u32 = 0o060000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// One header's fields (names as in the kernel's `init/initramfs.c`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Header {
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub size: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// Low-level newc writer: headers, names, data and padding.
pub struct NewcWriter<W: Write> {
    w: W,
    written: u64,
}

impl<W: Write> NewcWriter<W> {
    pub fn new(w: W) -> Self {
        NewcWriter { w, written: 0 }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    /// Writes a header and name; the caller then writes exactly `h.size` bytes with [`Self::data`].
    pub fn header(&mut self, name: &[u8], h: &Header) -> io::Result<()> {
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.size,
            0, // devmajor
            0, // devminor
            h.rdev_major,
            h.rdev_minor,
            namesize,
            0, // check
        ];
        let mut hdr = String::with_capacity(110);
        hdr.push_str("070701");
        for f in fields {
            hdr.push_str(&format!("{f:08X}"));
        }
        self.put(hdr.as_bytes())?;
        self.put(name)?;
        self.put(&[0])?;
        self.pad()
    }

    pub fn data(&mut self, b: &[u8]) -> io::Result<()> {
        self.put(b)
    }

    /// Stands for `size` bytes of data by their hash: the archive's offsets
    /// advance as if the data were written, so a recipe pads like the archive.
    fn data_ref(&mut self, sha: &[u8; 32], size: u64) -> io::Result<()> {
        self.w.write_all(sha)?;
        self.w.write_all(&size.to_le_bytes())?;
        self.written += size;
        Ok(())
    }

    /// Pads the data written since the last header.
    pub fn end_data(&mut self) -> io::Result<()> {
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.finish_counted().map(|(w, _)| w)
    }

    /// Writes the trailer; returns the inner writer and the archive's length.
    fn finish_counted(mut self) -> io::Result<(W, u64)> {
        self.header(
            b"TRAILER!!!",
            &Header {
                nlink: 1,
                ..Default::default()
            },
        )?;
        Ok((self.w, self.written))
    }

    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Where file data comes from while an archive is written.
pub(crate) enum Bodies<'a> {
    /// The real bytes, read (and checked) from the spool.
    Spool(&'a Spool),
    /// Each file's hash and size instead of its bytes: the archive's recipe.
    Recipe,
}

/// Writes `tree` as a newc archive: entries sorted, parents before children,
/// inode numbers in walk order, every mtime `mtime`.
///
/// Hard links (files sharing an inode) share an inode number and carry the
/// data on their LAST occurrence, earlier ones having size 0. That is GNU
/// cpio's convention and works with every kernel: the kernel links later
/// names to the first and opens them without truncating, and only truncates
/// when a body follows.
pub fn write_newc<W: Write>(tree: &Tree, spool: &Spool, out: W, mtime: u32) -> io::Result<W> {
    write_entries(tree, &tree.walk(), Bodies::Spool(spool), out, mtime).map(|(w, _)| w)
}

/// Writes `entries` (a walk-ordered part of `tree` holding every link of
/// its hard-linked files) as one archive, trailer included; returns the
/// writer and the archive's length. Inode numbers count from 1 in each
/// archive, so an archive's bytes depend only on its own entries.
pub(crate) fn write_entries<W: Write>(
    tree: &Tree,
    entries: &[(Vec<u8>, NodeId)],
    bodies: Bodies<'_>,
    out: W,
    mtime: u32,
) -> io::Result<(W, u64)> {
    let mut links: HashMap<usize, (u32, u32)> = HashMap::new(); // inode -> (count, ino)
    for (_, id) in entries {
        if let Kind::File(ino) = tree.node(*id).kind {
            links.entry(ino).or_insert((0, 0)).0 += 1;
        }
    }
    let mut seen: HashMap<usize, u32> = HashMap::new();
    let mut w = NewcWriter::new(out);
    let mut buf = match bodies {
        Bodies::Spool(_) => vec![0u8; 256 * 1024],
        Bodies::Recipe => Vec::new(),
    };
    for (next_ino, (path, id)) in (1u32..).zip(entries.iter()) {
        let node = tree.node(*id);
        let mut h = Header {
            ino: next_ino,
            mode: node.meta.mode & 0o7777,
            uid: node.meta.uid,
            gid: node.meta.gid,
            nlink: 1,
            mtime,
            ..Default::default()
        };
        match &node.kind {
            Kind::Dir(children) => {
                h.mode |= S_IFDIR;
                let subdirs = children
                    .values()
                    .filter(|c| matches!(tree.node(**c).kind, Kind::Dir(_)))
                    .count();
                h.nlink = 2 + subdirs as u32;
                w.header(path, &h)?;
            }
            Kind::Symlink(target) => {
                h.mode = S_IFLNK | 0o777;
                h.size = len32(target.len() as u64, path)?;
                w.header(path, &h)?;
                w.data(target)?;
                w.end_data()?;
            }
            Kind::Char(a, b) | Kind::Block(a, b) => {
                h.mode |= if matches!(node.kind, Kind::Char(..)) {
                    S_IFCHR
                } else {
                    S_IFBLK
                };
                (h.rdev_major, h.rdev_minor) = (*a, *b);
                w.header(path, &h)?;
            }
            Kind::Fifo => {
                h.mode |= S_IFIFO;
                w.header(path, &h)?;
            }
            Kind::File(ino) => {
                let inode = tree.inode(*ino);
                h.mode = S_IFREG | (inode.meta.mode & 0o7777);
                h.uid = inode.meta.uid;
                h.gid = inode.meta.gid;
                let (count, first) = links.get_mut(ino).expect("counted above");
                if *first == 0 {
                    *first = h.ino;
                }
                h.ino = *first;
                h.nlink = *count;
                let n = seen.entry(*ino).or_insert(0);
                *n += 1;
                let last = *n == *count;
                if last {
                    h.size = len32(inode.size, path)?;
                }
                w.header(path, &h)?;
                if last {
                    match bodies {
                        Bodies::Spool(spool) => copy_exact(spool, inode, &mut w, &mut buf, path)?,
                        Bodies::Recipe => w.data_ref(&inode.sha, inode.size)?,
                    }
                    w.end_data()?;
                }
            }
        }
    }
    w.finish_counted()
}

fn len32(n: u64, path: &[u8]) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {n} bytes; newc cpio cannot hold files of 4 GiB or more",
                String::from_utf8_lossy(path)
            ),
        )
    })
}

fn copy_exact<W: Write>(
    spool: &Spool,
    inode: &FileInode,
    w: &mut NewcWriter<W>,
    buf: &mut [u8],
    path: &[u8],
) -> io::Result<()> {
    use std::io::Read;
    let (sha, size) = (&inode.sha, inode.size);
    let mut r = spool.open_exact(sha, size)?;
    let mut total = 0u64;
    loop {
        let n = r.read(buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > size {
            break;
        }
        w.data(&buf[..n])?;
    }
    if total != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "spool content for {} has {total} bytes, expected {size}",
                String::from_utf8_lossy(path)
            ),
        ));
    }
    Ok(())
}
