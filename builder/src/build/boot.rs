//! The bootable outputs: the UKI and the GPT disk around it, in every container format.

use std::fs::File;
use std::io::{BufWriter, Write};

use sha2::{Digest, Sha256};

use super::{Assembled, BuildError, BuildOptions};
use crate::assemble::{self, Spool};
use crate::image::{self, Disk, FatFile, UkiParts};
use crate::store::{Image, Store};

/// The EFI stub's path in the boot binaries image (`pkgs/bootloader`).
pub const EFI_STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where UEFI firmware looks on removable media and disks without boot entries.
const DEFAULT_EFI_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// Written when the root has no os-release; the stub shows it and sd-boot lists it.
const DEFAULT_OSREL: &[u8] = b"ID=osk\nNAME=osk\nPRETTY_NAME=osk\n";

/// Reads the EFI stub out of the boot binaries image.
pub fn load_stub(store: &Store, spool: &Spool, boot: &Image) -> Result<Vec<u8>, BuildError> {
    let name = boot.reference.familiar();
    let tree = assemble::flatten(store, spool, boot)?;
    let stub = tree
        .file(EFI_STUB.as_bytes())
        .ok_or_else(|| BuildError::Boot {
            image: name.clone(),
            reason: format!("has no EFI stub {EFI_STUB:?}; is it the pkgs/bootloader image?"),
        })?;
    read(spool, &stub.sha, &name)
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

/// The GPT disk with an ESP holding `uki` as the default boot path.
pub fn disk(uki: &[u8], opts: &BuildOptions) -> Result<Disk, BuildError> {
    let mut h = Sha256::new();
    h.update(uki);
    h.update(opts.mtime.to_le_bytes());
    let seed = h.finalize();
    let esp = image::write_fat(
        &[FatFile {
            path: DEFAULT_EFI_PATH,
            data: uki,
        }],
        "ESP",
        &seed,
        opts.mtime,
        image::ESP_START / 512,
    )?;
    Ok(image::efi_disk(esp, &seed, opts.disk_size)?)
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
        Format::KernelInitrd | Format::Tar | Format::Uki => unreachable!("not a disk format"),
    }
}
