//! Output formats, each written to a temporary file beside its final name.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use tempfile::NamedTempFile;

use super::{Assembled, BuildError, BuildOptions};
use crate::assemble::{FileInode, Kind, Spool, Tree};
use crate::initramfs::{self, write_newc, Encoder, SegmentCache};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_of_this_output_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            ".node.tar.Ab12cD.tmp",
            ".node.tar.Zz99zz.tmp",
            ".node.tar.x.tmp",
            ".node-kernel.Ab12cD.tmp",
            "node.tar",
            ".node.tar.Ab12cD.tmp.keep",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        // A live build's temporary is locked.
        let held = File::open(d.join(".node.tar.Zz99zz.tmp")).unwrap();
        held.lock().unwrap();
        remove_stale(d, "node.tar");
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".node-kernel.Ab12cD.tmp",
                ".node.tar.Ab12cD.tmp.keep",
                ".node.tar.Zz99zz.tmp",
                ".node.tar.x.tmp",
                "node.tar"
            ]
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `NAME-kernel`, `NAME-initrd.img`, `NAME-cmdline`.
    KernelInitrd,
    /// `NAME.tar`: the root filesystem, plus `boot/kernel`, `boot/cmdline`
    /// (and `boot/ucode.cpio`) first, as LinuxKit's `tar` output.
    Tar,
    /// `NAME.efi`: a Unified Kernel Image (UEFI).
    Uki,
    /// `NAME.iso`: a hybrid ISO booting from CD or disk, under BIOS (isolinux) and UEFI (the UKI).
    Iso,
    /// `NAME.raw`: a GPT disk whose ESP boots the UKI (UEFI), in the ISO's
    /// hybrid layout so that it also boots under BIOS.
    Raw,
    /// `NAME.qcow2`: the raw disk, sparse.
    Qcow2,
    /// `NAME.vhd`: the raw disk as a fixed VHD (Hyper-V, Azure).
    Vhd,
    /// `NAME.vmdk`: the raw disk as a streamOptimized VMDK (vSphere).
    Vmdk,
    /// `NAME.img.tar.gz`: the raw disk as GCE's `disk.raw` in a gzipped tar.
    Gcp,
    /// `NAME-rpi4.img`: a Raspberry Pi 4 (and 3) SD card booted by the Pi's
    /// own firmware from its FAT partition (arm64).
    Rpi4,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &[
        "kernel+initrd",
        "tar",
        "uki",
        "iso",
        "raw",
        "qcow2",
        "vhd",
        "vmdk",
        "gcp",
        "rpi4",
    ];

    /// Whether the format holds the UKI, and so needs the boot binaries image.
    pub fn needs_boot(self) -> bool {
        !matches!(self, Format::KernelInitrd | Format::Tar | Format::Rpi4)
    }

    /// Whether the format holds the compressed initramfs (so it is made once, in memory).
    fn holds_initrd(self) -> bool {
        self.needs_boot() || self == Format::Rpi4
    }

    fn is_disk(self) -> bool {
        self.needs_boot() && !matches!(self, Format::Uki | Format::Iso)
    }

    /// Whether the format holds isolinux, and so needs the BIOS boot files too.
    pub fn needs_bios(self) -> bool {
        self.needs_boot() && self != Format::Uki
    }

    /// LinuxKit's formats that boot through a PC BIOS only (isolinux).
    pub const BIOS_ALIASES: &'static [&'static str] =
        &["iso-bios", "raw-bios", "qcow2-bios", "kernel+iso"];

    /// Parses a format or a LinuxKit alias; an alias also returns what it maps to, to tell the user.
    pub fn parse_alias(s: &str) -> Result<(Format, Option<String>), FormatError> {
        if let Ok(f) = s.parse() {
            return Ok((f, None));
        }
        let mapped = match s {
            "raw-efi" => Format::Raw,
            "qcow2-efi" => Format::Qcow2,
            "dynamic-vhd" => Format::Vhd,
            "iso-bios" | "iso-efi" | "kernel+iso" => Format::Iso,
            "raw-bios" => Format::Raw,
            "qcow2-bios" => Format::Qcow2,
            _ => {
                return Err(FormatError::Unknown {
                    name: s.to_string(),
                })
            }
        };
        let note = match mapped {
            Format::Vhd => format!("{s} is written as vhd: a fixed VHD, the kind Azure requires"),
            Format::Iso => format!(
                "{s} is written as iso: one hybrid ISO that boots under BIOS and UEFI, from CD or USB stick"
            ),
            _ => format!(
                "{s} is written as {mapped}: a GPT disk that boots under UEFI and legacy BIOS"
            ),
        };
        Ok((mapped, Some(note)))
    }

    /// The output file's name for base name `name` (disk and UKI formats).
    pub fn file_name(self, name: &str) -> String {
        match self {
            Format::Gcp => format!("{name}.img.tar.gz"),
            Format::Uki => format!("{name}.efi"),
            Format::Rpi4 => format!("{name}-rpi4.img"),
            _ => format!("{name}.{self}"),
        }
    }
}

/// An output format `osk build -f` cannot write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error(
        "unknown output format {name:?} (expected one of: {}; or LinuxKit's iso-bios, iso-efi, kernel+iso, raw-bios, raw-efi, qcow2-bios, qcow2-efi, dynamic-vhd)",
        Format::NAMES.join(", ")
    )]
    Unknown { name: String },
}

impl FromStr for Format {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        match s {
            "kernel+initrd" => Ok(Format::KernelInitrd),
            "tar" => Ok(Format::Tar),
            "uki" => Ok(Format::Uki),
            "iso" => Ok(Format::Iso),
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vhd" => Ok(Format::Vhd),
            "vmdk" => Ok(Format::Vmdk),
            "gcp" => Ok(Format::Gcp),
            "rpi4" => Ok(Format::Rpi4),
            other => Err(FormatError::Unknown {
                name: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::KernelInitrd => "kernel+initrd",
            Format::Tar => "tar",
            Format::Uki => "uki",
            Format::Iso => "iso",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Vmdk => "vmdk",
            Format::Gcp => "gcp",
            Format::Rpi4 => "rpi4",
        })
    }
}

/// Temporary outputs, renamed together by [`Pending::commit`]; dropped, they vanish.
struct Pending {
    dir: PathBuf,
    files: Vec<(NamedTempFile, PathBuf)>,
}

/// Output temporaries being written, for [`remove_temporaries`]. Held while
/// one is created, so none appears after a signal has removed them.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every output temporary this process is writing and keeps them
/// from being created until the guard is dropped; for a signal handler
/// that exits while holding it.
pub fn remove_temporaries() -> impl Sized {
    let guard = live();
    for path in guard.iter() {
        let _ = std::fs::remove_file(path);
    }
    guard
}

/// The part of a temporary's name between `.NAME.` and `.tmp` (tempfile's six random characters).
fn is_temporary_of(file: &[u8], name: &str) -> bool {
    let inner = file
        .strip_prefix(format!(".{name}.").as_bytes())
        .and_then(|r| r.strip_suffix(b".tmp"));
    inner.is_some_and(|r| r.len() == 6 && r.iter().all(u8::is_ascii_alphanumeric))
}

/// Removes temporaries of output `name` in `dir` left by a build that was
/// killed. A live build holds a lock on each of its temporaries, so only
/// the dead ones are taken.
fn remove_stale(dir: &Path, name: &str) {
    let Ok(items) = std::fs::read_dir(dir) else {
        return;
    };
    for item in items.flatten() {
        if !is_temporary_of(item.file_name().as_encoded_bytes(), name) {
            continue;
        }
        let path = item.path();
        let Ok(f) = File::open(&path) else { continue };
        if f.try_lock().is_ok() {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(
                    "removed {}, left by a build that was stopped",
                    path.display()
                ),
                Err(e) => tracing::warn!("cannot remove the stale {}: {e}", path.display()),
            }
        }
    }
}

impl Pending {
    fn create(&mut self, name: &str) -> Result<File, BuildError> {
        let io = |source| BuildError::Io {
            path: self.dir.join(name),
            source,
        };
        remove_stale(&self.dir, name);
        let mut live = live();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(io)?;
        live.push(tmp.path().to_path_buf());
        drop(live);
        // The lock says "being written" to another build's remove_stale; it
        // goes with the process however that ends.
        tmp.as_file().lock().map_err(io)?;
        tmp.as_file()
            .set_permissions(Permissions::from_mode(0o644))
            .map_err(io)?;
        let file = tmp.reopen().map_err(io)?;
        self.files.push((tmp, self.dir.join(name)));
        Ok(file)
    }

    fn commit(mut self) -> Result<Vec<PathBuf>, BuildError> {
        let mut done = Vec::new();
        for (tmp, dest) in std::mem::take(&mut self.files) {
            tmp.as_file().sync_all().map_err(|source| BuildError::Io {
                path: dest.clone(),
                source,
            })?;
            let path = tmp.path().to_path_buf();
            tmp.persist(&dest).map_err(|e| BuildError::Io {
                path: dest.clone(),
                source: e.error,
            })?;
            live().retain(|p| *p != path);
            done.push(dest);
        }
        Ok(done)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut live = live();
        for (tmp, _) in self.files.drain(..) {
            live.retain(|p| p != tmp.path());
        }
    }
}

pub(super) fn write_outputs(
    spool: &Spool,
    cache: &SegmentCache,
    a: &Assembled,
    boot: Option<&super::boot::BootFiles>,
    firmware: Option<&[(String, Vec<u8>)]>,
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
    // Compressed once, in memory, when the UKI needs it too (zstd -19 is most of a build).
    let initrd = if opts.formats.iter().any(|f| f.holds_initrd()) {
        let in_memory = || -> io::Result<Vec<u8>> {
            // Segments are written to a file they can seek in.
            let mut f = tempfile::tempfile_in(&opts.dir)?;
            write_initrd(spool, a, f.try_clone()?, opts, cache)?;
            let mut v = Vec::new();
            f.seek(io::SeekFrom::Start(0))?;
            f.read_to_end(&mut v)?;
            Ok(v)
        };
        Some(in_memory().map_err(io_at(&opts.dir, name))?)
    } else {
        None
    };
    let mut uki: Option<Vec<u8>> = None;
    let mut disk = None;
    for format in &opts.formats {
        match format {
            Format::KernelInitrd => {
                let kernel = a.kernel.as_ref().expect("checked by build()");
                let out = format!("{name}-kernel");
                let mut f = pending.create(&out)?;
                copy_content(spool, kernel, &mut f).map_err(io_at(&opts.dir, &out))?;

                let out = format!("{name}-initrd.img");
                let mut f = pending.create(&out)?;
                match &initrd {
                    Some(bytes) => f.write_all(bytes),
                    None => write_initrd(spool, a, f, opts, cache),
                }
                .map_err(io_at(&opts.dir, &out))?;

                let out = format!("{name}-cmdline");
                let mut f = pending.create(&out)?;
                f.write_all(a.cmdline.as_bytes())
                    .map_err(io_at(&opts.dir, &out))?;
            }
            Format::Rpi4 => {
                let firmware = firmware.expect("loaded by build()");
                let initrd = initrd.as_deref().expect("made above for rpi4");
                let card = super::rpi::card(spool, a, firmware, initrd, opts)?;
                let out = format.file_name(name);
                let mut f = pending.create(&out)?;
                card.write_sparse(&mut f).map_err(io_at(&opts.dir, &out))?;
            }
            Format::Tar => {
                let out = format!("{name}.tar");
                let f = pending.create(&out)?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                write_tar(spool, a, &mut w, opts.mtime).map_err(io_at(&opts.dir, &out))?;
                w.flush().map_err(io_at(&opts.dir, &out))?;
            }
            _ => {
                let boot = boot.expect("checked by build()");
                if uki.is_none() {
                    let initrd = initrd.as_deref().expect("made above for bootable formats");
                    uki = Some(super::boot::uki(spool, a, boot, initrd)?);
                }
                let uki = uki.as_deref().expect("set above");
                let out = format.file_name(name);
                let mut f = pending.create(&out)?;
                if *format == Format::Uki {
                    f.write_all(uki).map_err(io_at(&opts.dir, &out))?;
                    continue;
                }
                if *format == Format::Iso {
                    let iso = super::boot::hybrid(uki, a, boot, crate::image::Medium::Cd, opts)?;
                    iso.write_sparse(&mut f).map_err(io_at(&opts.dir, &out))?;
                    continue;
                }
                debug_assert!(format.is_disk());
                if disk.is_none() {
                    let medium = crate::image::Medium::Disk(opts.disk_size);
                    disk = Some(super::boot::hybrid(uki, a, boot, medium, opts)?);
                }
                let disk = disk.as_ref().expect("set above");
                super::boot::write_disk(disk, *format, &out, opts, &mut f)
                    .map_err(io_at(&opts.dir, &out))?;
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
        tb.append_data(
            &mut h,
            "boot/kernel",
            spool.open_exact(&kernel.sha, kernel.size)?,
        )?;
        let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, a.cmdline.len() as u64);
        tb.append_data(&mut h, "boot/cmdline", a.cmdline.as_bytes())?;
        if let Some(u) = &a.ucode {
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, u.size);
            tb.append_data(&mut h, "boot/ucode.cpio", spool.open_exact(&u.sha, u.size)?)?;
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
                    // Exact: the tar writer stops at the size, the check must not.
                    let r = spool.open_exact(&inode.sha, inode.size)?;
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
