//! Host folders shared into the guest (`osk run qemu --share`): the table
//! `osk run` hands the guest through QEMU's fw_cfg, and osk-init reads back
//! to mount each tag (virtio-9p or virtiofs) where it belongs.
//!
//! The table is text, one share per line: `TAG<TAB>OPTIONS<TAB>GUEST_PATH`,
//! OPTIONS being `ro` or `rw`, then `,virtiofs` for a virtiofs tag (a bare
//! mode is 9p, as the first tables were). A 9p mount tag holds at most 31
//! bytes, too few for a path, hence the table.

use std::fmt;

/// The fw_cfg file name (QEMU wants `opt/` and a reverse domain for names of one's own).
pub const FW_CFG_NAME: &str = "opt/org.osk/shares";
/// Where the guest kernel shows that file (module qemu_fw_cfg).
pub const FW_CFG_RAW: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.osk/shares/raw";
/// The longest mount tag virtio-9p accepts.
pub const MAX_TAG: usize = 31;

/// The filesystem a share arrives by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fs {
    /// virtio-9p: built into QEMU, no daemon on the host.
    #[default]
    NineP,
    /// virtiofs: a virtiofsd on the host; page-cache coherent and much
    /// faster on metadata-heavy work (builds, `git status`).
    Virtiofs,
}

impl Fs {
    /// The guest's filesystem type for mount(2).
    pub fn fstype(self) -> &'static str {
        match self {
            Fs::NineP => "9p",
            Fs::Virtiofs => "virtiofs",
        }
    }
}

/// One shared folder as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The mount tag (`osk0`, `osk1`, ...).
    pub tag: String,
    /// Absolute guest path to mount it on.
    pub path: String,
    pub readonly: bool,
    pub fs: Fs,
}

/// A table line that is not a share; names the line and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("share table line {line}: {reason}")]
pub struct TableError {
    pub line: usize,
    pub reason: String,
}

impl Share {
    /// The tag of the `index`th share.
    pub fn tag_for(index: usize) -> String {
        format!("osk{index}")
    }

    /// Why `path` cannot be a guest mount point, if it cannot: it must be
    /// absolute, normal (no `.`/`..`/empty parts), not `/`, and free of the
    /// table's separators.
    pub fn path_problem(path: &str) -> Option<&'static str> {
        if !path.starts_with('/') {
            return Some("the guest path must be absolute");
        }
        if path == "/" {
            return Some("the guest path cannot be / itself");
        }
        if path.contains(['\t', '\n', '\0']) {
            return Some("the guest path cannot hold tabs, newlines or NUL");
        }
        if path[1..]
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Some("the guest path must be normal: no empty, . or .. parts");
        }
        None
    }
}

impl fmt::Display for Share {
    /// One table line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.readonly { "ro" } else { "rw" };
        let fs = match self.fs {
            Fs::NineP => "",
            Fs::Virtiofs => ",virtiofs",
        };
        write!(f, "{}\t{mode}{fs}\t{}", self.tag, self.path)
    }
}

/// The table for `shares`.
pub fn encode(shares: &[Share]) -> String {
    shares.iter().map(|s| format!("{s}\n")).collect()
}

/// Parses a table; a bad line is an error rather than a mount in the wrong place.
pub fn parse(text: &str) -> Result<Vec<Share>, TableError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |reason: &str| TableError {
            line: i + 1,
            reason: reason.to_string(),
        };
        let mut parts = line.splitn(3, '\t');
        let (Some(tag), Some(mode), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("wants TAG, ro|rw and a path, separated by tabs"));
        };
        if tag.is_empty() || tag.len() > MAX_TAG || !tag.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(bad("the tag must be 1 to 31 ASCII letters or digits"));
        }
        let (mode, fs) = match mode.split_once(',') {
            None => (mode, Fs::NineP),
            Some((mode, "virtiofs")) => (mode, Fs::Virtiofs),
            Some((_, _)) => return Err(bad("the only option after the mode is virtiofs")),
        };
        let readonly = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(bad("the mode must be ro or rw")),
        };
        if let Some(reason) = Share::path_problem(path) {
            return Err(bad(reason));
        }
        out.push(Share {
            tag: tag.to_string(),
            path: path.to_string(),
            readonly,
            fs,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_paths_with_spaces() {
        let shares = vec![
            Share {
                tag: Share::tag_for(0),
                path: "/home/me/My Project".into(),
                readonly: false,
                fs: Fs::Virtiofs,
            },
            Share {
                tag: Share::tag_for(1),
                path: "/data".into(),
                readonly: true,
                fs: Fs::NineP,
            },
        ];
        let text = encode(&shares);
        assert_eq!(
            text,
            "osk0\trw,virtiofs\t/home/me/My Project\nosk1\tro\t/data\n"
        );
        assert_eq!(parse(&text).unwrap(), shares);
    }

    #[test]
    fn bad_lines_name_their_number() {
        assert_eq!(parse("osk0\trw\trelative").unwrap_err().line, 1);
        let e = parse("osk0\trw\t/a\nosk1\tmaybe\t/b\n").unwrap_err();
        assert_eq!(
            (e.line, e.reason.as_str()),
            (2, "the mode must be ro or rw")
        );
        assert!(parse("osk0 rw /a").is_err());
        assert_eq!(
            parse("osk0\trw,nfs\t/a").unwrap_err().reason,
            "the only option after the mode is virtiofs"
        );
        assert!(parse("osk0\tmaybe,virtiofs\t/a").is_err());
        assert!(parse("a-b\trw\t/a").is_err());
        assert!(parse(&format!("{}\trw\t/a", "x".repeat(32))).is_err());
    }

    #[test]
    fn guest_paths_must_be_normal_and_absolute() {
        for bad in ["", "rel", "/", "/a/../b", "/a//b", "/a/./b", "/a/", "/a\tb"] {
            assert!(Share::path_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(Share::path_problem("/Users/me/src"), None);
    }
}
