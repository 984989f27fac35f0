//! Unified Kernel Images: systemd's EFI stub with the kernel, initrd and command line as PE sections.

use super::ImageError;

/// What goes into the UKI besides the stub.
pub struct UkiParts<'a> {
    pub osrel: &'a [u8],
    pub cmdline: &'a [u8],
    pub uname: Option<&'a [u8]>,
    pub initrd: &'a [u8],
    pub linux: &'a [u8],
}

const SECTION_HEADER: usize = 40;
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ.
const DATA_READ: u32 = 0x4000_0040;

/// The stub's headers, read from fixed PE32+ offsets.
struct Pe {
    coff: usize,
    opt: usize,
    sections: usize,
    count: usize,
    size_of_headers: usize,
    section_alignment: u32,
    file_alignment: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn parse(stub: &[u8], name: &str) -> Result<Pe, ImageError> {
    let bad = |reason: &str| ImageError::Stub {
        stub: name.to_string(),
        reason: reason.to_string(),
    };
    if stub.len() < 0x40 || &stub[..2] != b"MZ" {
        return Err(bad("no MZ header"));
    }
    let coff = u32_at(stub, 0x3c) as usize + 4;
    if stub.len() < coff + 20 || &stub[coff - 4..coff] != b"PE\0\0" {
        return Err(bad("no PE signature"));
    }
    let opt = coff + 20;
    let opt_size = u16_at(stub, coff + 16) as usize;
    if stub.len() < opt + opt_size || opt_size < 112 || u16_at(stub, opt) != 0x20b {
        return Err(bad("not a PE32+ image"));
    }
    let pe = Pe {
        coff,
        opt,
        sections: opt + opt_size,
        count: u16_at(stub, coff + 2) as usize,
        size_of_headers: u32_at(stub, opt + 60) as usize,
        section_alignment: u32_at(stub, opt + 32),
        file_alignment: u32_at(stub, opt + 36),
    };
    if !pe.section_alignment.is_power_of_two() || !pe.file_alignment.is_power_of_two() {
        return Err(bad("section or file alignment is not a power of two"));
    }
    if pe.sections + pe.count * SECTION_HEADER > stub.len().min(pe.size_of_headers) {
        return Err(bad("section table runs past the headers"));
    }
    Ok(pe)
}

/// Where the added sections' data starts, in the file and in memory: a
/// multiple of ISO 9660's block, so the ISO can name `.linux` and `.initrd`
/// as files instead of storing them twice.
pub const SECTION_ALIGN: u64 = 2048;

/// Appends the UKI sections to `stub` (named `stub_name` in errors); returns the UKI.
///
/// Sections follow the stub's last one in memory and in the file, each at
/// [`SECTION_ALIGN`] (a multiple of the stub's alignments); `.linux` goes
/// last, as the stub and ukify expect.
pub fn write_uki(stub: &[u8], stub_name: &str, parts: &UkiParts) -> Result<Vec<u8>, ImageError> {
    let pe = parse(stub, stub_name)?;
    let mut new: Vec<(&str, &[u8])> = vec![(".osrel", parts.osrel), (".cmdline", parts.cmdline)];
    if let Some(u) = parts.uname {
        new.push((".uname", u));
    }
    new.push((".initrd", parts.initrd));
    new.push((".linux", parts.linux));

    let table_end = pe.sections + (pe.count + new.len()) * SECTION_HEADER;
    let first_raw = (0..pe.count)
        .map(|i| u32_at(stub, pe.sections + i * SECTION_HEADER + 20) as usize)
        .filter(|&p| p != 0)
        .min()
        .unwrap_or(pe.size_of_headers);
    if table_end > pe.size_of_headers.min(first_raw) {
        return Err(ImageError::Stub {
            stub: stub_name.to_string(),
            reason: format!(
                "no room for {} more section headers before its first section",
                new.len()
            ),
        });
    }
    let sa = u64::from(pe.section_alignment).max(SECTION_ALIGN);
    let fa = u64::from(pe.file_alignment).max(SECTION_ALIGN);
    let mut vma_end = 0u64;
    for i in 0..pe.count {
        let h = pe.sections + i * SECTION_HEADER;
        let va = u64::from(u32_at(stub, h + 12));
        let vs = u64::from(u32_at(stub, h + 8)).max(u64::from(u32_at(stub, h + 16)));
        vma_end = vma_end.max(va + vs);
    }
    let mut out = stub.to_vec();
    let mut vma = align(vma_end, sa);
    let mut raw = align(out.len() as u64, fa);
    let mut init_data = u64::from(u32_at(stub, pe.opt + 8));
    for (i, (name, data)) in new.iter().enumerate() {
        let len = data.len() as u64;
        let raw_len = align(len, fa);
        let too_big = |_| ImageError::Stub {
            stub: stub_name.to_string(),
            reason: format!("section {name} ends past 4 GiB"),
        };
        let h = pe.sections + (pe.count + i) * SECTION_HEADER;
        let mut header = [0u8; SECTION_HEADER];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut header, 8, u32::try_from(len).map_err(too_big)?);
        put_u32(&mut header, 12, u32::try_from(vma).map_err(too_big)?);
        put_u32(&mut header, 16, u32::try_from(raw_len).map_err(too_big)?);
        put_u32(&mut header, 20, u32::try_from(raw).map_err(too_big)?);
        put_u32(&mut header, 36, DATA_READ);
        out[h..h + SECTION_HEADER].copy_from_slice(&header);
        out.resize(raw as usize, 0);
        out.extend_from_slice(data);
        out.resize((raw + raw_len) as usize, 0);
        raw += raw_len;
        vma = align(vma + len, sa);
        u32::try_from(vma).map_err(too_big)?;
        init_data += raw_len;
    }
    put_u16(&mut out, pe.coff + 2, (pe.count + new.len()) as u16);
    put_u32(
        &mut out,
        pe.opt + 8,
        u32::try_from(init_data).unwrap_or(u32::MAX),
    );
    put_u32(&mut out, pe.opt + 56, vma as u32);
    let sum = checksum(&out, pe.opt + 64);
    put_u32(&mut out, pe.opt + 64, sum);
    Ok(out)
}

/// The file offset and length of section `name` of a UKI written by [`write_uki`].
pub fn section(uki: &[u8], name: &str) -> Option<(u64, u64)> {
    let pe = parse(uki, "UKI").ok()?;
    (0..pe.count).find_map(|i| {
        let h = pe.sections + i * SECTION_HEADER;
        let raw_name = &uki[h..h + 8];
        let n = raw_name.iter().position(|&c| c == 0).unwrap_or(8);
        (&raw_name[..n] == name.as_bytes()).then(|| {
            (
                u64::from(u32_at(uki, h + 20)),
                u64::from(u32_at(uki, h + 8)),
            )
        })
    })
}

/// The PE image checksum: 16-bit one's-complement-style sum with carries folded, plus the length.
fn checksum(b: &[u8], field: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in b.chunks(2).enumerate() {
        if i * 2 == field || i * 2 == field + 2 {
            continue;
        }
        let word = u64::from(chunk[0]) | chunk.get(1).map_or(0, |&h| u64::from(h) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(b.len() as u32)
}

/// The PE/COFF machine type of `pe` (0x8664 x86-64, 0xaa64 arm64), if it is a PE image.
pub fn pe_machine(pe: &[u8]) -> Option<u16> {
    if pe.len() < 0x40 || &pe[..2] != b"MZ" {
        return None;
    }
    let coff = u32_at(pe, 0x3c) as usize + 4;
    (pe.get(coff - 4..coff)? == b"PE\0\0" && pe.len() >= coff + 2).then(|| u16_at(pe, coff))
}

/// The kernel release (`6.1.0-50-amd64`) of an x86 bzImage, from its setup
/// header, or of an uncompressed arm64 Image, from its `Linux version` banner
/// (arm64's header has no pointer to it).
pub fn kernel_release(bz: &[u8], name: &str) -> Result<String, ImageError> {
    let bad = |reason: &str| ImageError::Kernel {
        kernel: name.to_string(),
        reason: reason.to_string(),
    };
    let text = if bz.get(0x38..0x3c) == Some(b"ARM\x64") {
        const BANNER: &[u8] = b"Linux version ";
        let at = bz
            .windows(BANNER.len())
            .position(|w| w == BANNER)
            .ok_or_else(|| bad("no `Linux version` banner in the arm64 Image"))?;
        &bz[at + BANNER.len()..]
    } else {
        if bz.len() < 0x210 || &bz[0x202..0x206] != b"HdrS" {
            return Err(bad(
                "neither an x86 bzImage (no HdrS setup header) nor an arm64 Image",
            ));
        }
        let at = usize::from(u16_at(bz, 0x20e)) + 0x200;
        bz.get(at..)
            .ok_or_else(|| bad("kernel version offset is past the end"))?
    };
    let end = text
        .iter()
        .position(|&c| c == b' ' || c == 0)
        .filter(|&n| n > 0 && n < 128)
        .ok_or_else(|| bad("no kernel version string"))?;
    let release = &text[..end];
    if !release.iter().all(|c| c.is_ascii_graphic()) {
        return Err(bad("kernel version string is not printable"));
    }
    Ok(String::from_utf8_lossy(release).into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal PE32+ with one `.text` section, shaped like systemd's stub.
    pub(crate) fn fake_stub() -> Vec<u8> {
        let mut b = vec![0u8; 0x600];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        put_u16(&mut b, coff + 16, 240);
        put_u16(&mut b, coff + 18, 0x206);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 16, 0x1000);
        put_u32(&mut b, opt + 32, 0x200);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x1200);
        put_u32(&mut b, opt + 60, 0x400);
        put_u16(&mut b, opt + 68, 10);
        put_u32(&mut b, opt + 108, 16);
        let s = opt + 240;
        b[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut b, s + 8, 0x100);
        put_u32(&mut b, s + 12, 0x1000);
        put_u32(&mut b, s + 16, 0x200);
        put_u32(&mut b, s + 20, 0x400);
        put_u32(&mut b, s + 36, 0x6000_0020);
        b
    }

    #[test]
    fn sections_follow_the_stub_aligned() {
        let stub = fake_stub();
        let parts = UkiParts {
            osrel: b"ID=osk\n",
            cmdline: b"console=ttyS0",
            uname: Some(b"6.1.0"),
            initrd: &[7u8; 1000],
            linux: &[9u8; 3000],
        };
        let uki = write_uki(&stub, "stub", &parts).unwrap();
        let pe = parse(&uki, "uki").unwrap();
        assert_eq!(pe.count, 6);
        let names: Vec<String> = (0..pe.count)
            .map(|i| {
                let h = pe.sections + i * SECTION_HEADER;
                String::from_utf8_lossy(&uki[h..h + 8])
                    .trim_end_matches('\0')
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
        let mut prev_end = 0x1100;
        for i in 1..pe.count {
            let h = pe.sections + i * SECTION_HEADER;
            let (vs, va, rs, rp) = (
                u32_at(&uki, h + 8),
                u32_at(&uki, h + 12),
                u32_at(&uki, h + 16),
                u32_at(&uki, h + 20),
            );
            assert_eq!(va % 0x800, 0);
            assert_eq!(rp % 0x800, 0);
            assert!(va >= prev_end);
            assert!(rs >= vs);
            prev_end = va + vs;
        }
        let h = pe.sections + 5 * SECTION_HEADER;
        let rp = u32_at(&uki, h + 20) as usize;
        assert_eq!(&uki[rp..rp + 3000], &[9u8; 3000][..]);
        assert_eq!(section(&uki, ".linux"), Some((rp as u64, 3000)));
        assert_eq!(section(&uki, ".nope"), None);
        assert_eq!(
            u32_at(&uki, pe.opt + 56) as u64,
            align(prev_end as u64, 0x800)
        );
        assert_eq!(write_uki(&stub, "stub", &parts).unwrap(), uki);
    }

    #[test]
    fn a_stub_without_room_is_refused() {
        let mut stub = fake_stub();
        put_u32(&mut stub, 0x84 + 20 + 60, 0x1b0 + 40);
        let parts = UkiParts {
            osrel: b"",
            cmdline: b"",
            uname: None,
            initrd: b"",
            linux: b"",
        };
        let err = write_uki(&stub, "stub.efi", &parts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stub.efi"), "{err}");
    }

    #[test]
    fn release_from_setup_header() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        put_u16(&mut bz, 0x20e, 0x100);
        bz[0x300..0x316].copy_from_slice(b"6.1.0-50-amd64 (debia)");
        assert_eq!(kernel_release(&bz, "k").unwrap(), "6.1.0-50-amd64");
        assert!(kernel_release(&[0u8; 10], "k")
            .unwrap_err()
            .to_string()
            .contains("bzImage"));
    }

    #[test]
    fn release_from_an_arm64_banner_and_the_stubs_machine() {
        let mut img = vec![0u8; 0x200];
        img[0x38..0x3c].copy_from_slice(b"ARM\x64");
        img.extend_from_slice(b"Linux version 6.1.0-50-arm64 (debian-kernel@lists)\0");
        assert_eq!(kernel_release(&img, "k").unwrap(), "6.1.0-50-arm64");
        assert!(kernel_release(&img[..0x100], "k")
            .unwrap_err()
            .to_string()
            .contains("banner"));
        assert_eq!(pe_machine(&fake_stub()), Some(0x8664));
        assert_eq!(pe_machine(b"MZ"), None);
    }
}
