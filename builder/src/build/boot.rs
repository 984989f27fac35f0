//! The bootable outputs: the UKI and the hybrid ISO/GPT disk around it, in every container format.

use std::fs::File;
use std::io::{BufWriter, Write};

use sha2::{Digest, Sha256};

use super::{Assembled, BuildError, BuildOptions};
use crate::assemble::{self, Spool};
use crate::image::{self, Disk, UkiParts};
use crate::store::{Image, Store};

/// The EFI stub's path in the boot binaries image (`pkgs/bootloader`).
pub const EFI_STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Written when the root has no os-release; the stub shows it and sd-boot lists it.
const DEFAULT_OSREL: &[u8] = b"ID=osk\nNAME=osk\nPRETTY_NAME=osk\n";

/// syslinux's BIOS pieces in the boot binaries image: isolinux and its MBR code.
pub const ISOLINUX_BIN: &str = "usr/lib/ISOLINUX/isolinux.bin";
pub const ISOHDPFX_BIN: &str = "usr/lib/ISOLINUX/isohdpfx.bin";
pub const LDLINUX_C32: &str = "usr/lib/syslinux/modules/bios/ldlinux.c32";

/// The boot binaries the requested formats use.
pub struct BootFiles {
    pub stub: Vec<u8>,
    /// isolinux.bin, ldlinux.c32 and isohdpfx.bin, for the ISO and disk formats.
    pub bios: Option<[Vec<u8>; 3]>,
}

/// Reads the EFI stub (and with `bios`, syslinux's files) out of the boot binaries image.
pub fn load(
    store: &Store,
    spool: &Spool,
    boot: &Image,
    bios: bool,
) -> Result<BootFiles, BuildError> {
    let name = boot.reference.familiar();
    let tree = assemble::flatten(store, spool, boot)?;
    let file = |path: &str| {
        let f = tree
            .file(path.as_bytes())
            .ok_or_else(|| BuildError::Boot {
                image: name.clone(),
                reason: format!(
                    "has no {path:?}; is it the pkgs/bootloader image? Rebuild it with `osk pkg build pkgs/bootloader`"
                ),
            })?;
        read(spool, &f.sha, &name)
    };
    let stub = file(EFI_STUB)?;
    let bios = if bios {
        Some([file(ISOLINUX_BIN)?, file(LDLINUX_C32)?, file(ISOHDPFX_BIN)?])
    } else {
        None
    };
    Ok(BootFiles { stub, bios })
}

fn read(spool: &Spool, sha: &assemble::Sha, what: &str) -> Result<Vec<u8>, BuildError> {
    let mut v = Vec::new();
    std::io::copy(
        &mut spool.open_content(sha).map_err(|source| BuildError::Io {
            path: spool.root().join(what),
            source,
        })?,
        &mut v,
    )
    .map_err(|source| BuildError::Io {
        path: spool.root().join(what),
        source,
    })?;
    Ok(v)
}

/// The UKI of the assembled system; `initrd` is the finished initramfs.
pub fn uki(
    spool: &Spool,
    a: &Assembled,
    stub: &[u8],
    initrd: &[u8],
) -> Result<Vec<u8>, BuildError> {
    let kernel = a.kernel.as_ref().expect("checked by build()");
    let linux = read(spool, &kernel.sha, "kernel")?;
    let osrel = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| a.tree.file(p.as_bytes()))
        .map(|f| read(spool, &f.sha, "os-release"))
        .transpose()?
        .unwrap_or_else(|| DEFAULT_OSREL.to_vec());
    let uname = match image::kernel_release(&linux, "kernel") {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("{e}; the UKI gets no .uname section");
            None
        }
    };
    let parts = UkiParts {
        osrel: &osrel,
        cmdline: a.cmdline.as_bytes(),
        uname: uname.as_deref().map(str::as_bytes),
        initrd,
        linux: &linux,
    };
    Ok(image::write_uki(stub, EFI_STUB, &parts)?)
}

/// The hybrid image of `uki` for `medium`: the ISO, or the disk every disk format holds.
pub fn hybrid(
    uki: &[u8],
    a: &Assembled,
    boot: &BootFiles,
    medium: image::Medium,
    opts: &BuildOptions,
) -> Result<Disk, BuildError> {
    let [isolinux, ldlinux, mbr_code] = boot.bios.as_ref().expect("loaded for these formats");
    let mut h = Sha256::new();
    h.update(uki);
    h.update(opts.mtime.to_le_bytes());
    let seed = h.finalize();
    let bios = image::BiosLoader {
        isolinux,
        ldlinux,
        mbr_code,
    };
    Ok(image::hybrid_image(
        uki, &a.cmdline, &bios, medium, &seed, opts.mtime,
    )?)
}

/// A content-derived 32-bit id (VMDK's CID).
pub fn cid(disk: &Disk) -> u32 {
    let mut h = Sha256::new();
    for e in disk.extents() {
        h.update(e.offset.to_le_bytes());
        h.update(&e.data);
    }
    let d = h.finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// Writes `disk` to `f` as `format`'s container.
pub fn write_disk(
    disk: &Disk,
    format: super::Format,
    out_name: &str,
    opts: &BuildOptions,
    f: &mut File,
) -> std::io::Result<()> {
    use super::Format;
    let seed = cid(disk).to_le_bytes();
    match format {
        Format::Raw => disk.write_sparse(f),
        Format::Vhd => image::write_vhd(disk, &seed, opts.mtime, f),
        Format::Qcow2 => {
            let mut w = BufWriter::with_capacity(1 << 20, f);
            image::write_qcow2(disk, &mut w)?;
            w.flush()
        }
        Format::Vmdk => {
            let mut w = BufWriter::with_capacity(1 << 20, f);
            image::write_vmdk(disk, out_name, cid(disk), &mut w)?;
            w.flush()
        }
        Format::Gcp => {
            let mut w = BufWriter::with_capacity(1 << 20, f);
            image::write_gcp(disk, opts.mtime, &mut w)?;
            w.flush()
        }
        Format::KernelInitrd | Format::Tar | Format::Uki | Format::Iso | Format::Rpi4 => {
            unreachable!("not a disk format")
        }
    }
}
