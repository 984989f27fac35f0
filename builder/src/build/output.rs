//! Output formats, each written to a temporary file beside its final name.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tempfile::NamedTempFile;

use super::{Assembled, BuildError, BuildOptions};
use crate::assemble::{FileInode, Kind, Spool, Tree};
use crate::initramfs::{self, write_newc, Encoder, SegmentCache};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `NAME-kernel`, `NAME-initrd.img`, `NAME-cmdline`.
    KernelInitrd,
    /// `NAME.tar`: the root filesystem, plus `boot/kernel`, `boot/cmdline`
    /// (and `boot/ucode.cpio`) first, as LinuxKit's `tar` output.
    Tar,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["kernel+initrd", "tar"];
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kernel+initrd" => Ok(Format::KernelInitrd),
            "tar" => Ok(Format::Tar),
            other => Err(format!(
                "unknown output format {other:?} (expected one of: {})",
                Format::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::KernelInitrd => "kernel+initrd",
            Format::Tar => "tar",
        })
    }
}

/// Temporary outputs, renamed together by [`Pending::commit`]; dropped, they vanish.
struct Pending {
    dir: PathBuf,
    files: Vec<(NamedTempFile, PathBuf)>,
}

impl Pending {
    fn create(&mut self, name: &str) -> Result<File, BuildError> {
        let io = |source| BuildError::Io {
            path: self.dir.join(name),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io)?;
        tmp.as_file()
            .set_permissions(Permissions::from_mode(0o644))
            .map_err(io)?;
        let file = tmp.reopen().map_err(io)?;
        self.files.push((tmp, self.dir.join(name)));
        Ok(file)
    }

    fn commit(self) -> Result<Vec<PathBuf>, BuildError> {
        let mut done = Vec::new();
        for (tmp, dest) in self.files {
            tmp.as_file().sync_all().map_err(|source| BuildError::Io {
                path: dest.clone(),
                source,
            })?;
            tmp.persist(&dest).map_err(|e| BuildError::Io {
                path: dest.clone(),
                source: e.error,
            })?;
            done.push(dest);
        }
        Ok(done)
    }
}

pub(super) fn write_outputs(
    spool: &Spool,
    cache: &SegmentCache,
    a: &Assembled,
    opts: &BuildOptions,
) -> Result<Vec<PathBuf>, BuildError> {
    std::fs::create_dir_all(&opts.dir).map_err(|source| BuildError::Io {
        path: opts.dir.clone(),
        source,
    })?;
    let mut pending = Pending {
        dir: opts.dir.clone(),
        files: Vec::new(),
    };
    let name = &opts.name;
    for format in &opts.formats {
        match format {
            Format::KernelInitrd => {
                let kernel = a.kernel.as_ref().expect("checked by build()");
                let out = format!("{name}-kernel");
                let mut f = pending.create(&out)?;
                copy_content(spool, kernel, &mut f).map_err(io_at(&opts.dir, &out))?;

                let out = format!("{name}-initrd.img");
                let f = pending.create(&out)?;
                write_initrd(spool, a, f, opts, cache).map_err(io_at(&opts.dir, &out))?;

                let out = format!("{name}-cmdline");
                let mut f = pending.create(&out)?;
                f.write_all(a.cmdline.as_bytes())
                    .map_err(io_at(&opts.dir, &out))?;
            }
            Format::Tar => {
                let out = format!("{name}.tar");
                let f = pending.create(&out)?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                write_tar(spool, a, &mut w, opts.mtime).map_err(io_at(&opts.dir, &out))?;
                w.flush().map_err(io_at(&opts.dir, &out))?;
            }
        }
    }
    pending.commit()
}

fn io_at<'a>(dir: &'a Path, name: &'a str) -> impl Fn(io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        path: dir.join(name),
        source,
    }
}

fn copy_content(spool: &Spool, inode: &FileInode, w: &mut impl Write) -> io::Result<()> {
    let n = io::copy(&mut spool.open_content(&inode.sha)?, w)?;
    if n != inode.size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spool content has {n} bytes, expected {}", inode.size),
        ));
    }
    Ok(())
}

/// ucode (uncompressed, padded to 4 bytes), then the compressed newc
/// archives: one per segment out of the segment cache, or the whole tree as
/// one archive for the compressors that cannot be concatenated.
fn write_initrd(
    spool: &Spool,
    a: &Assembled,
    f: File,
    opts: &BuildOptions,
    cache: &SegmentCache,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, f);
    if let Some(ucode) = &a.ucode {
        copy_content(spool, ucode, &mut w)?;
        let pad = (4 - (ucode.size % 4) as usize) % 4;
        w.write_all(&[0u8; 3][..pad])?;
    }
    if opts.compress.segmented() {
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        initramfs::write_segments(&a.tree, spool, cache, opts.compress, opts.mtime, &mut f)?;
        return f.flush();
    }
    let enc = Encoder::new(opts.compress, w)?;
    let enc = write_newc(
        &a.tree,
        spool,
        BufWriter::with_capacity(1 << 20, enc),
        opts.mtime,
    )?;
    let enc = enc.into_inner().map_err(|e| e.into_error())?;
    let mut w = enc.finish()?;
    w.flush()
}

/// Writes the tree as a tar: sorted, parents first, hard links as link
/// entries to their first path, fixed mtime, numeric owners only.
pub fn write_tar(spool: &Spool, a: &Assembled, w: impl Write, mtime: u32) -> io::Result<()> {
    let mut tb = tar::Builder::new(w);
    tb.mode(tar::HeaderMode::Deterministic);
    let header = |kind: tar::EntryType, mode: u32, uid: u32, gid: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        h.set_size(size);
        h.set_mtime(mtime.into());
        h
    };
    if let Some(kernel) = &a.kernel {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, 0, 0);
        tb.append_data(&mut h, "boot", io::empty())?;
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, kernel.size);
        tb.append_data(&mut h, "boot/kernel", spool.open_content(&kernel.sha)?)?;
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, a.cmdline.len() as u64);
        tb.append_data(&mut h, "boot/cmdline", a.cmdline.as_bytes())?;
        if let Some(u) = &a.ucode {
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, u.size);
            tb.append_data(&mut h, "boot/ucode.cpio", spool.open_content(&u.sha)?)?;
        }
    }
    let tree: &Tree = &a.tree;
    let mut first: HashMap<usize, Vec<u8>> = HashMap::new();
    for (path, id) in tree.walk() {
        let node = tree.node(id);
        let m = node.meta;
        let p = bytes_path(&path);
        match &node.kind {
            Kind::Dir(_) => {
                let mut h = header(tar::EntryType::Directory, m.mode, m.uid, m.gid, 0);
                tb.append_data(&mut h, p, io::empty())?;
            }
            Kind::File(ino) => {
                let inode = tree.inode(*ino);
                let im = inode.meta;
                if let Some(target) = first.get(ino) {
                    let mut h = header(tar::EntryType::Link, im.mode, im.uid, im.gid, 0);
                    tb.append_link(&mut h, p, bytes_path(target))?;
                } else {
                    first.insert(*ino, path.clone());
                    let mut h =
                        header(tar::EntryType::Regular, im.mode, im.uid, im.gid, inode.size);
                    let r = spool.open_content(&inode.sha)?.take(inode.size);
                    tb.append_data(&mut h, p, r)?;
                }
            }
            Kind::Symlink(t) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, m.uid, m.gid, 0);
                tb.append_link(&mut h, p, bytes_path(t))?;
            }
            Kind::Char(a, b) | Kind::Block(a, b) => {
                let kind = if matches!(node.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header(kind, m.mode, m.uid, m.gid, 0);
                h.set_device_major(*a)?;
                h.set_device_minor(*b)?;
                tb.append_data(&mut h, p, io::empty())?;
            }
            Kind::Fifo => {
                let mut h = header(tar::EntryType::Fifo, m.mode, m.uid, m.gid, 0);
                tb.append_data(&mut h, p, io::empty())?;
            }
        }
    }
    tb.into_inner()?.flush()
}

fn bytes_path(b: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(b))
}
