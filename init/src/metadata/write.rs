//! Writing config files whole: a temp name beside the target, then rename,
//! so a service never reads half a key file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {cause}")]
pub struct WriteError {
    pub path: PathBuf,
    pub cause: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |cause| WriteError {
        path: path.to_path_buf(),
        cause,
    }
}

/// Creates `path` (and missing parents) and gives it `mode`.
pub fn dir(path: &Path, mode: u32) -> Result<(), WriteError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err(path))
}

/// Replaces `path` with `data` and `mode`, creating missing parents.
pub fn file(path: &Path, data: &[u8], mode: u32) -> Result<(), WriteError> {
    if let Some(parent) = path.parent() {
        if !parent.is_dir() {
            dir(parent, 0o755)?;
        }
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode given to open.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_creates_parents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        file(&p, b"one", 0o600).unwrap();
        file(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(d.path().join("a/b")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        file(&d.path().join("f"), b"", 0o644).unwrap();
        let e = file(&d.path().join("f/g"), b"", 0o644).unwrap_err();
        assert!(e.to_string().contains("/f"), "{e}");
    }
}
