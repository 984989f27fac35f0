//! The bootable outputs: the UKI and the hybrid ISO/GPT disk around it, in every container format
//! (UEFI-only on arm64).

use std::fs::File;
use std::io::{BufWriter, Write};

use sha2::{Digest, Sha256};

use super::{Assembled, BuildError, BuildOptions};
use crate::arch::Arch;
use crate::assemble::{self, Spool};
use crate::image::{self, Disk, ImageError, UkiParts};
use crate::store::{Image, Store};

/// The EFI stub's path in the boot binaries image (`pkgs/bootloader`):
/// systemd's `linuxx64.efi.stub`, `linuxaa64.efi.stub`.
pub fn efi_stub(arch: Arch) -> String {
    format!("usr/lib/systemd/boot/efi/linux{}.efi.stub", arch.efi())
}

/// Written when the root has no os-release; the stub shows it and sd-boot lists it.
const DEFAULT_OSREL: &[u8] = b"ID=osk\nNAME=osk\nPRETTY_NAME=osk\n";

/// syslinux's BIOS pieces in the boot binaries image: isolinux and its MBR code.
pub const ISOLINUX_BIN: &str = "usr/lib/ISOLINUX/isolinux.bin";
pub const ISOHDPFX_BIN: &str = "usr/lib/ISOLINUX/isohdpfx.bin";
pub const LDLINUX_C32: &str = "usr/lib/syslinux/modules/bios/ldlinux.c32";

/// The boot binaries the requested formats use.
pub struct BootFiles {
    /// The architecture of the boot binaries image, and so of the build.
    pub arch: Arch,
    pub stub: Vec<u8>,
    /// isolinux.bin, ldlinux.c32 and isohdpfx.bin, for the ISO and disk
    /// formats on architectures with a PC BIOS (amd64); none: UEFI only.
    pub bios: Option<[Vec<u8>; 3]>,
}

/// Reads the EFI stub of the image's architecture (and with `bios`, on
/// amd64, syslinux's files) out of the boot binaries image.
pub fn load(
    store: &Store,
    spool: &Spool,
    boot: &Image,
    bios: bool,
) -> Result<BootFiles, BuildError> {
    let name = boot.reference.familiar();
    let os_arch = boot.config.architecture().to_string();
    let arch: Arch = os_arch.parse().map_err(|_| BuildError::Boot {
        image: name.clone(),
        reason: format!(
            "is for architecture {}, which osk cannot boot",
            crate::untrusted::quote(os_arch.as_bytes())
        ),
    })?;
    let tree = assemble::flatten(store, spool, boot)?;
    let file = |path: &str| {
        let f = tree
            .file(path.as_bytes())
            .ok_or_else(|| BuildError::Boot {
                image: name.clone(),
                reason: format!(
                    "has no {path:?}; is it the pkgs/bootloader image? Rebuild it with `osk pkg build --arch {arch} pkgs/bootloader`"
                ),
            })?;
        read(spool, &f.sha, &name)
    };
    let stub = file(&efi_stub(arch))?;
    let bios = if bios && arch.has_bios() {
        Some([file(ISOLINUX_BIN)?, file(LDLINUX_C32)?, file(ISOHDPFX_BIN)?])
    } else {
        None
    };
    Ok(BootFiles { arch, stub, bios })
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
    boot: &BootFiles,
    initrd: &[u8],
) -> Result<Vec<u8>, BuildError> {
    let kernel = a.kernel.as_ref().expect("checked by build()");
    let stub_name = efi_stub(boot.arch);
    let linux = kernel_pe(read(spool, &kernel.sha, "kernel")?)?;
    // The resolver took both images for one architecture; a kernel whose
    // header says otherwise is refused (one it cannot read is the stub's business).
    if let Some(k) = Arch::of_kernel(&linux).filter(|k| *k != boot.arch) {
        return Err(ImageError::Kernel {
            kernel: "kernel".into(),
            reason: format!("is for {k}, but the boot binaries are for {}", boot.arch),
        }
        .into());
    }
    let machine = image::pe_machine(&boot.stub);
    if machine != Some(boot.arch.pe_machine()) {
        return Err(ImageError::Stub {
            stub: stub_name,
            reason: format!(
                "has PE machine {}, not {:#06x} ({})",
                machine.map_or("none".into(), |m| format!("{m:#06x}")),
                boot.arch.pe_machine(),
                boot.arch
            ),
        }
        .into());
    }
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
    let cmdline = uki_cmdline(boot.arch, &a.cmdline);
    let parts = UkiParts {
        osrel: &osrel,
        cmdline: cmdline.as_bytes(),
        uname: uname.as_deref().map(str::as_bytes),
        initrd,
        linux: &linux,
    };
    Ok(image::write_uki(&boot.stub, &stub_name, &parts)?)
}

/// The UKI's built-in command line: the build's, plus on arm64 the PL011
/// console when the line names only x86's `ttyS` ones (nothing can add it
/// at boot, as `osk run qemu` does for a direct kernel boot).
fn uki_cmdline(arch: Arch, cmdline: &str) -> String {
    if arch == Arch::Arm64 && crate::arch::names_only_x86_serial(cmdline) {
        format!("{} console=ttyAMA0", cmdline.trim())
    } else {
        cmdline.to_string()
    }
}

/// The kernel as the EFI stub starts it: a PE image. arm64's kernel package
/// holds a gzip'd Image, which systemd's stub cannot load: inflated here.
fn kernel_pe(kernel: Vec<u8>) -> Result<Vec<u8>, BuildError> {
    if !crate::arch::is_gzip(&kernel) {
        return Ok(kernel);
    }
    let mut out = Vec::with_capacity(kernel.len() * 3);
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&kernel[..]), &mut out).map_err(
        |e| ImageError::Kernel {
            kernel: "kernel".into(),
            reason: format!("is gzip'd but does not inflate: {e}"),
        },
    )?;
    Ok(out)
}

/// The hybrid image of `uki` for `medium`: the ISO, or the disk every disk format holds.
pub fn hybrid(
    uki: &[u8],
    a: &Assembled,
    boot: &BootFiles,
    medium: image::Medium,
    opts: &BuildOptions,
) -> Result<Disk, BuildError> {
    let mut h = Sha256::new();
    h.update(uki);
    h.update(opts.mtime.to_le_bytes());
    let seed = h.finalize();
    let bios = boot
        .bios
        .as_ref()
        .map(|[isolinux, ldlinux, mbr_code]| image::BiosLoader {
            isolinux,
            ldlinux,
            mbr_code,
        });
    Ok(image::hybrid_image(
        uki,
        &a.cmdline,
        bios.as_ref(),
        &boot.arch.efi_boot_path(),
        medium,
        &seed,
        opts.mtime,
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
