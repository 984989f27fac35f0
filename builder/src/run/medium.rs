//! Boot media `osk run qemu` attaches as they are: ISOs, disk images and UKIs, told apart by their bytes.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{Error, Result};
use crate::arch::Arch;
use crate::image::{self, FatFile};

/// Where a UKI is put for the firmware: an ESP disk in the state directory.
pub const UKI_ESP: &str = "uki-esp.raw";

/// A disk image's container, as QEMU names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
    /// A fixed VHD: the footer is at the end, so QEMU must be told.
    Vpc,
    Vmdk,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vpc => "vpc",
            ImageFormat::Vmdk => "vmdk",
        }
    }
}

/// What `osk run qemu FILE` boots when FILE is a file rather than a NAME prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootImage {
    /// Attached as a virtio disk; the firmware boots its ESP or MBR.
    Disk { path: PathBuf, format: ImageFormat },
    /// An ISO 9660 image, attached as a CD-ROM; the firmware boots it through El Torito.
    Cd(PathBuf),
    /// A Unified Kernel Image, put on a generated ESP disk.
    Uki(PathBuf),
}

impl BootImage {
    /// Reads `path`'s first and last sectors: qcow2, VMDK, VHD, a PE (UKI),
    /// an ISO 9660 image, or a GPT/MBR raw disk. A hybrid image (ISO 9660
    /// and a partition table, as osk's .iso and .raw both are) is a CD when
    /// its name ends in `.iso`.
    pub fn detect(path: &Path) -> Result<BootImage> {
        let mut f = File::open(path).map_err(Error::io(path))?;
        let len = f.metadata().map_err(Error::io(path))?.len();
        let mut head = vec![0u8; ISO_MAGIC_AT + 5];
        let n = read_full(&mut f, &mut head).map_err(Error::io(path))?;
        let head = &head[..n];
        let mut tail = [0u8; 512];
        if len >= 512 {
            f.seek(SeekFrom::Start(len - 512))
                .map_err(Error::io(path))?;
            read_full(&mut f, &mut tail).map_err(Error::io(path))?;
        }
        let disk = |format| {
            Ok(BootImage::Disk {
                path: path.to_path_buf(),
                format,
            })
        };
        if head.starts_with(b"QFI\xfb") {
            return disk(ImageFormat::Qcow2);
        }
        if head.starts_with(b"KDMV") {
            return disk(ImageFormat::Vmdk);
        }
        if tail.starts_with(b"conectix") || head.starts_with(b"conectix") {
            return disk(ImageFormat::Vpc);
        }
        if head.starts_with(b"MZ") {
            return Ok(BootImage::Uki(path.to_path_buf()));
        }
        let partitioned =
            head.len() >= 520 && (&head[512..520] == b"EFI PART" || head[510..512] == [0x55, 0xaa]);
        let iso9660 = head.get(ISO_MAGIC_AT..ISO_MAGIC_AT + 5) == Some(b"CD001");
        let named_iso = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("iso"));
        if iso9660 && (named_iso || !partitioned) {
            return Ok(BootImage::Cd(path.to_path_buf()));
        }
        if partitioned {
            return disk(ImageFormat::Raw);
        }
        Err(Error::InvalidFlag {
            flag: "NAME",
            value: path.display().to_string(),
            reason:
                "is a file but not an ISO, a disk image (raw GPT/MBR, qcow2, vhd, vmdk) or a UKI; \
                     for kernel+initrd give the prefix (out/minimal for out/minimal-kernel)"
                    .into(),
        })
    }

    /// The architecture the image boots on, where its bytes say: a UKI's PE
    /// machine; for an ISO or an uncompressed disk (raw, qcow2, vhd), the FAT
    /// directory entry of UEFI's removable-media loader (`BOOTAA64.EFI`) in
    /// its first 64 MiB, where osk's images keep their ESP. None: unknown
    /// (a compressed VMDK, an empty ESP); `--arch` says it.
    pub fn arch(&self) -> Result<Option<Arch>> {
        let path = match self {
            BootImage::Disk { path, .. } | BootImage::Cd(path) | BootImage::Uki(path) => path,
        };
        let f = File::open(path).map_err(Error::io(path))?;
        if let BootImage::Uki(_) = self {
            let mut head = vec![0u8; 4096];
            let n = read_full(&mut f.take(4096), &mut head).map_err(Error::io(path))?;
            let m = image::pe_machine(&head[..n]);
            return Ok(Arch::ALL.into_iter().find(|a| Some(a.pe_machine()) == m));
        }
        let names: Vec<(Arch, [u8; 11])> = Arch::ALL
            .into_iter()
            .map(|a| (a, fat_short_name(&a.efi_boot_path())))
            .collect();
        let mut r = f.take(64 << 20);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = read_full(&mut r, &mut buf).map_err(Error::io(path))?;
            // Directory entries are 32 bytes, at 32-byte offsets of a 1 MiB chunk.
            for entry in buf[..n].chunks_exact(32) {
                if let Some((a, _)) = names.iter().find(|(_, name)| entry[..11] == name[..]) {
                    return Ok(Some(*a));
                }
            }
            if n < buf.len() {
                return Ok(None);
            }
        }
    }

    /// The image as a disk, the way a USB stick holding it is seen: a CD becomes a raw disk.
    pub fn as_disk(self) -> BootImage {
        match self {
            BootImage::Cd(path) => BootImage::Disk {
                path,
                format: ImageFormat::Raw,
            },
            other => other,
        }
    }
}

/// Where ISO 9660's first volume descriptor says "CD001".
const ISO_MAGIC_AT: usize = 16 * 2048 + 1;

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `EFI/BOOT/BOOTAA64.EFI`'s file name as FAT's 8.3 directory entry holds it.
fn fat_short_name(path: &str) -> [u8; 11] {
    let file = path.rsplit('/').next().unwrap_or(path);
    let (stem, ext) = file.split_once('.').unwrap_or((file, ""));
    let mut n = [b' '; 11];
    n[..stem.len().min(8)].copy_from_slice(&stem.as_bytes()[..stem.len().min(8)]);
    n[8..8 + ext.len().min(3)].copy_from_slice(&ext.as_bytes()[..ext.len().min(3)]);
    n
}

/// Writes `uki` as UEFI's removable-media loader of its architecture
/// (`\EFI\BOOT\BOOTX64.EFI`, `BOOTAA64.EFI` for an arm64 PE) of a GPT disk at `dest`.
pub fn write_uki_esp(uki: &Path, dest: &Path) -> Result<()> {
    let data = fs::read(uki).map_err(Error::io(uki))?;
    let arch = match image::pe_machine(&data) {
        Some(m) if m == Arch::Arm64.pe_machine() => Arch::Arm64,
        _ => Arch::Amd64,
    };
    let loader = arch.efi_boot_path();
    let invalid = |e: image::ImageError| Error::InvalidFlag {
        flag: "NAME",
        value: uki.display().to_string(),
        reason: e.to_string(),
    };
    let esp = image::write_fat(
        &[FatFile {
            path: &loader,
            data: &data,
        }],
        "ESP",
        b"osk run",
        0,
        image::ESP_START / 512,
    )
    .map_err(invalid)?;
    let disk = image::efi_disk(esp, b"osk run", None).map_err(invalid)?;
    let mut f = File::create(dest).map_err(Error::io(dest))?;
    disk.write_sparse(&mut f).map_err(Error::io(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, head: &[u8], tail: &[u8]| {
            let mut b = vec![0u8; 4096.max(head.len() + 512)];
            b[..head.len()].copy_from_slice(head);
            let n = b.len();
            b[n - 512..n - 512 + tail.len()].copy_from_slice(tail);
            let p = dir.path().join(name);
            fs::write(&p, b).unwrap();
            p
        };
        let fmt = |p: PathBuf| match BootImage::detect(&p).unwrap() {
            BootImage::Disk { format, .. } => format.as_str(),
            BootImage::Uki(_) => "uki",
            BootImage::Cd(_) => "cd",
        };
        assert_eq!(fmt(write("a", b"QFI\xfb", b"")), "qcow2");
        assert_eq!(fmt(write("b", b"KDMV", b"")), "vmdk");
        assert_eq!(fmt(write("c", b"", b"conectix")), "vpc");
        assert_eq!(fmt(write("d", b"MZ", b"")), "uki");
        let mut gpt = vec![0u8; 520];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(fmt(write("e", &gpt, b"")), "raw");
        let err = BootImage::detect(&write("f", b"hello", b""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an ISO, a disk image"), "{err}");
        // ISO 9660: a CD when named .iso or unpartitioned; osk's hybrid .raw is a disk.
        let mut iso = vec![0u8; ISO_MAGIC_AT + 5];
        iso[ISO_MAGIC_AT..].copy_from_slice(b"CD001");
        assert_eq!(fmt(write("plain", &iso, b"")), "cd");
        iso[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(fmt(write("x.iso", &iso, b"")), "cd");
        assert_eq!(fmt(write("x.raw", &iso, b"")), "raw");
        let cd = BootImage::detect(&write("y.ISO", &iso, b"")).unwrap();
        assert!(matches!(
            cd.as_disk(),
            BootImage::Disk {
                format: ImageFormat::Raw,
                ..
            }
        ));
    }

    #[test]
    fn a_uki_gets_an_esp_disk() {
        let dir = tempfile::tempdir().unwrap();
        let uki = dir.path().join("x.efi");
        fs::write(&uki, b"MZ not really").unwrap();
        let disk = dir.path().join("esp.raw");
        write_uki_esp(&uki, &disk).unwrap();
        let image = BootImage::detect(&disk).unwrap();
        match &image {
            BootImage::Disk { format, .. } => assert_eq!(*format, ImageFormat::Raw),
            other => panic!("{other:?}"),
        }
        assert_eq!(image.arch().unwrap(), Some(Arch::Amd64));
        // An arm64 UKI: its PE machine says so, and its ESP holds BOOTAA64.EFI.
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        fs::write(&uki, &pe).unwrap();
        assert_eq!(
            BootImage::Uki(uki.clone()).arch().unwrap(),
            Some(Arch::Arm64)
        );
        write_uki_esp(&uki, &disk).unwrap();
        assert_eq!(
            BootImage::detect(&disk).unwrap().arch().unwrap(),
            Some(Arch::Arm64)
        );
        assert_eq!(fat_short_name("EFI/BOOT/BOOTX64.EFI"), *b"BOOTX64 EFI");
    }
}
