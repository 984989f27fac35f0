//! systemd's `binfmt.d` lines (`:name:type:offset:magic:mask:interpreter:flags`),
//! the form Debian's qemu-user-static ships its handlers in.

use std::path::{Path, PathBuf};

/// ELF `e_machine` values osk cares about.
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// One handler, as the kernel's `register` file takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub name: String,
    /// `M` (magic bytes) or `E` (file extension).
    pub kind: char,
    pub offset: String,
    /// Escaped as written (`\x7f\x45...`); the kernel unescapes it.
    pub magic: String,
    pub mask: String,
    pub interpreter: PathBuf,
    pub flags: String,
}

/// A line that is not a handler.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct ConfError {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

/// Every handler in `text` (read from `file`, named in errors). Empty lines
/// and lines starting with `#` or `;` are comments, as in systemd.
pub fn parse(text: &str, file: &Path) -> Result<Vec<Handler>, ConfError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let err = |reason: String| ConfError {
            file: file.to_path_buf(),
            line: i + 1,
            reason,
        };
        out.push(parse_line(line).map_err(err)?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Handler, String> {
    // The first character is the separator, whatever it is (usually `:`).
    let sep = line.chars().next().unwrap_or(':');
    let f: Vec<&str> = line[sep.len_utf8()..].split(sep).collect();
    if f.len() != 7 {
        return Err(format!(
            "expected 7 fields after `{sep}` (name, type, offset, magic, mask, interpreter, flags), found {}",
            f.len()
        ));
    }
    let name = f[0];
    if name.is_empty() || name.contains('/') || matches!(name, "." | ".." | "register" | "status") {
        return Err(format!("{name:?} is not a usable handler name"));
    }
    let kind = match f[1] {
        "M" => 'M',
        "E" => 'E',
        other => {
            return Err(format!(
                "type {other:?} is neither M (magic) nor E (extension)"
            ))
        }
    };
    if !f[2].chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("offset {:?} is not a number", f[2]));
    }
    if f[3].is_empty() {
        return Err("the magic (or extension) is empty".into());
    }
    let interpreter = PathBuf::from(f[5]);
    if !interpreter.is_absolute() {
        return Err(format!("interpreter {:?} is not an absolute path", f[5]));
    }
    if let Some(c) = f[6].chars().find(|c| !"POCF".contains(*c)) {
        return Err(format!("unknown flag {c:?} (known: P, O, C, F)"));
    }
    Ok(Handler {
        name: name.into(),
        kind,
        offset: f[2].into(),
        magic: f[3].into(),
        mask: f[4].into(),
        interpreter,
        flags: f[6].into(),
    })
}

impl Handler {
    /// The line written to `register`, always with `F` (fix binary): the
    /// kernel opens the interpreter now, in this container, so it runs in
    /// every other container, whose root does not have it.
    pub fn register_line(&self) -> String {
        let mut flags = self.flags.clone();
        if !flags.contains('F') {
            flags.push('F');
        }
        format!(
            ":{}:{}:{}:{}:{}:{}:{}",
            self.name,
            self.kind,
            self.offset,
            self.magic,
            self.mask,
            self.interpreter.display(),
            flags
        )
    }

    /// The ELF machine this handler's magic matches, if it matches ELF files.
    pub fn elf_machine(&self) -> Option<u16> {
        if self.kind != 'M' || !matches!(self.offset.as_str(), "" | "0") {
            return None;
        }
        let m = unescape(&self.magic);
        if m.len() < 20 || m[..4] != *b"\x7fELF" {
            return None;
        }
        let bytes = [m[18], m[19]];
        // EI_DATA: 2 is big-endian.
        Some(if m[5] == 2 {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        })
    }

    /// Whether this machine runs the handler's binaries itself: registering
    /// it would send native programs through an emulator.
    pub fn is_native(&self, arch: &str) -> bool {
        let native: &[u16] = match arch {
            "x86_64" => &[EM_X86_64, EM_386],
            "aarch64" => &[EM_AARCH64],
            _ => &[],
        };
        let by_name = self.name == format!("qemu-{arch}");
        by_name || self.elf_machine().is_some_and(|m| native.contains(&m))
    }
}

/// `\xHH` and `\\` decoded as the kernel decodes magic and mask.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            let hex = b
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian bookworm's qemu-user-static, /usr/lib/binfmt.d/qemu-aarch64.conf.
    const AARCH64: &str = r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF";
    /// The same package's arm64 build, qemu-x86_64.conf.
    const X86_64: &str = r":qemu-x86_64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00:\xff\xff\xff\xff\xff\xfe\xfe\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/x86_64-binfmt-P:OPF";

    fn one(line: &str) -> Handler {
        let mut h = parse(line, Path::new("t.conf")).unwrap();
        assert_eq!(h.len(), 1);
        h.remove(0)
    }

    #[test]
    fn reads_debians_conf_and_skips_comments() {
        let text = format!("# qemu\n\n; also a comment\n{AARCH64}\n");
        let h = one(&text);
        assert_eq!(h.name, "qemu-aarch64");
        assert_eq!(h.kind, 'M');
        assert_eq!(h.offset, "");
        assert!(h.magic.starts_with(r"\x7f\x45"));
        assert_eq!(
            h.interpreter,
            Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P")
        );
        assert_eq!(h.flags, "OPF");
        assert_eq!(h.elf_machine(), Some(EM_AARCH64));
        assert_eq!(one(X86_64).elf_machine(), Some(EM_X86_64));
    }

    #[test]
    fn the_register_line_is_the_conf_line_and_always_fixes_the_binary() {
        assert_eq!(one(AARCH64).register_line(), AARCH64);
        let no_f = AARCH64.replace(":OPF", ":OP");
        assert!(one(&no_f).register_line().ends_with(":OPF"));
        let no_flags = AARCH64.replace(":OPF", ":");
        assert!(one(&no_flags).register_line().ends_with("-binfmt-P:F"));
    }

    #[test]
    fn native_handlers_are_recognised_by_machine_or_name() {
        assert!(one(AARCH64).is_native("aarch64"));
        assert!(!one(AARCH64).is_native("x86_64"));
        assert!(one(X86_64).is_native("x86_64"));
        assert!(!one(X86_64).is_native("aarch64"));
        // i386 runs natively on x86_64, whatever the handler's name.
        let i386 = X86_64
            .replace("qemu-x86_64", "i386-emu")
            .replace(r"\x02\x00\x3e\x00:", r"\x02\x00\x03\x00:");
        assert!(one(&i386).is_native("x86_64"));
    }

    #[test]
    fn a_bad_line_names_file_line_and_field() {
        let cases = [
            (":qemu-x:M::\\x7f:\\xff:/usr/bin/q", "expected 7 fields"),
            (":qemu-x:Z::\\x7f:\\xff:/usr/bin/q:F", "type \"Z\""),
            (
                ":../x:M::\\x7f:\\xff:/usr/bin/q:F",
                "not a usable handler name",
            ),
            (
                ":register:M::\\x7f:\\xff:/usr/bin/q:F",
                "not a usable handler name",
            ),
            (":q:M:x:\\x7f:\\xff:/usr/bin/q:F", "offset \"x\""),
            (":q:M::\\x7f:\\xff:usr/bin/q:F", "not an absolute path"),
            (":q:M::\\x7f:\\xff:/usr/bin/q:FX", "unknown flag 'X'"),
            (":q:M:::\\xff:/usr/bin/q:F", "magic"),
        ];
        for (line, want) in cases {
            let text = format!("# first\n{line}\n");
            let e = parse(&text, Path::new("/x/q.conf")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("/x/q.conf:2: "), "{msg}");
            assert!(msg.contains(want), "{line}: {msg}");
        }
    }

    #[test]
    fn unescapes_like_the_kernel() {
        assert_eq!(unescape(r"\x7fELF\\"), b"\x7fELF\\");
        assert_eq!(unescape(r"\xz1"), b"\\xz1");
    }
}
