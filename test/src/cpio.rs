//! A tiny writer for the kernel's initramfs format (`newc` cpio).
//!
//! Written here rather than shelling out to `cpio` so test images can hold
//! device nodes (`/dev/console`) without root, and come out byte-identical
//! run after run (fixed inode numbers, owners and mtimes).

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// An archive being assembled in memory; entries keep the order they are added
/// in, so add parents before children.
#[derive(Default)]
pub struct Archive {
    entries: Vec<Entry>,
}

struct Entry {
    name: String,
    mode: u32,
    data: Vec<u8>,
    rdev: (u32, u32),
}

impl Archive {
    pub fn new() -> Archive {
        Archive::default()
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.push(name, S_IFDIR | 0o755, Vec::new(), (0, 0))
    }

    pub fn file(&mut self, name: &str, perm: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        self.push(name, S_IFREG | perm, data.into(), (0, 0))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(name, S_IFLNK | 0o777, target.as_bytes().to_vec(), (0, 0))
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.push(name, S_IFCHR | perm, Vec::new(), (major, minor))
    }

    fn push(&mut self, name: &str, mode: u32, data: Vec<u8>, rdev: (u32, u32)) -> &mut Self {
        self.entries.push(Entry {
            name: name.trim_start_matches('/').to_string(),
            mode,
            data,
            rdev,
        });
        self
    }

    /// Writes the archive, trailer included.
    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        for (i, e) in self.entries.iter().enumerate() {
            write_entry(&mut out, i as u32 + 1, e)?;
        }
        write_entry(
            &mut out,
            0,
            &Entry {
                name: "TRAILER!!!".into(),
                mode: 0,
                data: Vec::new(),
                rdev: (0, 0),
            },
        )
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn write_entry(out: &mut impl Write, ino: u32, e: &Entry) -> io::Result<()> {
    let nlink = if e.mode & S_IFDIR != 0 { 2 } else { 1 };
    let fields = [
        ino,
        e.mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed so archives are reproducible
        e.data.len() as u32,
        0, // devmajor
        0, // devminor
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1,
        0, // check
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(e.name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(110 + e.name.len() + 1)])?;
    out.write_all(&e.data)?;
    out.write_all(&[0; 3][..pad4(e.data.len())])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_newc() {
        let mut a = Archive::new();
        a.dir("dev")
            .char_dev("dev/console", 0o600, 5, 1)
            .file("init", 0o755, "x");
        let b = a.to_bytes();
        assert!(b.starts_with(b"070701"));
        // Every header starts on a 4-byte boundary.
        let text = String::from_utf8_lossy(&b);
        for (at, _) in text.match_indices("070701") {
            assert_eq!(at % 4, 0);
        }
        // The console node carries major 5, minor 1 in the rdev fields.
        let console = text.find("dev/console").unwrap() - 110;
        assert_eq!(&text[console + 78..console + 94], "0000000500000001");
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(a.to_bytes(), b);
    }

    /// GNU cpio, when present, must list what we wrote.
    #[test]
    fn gnu_cpio_reads_it() {
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio not installed; skipping");
            return;
        };
        let mut a = Archive::new();
        a.dir("bin")
            .file("bin/hello", 0o644, "hello\n")
            .symlink("bin/sh", "busybox");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&a.to_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "bin\nbin/hello\nbin/sh\n"
        );
    }
}
