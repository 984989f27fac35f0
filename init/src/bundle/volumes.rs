//! The manifest's volumes, made ready before onboot containers run.
//!
//! `osk build` lays each volume out as LinuxKit does under
//! `/containers/volumes/NAME`: `lower` (its contents), `merged` (what
//! containers bind) and, only for a writable volume, `tmp`. Init mounts
//! `lower` on `merged`: read-only when there is no `tmp`, read-write otherwise.
//!
//! A writable volume is a plain bind of `lower`, not LinuxKit's overlay of
//! `lower` with an upper on a tmpfs: by now the root is a tmpfs already (see
//! `switchroot`), so writes stay in RAM and vanish at power-off exactly as
//! with the overlay, and the overlay module (a module, not built in, in
//! Debian's kernel) need not be loaded first. The builder never hard-links a
//! volume's files with a container's, so such writes reach only the volume.

use std::io;
use std::path::Path;

use crate::sys::{MsFlags, Sys};

/// One volume as found on the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub writable: bool,
}

/// The volumes under `dir` (sorted by name); none when `dir` does not exist.
pub fn scan(dir: &Path) -> io::Result<Vec<Volume>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        out.push(Volume {
            name: e.file_name().to_string_lossy().into_owned(),
            writable: e.path().join(osk_layout::VOLUME_TMP).is_dir(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Mounts `lower` on `merged` for each volume under `dir` (as a path on the
/// running system). A failure is logged and the volume skipped: the
/// containers binding it then fail with a named error, the rest still run.
pub fn prepare(sys: &impl Sys, dir: &str, volumes: &[Volume]) -> usize {
    let mut ok = 0;
    for v in volumes {
        match prepare_one(sys, dir, v) {
            Ok(()) => ok += 1,
            Err(e) => tracing::error!("volume {} ({dir}/{}): {e}", v.name, v.name),
        }
    }
    ok
}

fn prepare_one(sys: &impl Sys, dir: &str, v: &Volume) -> io::Result<()> {
    let base = format!("{dir}/{}", v.name);
    let lower = format!("{base}/{}", osk_layout::VOLUME_LOWER);
    let merged = format!("{base}/{}", osk_layout::VOLUME_MERGED);
    sys.mkdir_p(&lower)?;
    sys.mkdir_p(&merged)?;
    if sys.is_mountpoint(&merged) {
        return Ok(());
    }
    sys.mount(&lower, &merged, None, MsFlags::MS_BIND, None)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {lower} on {merged}: {e}")))?;
    if !v.writable {
        // A bind ignores MS_RDONLY; only a remount of the bind applies it.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        sys.mount(&lower, &merged, None, flags, None)
            .map_err(|e| io::Error::new(e.kind(), format!("remount {merged} read-only: {e}")))?;
    }
    tracing::info!(
        "volume {} ready ({})",
        v.name,
        if v.writable {
            "read-write"
        } else {
            "read-only"
        }
    );
    Ok(())
}

/// Scans `/containers/volumes` and prepares every volume there.
pub fn prepare_all(sys: &impl Sys) {
    let dir = format!("/{}", osk_layout::VOLUMES_DIR);
    match scan(Path::new(&dir)) {
        Ok(v) => {
            prepare(sys, &dir, &v);
        }
        Err(e) => tracing::error!("reading {dir}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::testing::Recorder;

    fn vol(name: &str, writable: bool) -> Volume {
        Volume {
            name: name.into(),
            writable,
        }
    }

    #[test]
    fn readonly_is_a_bind_remounted_read_only_and_writable_a_plain_bind() {
        let r = Recorder::default();
        let d = "/containers/volumes";
        let n = prepare(&r, d, &[vol("data", true), vol("site", false)]);
        assert_eq!(n, 2);
        assert_eq!(
            r.calls(),
            [
                format!("mkdir {d}/data/lower"),
                format!("mkdir {d}/data/merged"),
                format!("mount {d}/data/lower {d}/data/merged - MS_BIND -"),
                format!("mkdir {d}/site/lower"),
                format!("mkdir {d}/site/merged"),
                format!("mount {d}/site/lower {d}/site/merged - MS_BIND -"),
                format!("mount {d}/site/lower {d}/site/merged - MS_RDONLY|MS_REMOUNT|MS_BIND -"),
            ]
        );
    }

    #[test]
    fn an_already_mounted_volume_is_left_alone() {
        let r = Recorder::default();
        r.set_mounted("/v/site/merged");
        assert_eq!(prepare(&r, "/v", &[vol("site", false)]), 1);
        assert!(r.calls_starting("mount").is_empty(), "{:?}", r.calls());
    }

    #[test]
    fn a_failed_volume_is_skipped_and_never_left_writable_by_mistake() {
        let r = Recorder::default();
        // The bind of "a" fails: no remount of it, "b" still ready.
        r.fail("mount /v/a/lower", libc::ENOENT);
        assert_eq!(prepare(&r, "/v", &[vol("a", false), vol("b", false)]), 1);
        assert_eq!(r.calls_starting("mount /v/a").len(), 1);
        assert_eq!(r.calls_starting("mount /v/b").len(), 2);
        // The bind works but the read-only remount fails: counted as failed.
        let r = Recorder::default();
        r.fail(
            "mount /v/a/lower /v/a/merged - MS_RDONLY|MS_REMOUNT|MS_BIND",
            libc::EPERM,
        );
        assert_eq!(prepare(&r, "/v", &[vol("a", false)]), 0);
    }

    #[test]
    fn scan_reads_writability_from_tmp_and_ignores_files() {
        let t = tempfile::tempdir().unwrap();
        for d in ["b/lower", "b/merged", "a/lower", "a/merged", "a/tmp"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("stray"), b"").unwrap();
        assert_eq!(scan(t.path()).unwrap(), [vol("a", true), vol("b", false)]);
        assert!(scan(&t.path().join("absent")).unwrap().is_empty());
    }
}
