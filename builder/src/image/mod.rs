//! Bootable images written in-process and reproducibly: UKI, FAT ESP, hybrid ISO/GPT disk and its containers, the Raspberry Pi's card.

mod disk;
mod fat;
mod gcp;
mod gpt;
pub mod iso;
mod qcow2;
mod rpi;
mod uki;
mod vhd;
mod vmdk;

pub use disk::{Disk, Extent, MIB};
pub use fat::{write_fat, write_fat_placed, FatFile, FatImage};
pub use gcp::write_gcp;
pub use gpt::{efi_disk, ESP_START};
pub use iso::{hybrid_image, BiosLoader, Medium};
pub use qcow2::write_qcow2;
pub use rpi::{
    cmdline_txt, config_txt, rpi_image, RpiParts, RPI_BOOT_START, RPI_INITRD, RPI_KERNEL,
};
pub use uki::{kernel_release, pe_machine, write_uki, UkiParts};
pub use vhd::write_vhd;
pub use vmdk::write_vmdk;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ImageError {
    /// The EFI stub is not a PE32+ image osk can extend.
    #[error("EFI stub {stub}: {reason}")]
    Stub { stub: String, reason: String },
    #[error("kernel {kernel}: {reason}")]
    Kernel { kernel: String, reason: String },
    #[error("ESP file {path}: {reason}")]
    FatName { path: String, reason: String },
    #[error("ISO 9660 file {path}: {reason}")]
    IsoName { path: String, reason: String },
    /// A boot binary (isolinux.bin, isohdpfx.bin) or the UKI is not what the image needs.
    #[error("{path} {reason}")]
    BootFile { path: String, reason: String },
    #[error("--disk-size {given} is too small: the disk needs at least {needed} bytes ({} MiB)", needed.div_ceil(MIB))]
    DiskTooSmall { given: u64, needed: u64 },
}

/// 16 bytes derived from `seed` and `name`: GUIDs and serials that change only with the content.
pub fn derive_id(seed: &[u8], name: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed);
    h.update([0]);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}
