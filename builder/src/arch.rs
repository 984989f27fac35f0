//! The CPU architectures osk builds for, and their names in OCI, Debian and Rust.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A target architecture. `--arch` takes its OCI name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown architecture `{given}`: osk builds for {}", Arch::supported())]
pub struct UnknownArch {
    /// What was asked for, escaped.
    pub given: String,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The host's architecture; amd64 on a host osk does not build for
    /// (builds are cross-builds, so any default is only a default).
    pub fn host() -> Arch {
        match std::env::consts::ARCH {
            "aarch64" => Arch::Arm64,
            _ => Arch::Amd64,
        }
    }

    /// The OCI name (`amd64`, `arm64`), also the Debian architecture.
    pub fn oci(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Debian's architecture name (the same words for these two).
    pub fn debian(self) -> &'static str {
        self.oci()
    }

    /// Debian's multiarch triplet: the `usr/lib/TRIPLET` directory.
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The Rust target osk's own binaries are built for: static either way;
    /// musl for arm64, so cross-building needs no C toolchain (rust-lld links).
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The QEMU system emulator for this architecture.
    pub fn qemu_system(self) -> &'static str {
        match self {
            Arch::Amd64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package that has [`Arch::qemu_system`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::Amd64 => "qemu-system-x86",
            Arch::Arm64 => "qemu-system-arm",
        }
    }

    /// UEFI's name for it in file names: `x64`, `aa64` (`BOOTAA64.EFI`,
    /// systemd's `linuxaa64.efi.stub`).
    pub fn efi(self) -> &'static str {
        match self {
            Arch::Amd64 => "x64",
            Arch::Arm64 => "aa64",
        }
    }

    /// The removable-media path UEFI firmware boots on this architecture.
    pub fn efi_boot_path(self) -> String {
        format!("EFI/BOOT/BOOT{}.EFI", self.efi().to_ascii_uppercase())
    }

    /// The PE/COFF machine type of its EFI binaries.
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 0x8664,
            Arch::Arm64 => 0xaa64,
        }
    }

    /// Whether its firmware may be a PC BIOS (isolinux, MBR boot code).
    pub fn has_bios(self) -> bool {
        self == Arch::Amd64
    }

    /// The architecture a kernel image is for, from its boot header: arm64's
    /// `Image` has the magic `ARM\x64` at 0x38, x86's bzImage `HdrS` at 0x202.
    /// A gzip'd `Image` (`Image.gz`, what osk's arm64 kernel package holds) is
    /// read through its first inflated bytes; `head` may be a prefix of the file.
    pub fn of_kernel(head: &[u8]) -> Option<Arch> {
        if is_gzip(head) {
            let inner = gunzip_prefix(head, 0x40);
            return (inner.get(0x38..0x3c) == Some(b"ARM\x64")).then_some(Arch::Arm64);
        }
        if head.get(0x38..0x3c) == Some(b"ARM\x64") {
            Some(Arch::Arm64)
        } else if head.get(0x202..0x206) == Some(b"HdrS") {
            Some(Arch::Amd64)
        } else {
            None
        }
    }

    /// The supported names, comma-separated, for messages.
    pub fn supported() -> String {
        Arch::ALL.map(Arch::oci).join(", ")
    }

    /// Parses `amd64,arm64`: each once, in the order given.
    pub fn parse_list(text: &str) -> Result<Vec<Arch>, UnknownArch> {
        let mut out: Vec<Arch> = Vec::new();
        for part in text.split(',') {
            let a: Arch = part.trim().parse()?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }
}

/// Whether `cmdline` names consoles and all are x86 serial ports (`ttyS*`),
/// as manifests written for amd64 do: an arm64 machine's serial port, the
/// PL011 `ttyAMA0`, must then be added last, to be `/dev/console`.
pub fn names_only_x86_serial(cmdline: &str) -> bool {
    let mut consoles = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("console="))
        .peekable();
    consoles.peek().is_some() && consoles.all(|c| c.starts_with("ttyS"))
}

/// Whether `data` starts with gzip's magic (an `Image.gz`).
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// Up to `n` bytes inflated from the start of the gzip stream `data`, which
/// may be cut short: whatever inflates before the cut.
pub fn gunzip_prefix(data: &[u8], n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut out = vec![0u8; n];
    let mut got = 0;
    let mut gz = flate2::read::GzDecoder::new(data);
    while got < n {
        match gz.read(&mut out[got..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    out.truncate(got);
    out
}

impl FromStr for Arch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Arch, UnknownArch> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(UnknownArch {
                given: crate::untrusted::quote(s.as_bytes()),
            }),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.oci())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for a in Arch::ALL {
            assert_eq!(a.to_string().parse::<Arch>(), Ok(a));
        }
        assert_eq!("aarch64".parse::<Arch>(), Ok(Arch::Arm64));
        assert_eq!(Arch::Arm64.triplet(), "aarch64-linux-gnu");
        assert_eq!(Arch::Arm64.efi_boot_path(), "EFI/BOOT/BOOTAA64.EFI");
        assert_eq!(Arch::Amd64.efi_boot_path(), "EFI/BOOT/BOOTX64.EFI");
    }

    #[test]
    fn an_unknown_arch_lists_the_supported_ones() {
        let err = "riscv64".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("`riscv64`"), "{err}");
        assert!(err.ends_with("osk builds for amd64, arm64"), "{err}");
    }

    #[test]
    fn x86_only_serial_consoles_are_told() {
        assert!(names_only_x86_serial("console=ttyS0 quiet"));
        assert!(!names_only_x86_serial("console=ttyS0 console=ttyAMA0"));
        assert!(!names_only_x86_serial("quiet"));
    }

    #[test]
    fn a_list_keeps_order_and_drops_repeats() {
        assert_eq!(
            Arch::parse_list("arm64,amd64,arm64"),
            Ok(vec![Arch::Arm64, Arch::Amd64])
        );
        assert!(Arch::parse_list("amd64,,arm64").is_err());
    }

    #[test]
    fn kernels_say_their_arch() {
        let mut arm = vec![0u8; 64];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(Arch::of_kernel(&arm), Some(Arch::Arm64));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(Arch::of_kernel(&bz), Some(Arch::Amd64));
        assert_eq!(Arch::of_kernel(b"bzImage"), None);
        // Image.gz, read from a prefix of the file as `osk run` does.
        use std::io::Write;
        arm.extend(std::iter::repeat_n(7u8, 1 << 16));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&arm).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(Arch::of_kernel(&gz[..gz.len() / 2]), Some(Arch::Arm64));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&bz).unwrap();
        assert_eq!(Arch::of_kernel(&gz.finish().unwrap()), None);
    }
}
