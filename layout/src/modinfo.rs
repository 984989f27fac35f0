//! A kernel module's `.modinfo`: the NUL-separated `key=value` strings the
//! kernel build puts into every `.ko` (`depends=`, `alias=`, `softdep=`...).
//!
//! The builder reads it to pick a module's dependencies when it packs a
//! kernel, osk-init to order and match modules at boot. Both go through
//! [`read`], which fetches only the ELF headers and that one section: init
//! indexes every shipped module on each boot.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a 64-bit little-endian ELF module")]
    NotElf,
    #[error("no .modinfo section")]
    NoModinfo,
}

/// A module's name as the kernel knows it (`-` and `_` are the same).
pub fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// Reads the `.modinfo` strings of an ELF64 module through `read_at(offset,
/// buf)`, which must fill `buf` from `offset` or fail.
pub fn read(
    read_at: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<Vec<String>, Error> {
    let mut eh = [0u8; 64];
    read_at(0, &mut eh).map_err(not_elf_if_short)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Err(Error::NotElf);
    }
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u16_at(&eh, 0x3a);
    let shnum = u16_at(&eh, 0x3c);
    let shstrndx = u16_at(&eh, 0x3e);
    if shentsize < 64 || shstrndx >= shnum {
        return Err(Error::NotElf);
    }
    let mut sh = vec![0u8; plausible(shentsize * shnum)?];
    read_at(shoff, &mut sh).map_err(not_elf_if_short)?;
    // (name offset, file offset, size) of section header `i`.
    let section = |i: u64| {
        let b = &sh[(i * shentsize) as usize..];
        (u32_at(b, 0), u64_at(b, 24), u64_at(b, 32))
    };
    let (_, str_off, str_size) = section(shstrndx);
    let mut names = vec![0u8; plausible(str_size)?];
    read_at(str_off, &mut names).map_err(not_elf_if_short)?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i);
        let name = names
            .get(name_off as usize..)
            .and_then(|n| n.split(|c| *c == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            let mut data = vec![0u8; plausible(size)?];
            read_at(off, &mut data).map_err(not_elf_if_short)?;
            return Ok(data
                .split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }
    Err(Error::NoModinfo)
}

/// [`read`] over a module held in memory.
pub fn from_bytes(ko: &[u8]) -> Result<Vec<String>, Error> {
    read(&mut |off, buf| {
        let start = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| ko.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    })
}

/// The `depends=` modules, normalized.
pub fn depends(modinfo: &[String]) -> Vec<String> {
    modinfo
        .iter()
        .filter_map(|kv| kv.strip_prefix("depends="))
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
        .map(normalize)
        .collect()
}

/// A size worth allocating: the header table, the names and `.modinfo` are
/// a few KiB in a real module, and a corrupt header must not make PID 1
/// allocate gigabytes.
fn plausible(size: u64) -> Result<usize, Error> {
    const MAX: u64 = 4 << 20;
    if size > MAX {
        return Err(Error::NotElf);
    }
    Ok(size as usize)
}

/// An offset or size past the end of the file: the headers lie.
fn not_elf_if_short(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::NotElf
    } else {
        Error::Io(e)
    }
}

fn u16_at(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}

fn u32_at(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as u64
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

/// A minimal ELF64 with only a `.modinfo` section (and the section-name
/// table), laid out as the kernel build lays out a `.ko`: for tests on both
/// sides of the contract.
#[cfg(any(test, feature = "test-util"))]
pub fn synthetic_module(modinfo: &[u8]) -> Vec<u8> {
    let shstr = b"\0.shstrtab\0.modinfo\0";
    let data_off = 64u64;
    let shstr_off = data_off + modinfo.len() as u64;
    let shoff = shstr_off + shstr.len() as u64;
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(b"\x7fELF\x02\x01");
    f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(modinfo);
    f.extend_from_slice(shstr);
    for (name, off, size) in [
        (0u32, 0u64, 0u64),
        (1, shstr_off, shstr.len() as u64),
        (11, data_off, modinfo.len() as u64),
    ] {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&name.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        f.extend(h);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_strings_and_normalized_depends() {
        let ko =
            synthetic_module(b"license=GPL\0depends=net_failover,virtio-ring\0\0name=virtio_net\0");
        let info = from_bytes(&ko).unwrap();
        assert_eq!(
            info,
            [
                "license=GPL",
                "depends=net_failover,virtio-ring",
                "name=virtio_net"
            ]
        );
        assert_eq!(depends(&info), ["net_failover", "virtio_ring"]);
        assert!(depends(&from_bytes(&synthetic_module(b"depends=\0")).unwrap()).is_empty());
    }

    #[test]
    fn rejects_what_is_not_a_module() {
        assert!(matches!(from_bytes(b"nope"), Err(Error::NotElf)));
        let mut ko = synthetic_module(b"x=1\0");
        ko[4] = 1; // ELF32
        assert!(matches!(from_bytes(&ko), Err(Error::NotElf)));
        // A section size no module has (the allocation is refused up front).
        let mut ko = synthetic_module(b"x=1\0");
        let sh = ko.len() - 64;
        ko[sh + 32..sh + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(from_bytes(&ko), Err(Error::NotElf)));
        // Section headers pointing past the end.
        let ko = synthetic_module(b"x=1\0");
        assert!(matches!(
            from_bytes(&ko[..ko.len() - 10]),
            Err(Error::NotElf)
        ));
        // A valid ELF whose only section has another name.
        let mut ko = synthetic_module(b"x=1\0");
        let at = ko.windows(8).position(|w| w == b".modinfo").unwrap();
        ko[at..at + 8].copy_from_slice(b".comment");
        assert!(matches!(from_bytes(&ko), Err(Error::NoModinfo)));
    }
}
