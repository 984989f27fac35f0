//! LinuxKit-format manifests: the model, a strict parser that reports
//! file:line:column, merging of several files, and validation.
//!
//! ```text
//! let m = manifest::load(&["node.yml".into(), "dev.yml".into()])?;
//! ```

mod merge;
mod model;
mod node;
mod parse;
mod suggest;
mod validate;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use model::{
    BlockIo, ContainerKind, Cpu, Device, DeviceCgroup, FileEntry, HugepageLimit, Id, IdMapping,
    ImageConfig, ImageEntry, ImageRef, ImageSource, InterfacePriority, Kernel, Manifest, Memory,
    MountConfig, Network, Origin, Pids, Resources, RuntimeConfig, ThrottleDevice, ValueError,
    Volume, VolumeFormat, WeightDevice, PKG_PREFIX,
};
pub use node::Pos;
pub use suggest::nearest;

/// The label shown for a manifest read from standard input.
pub const STDIN_LABEL: &str = "<stdin>";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Something wrong in a file (or label), at a position when known.
    #[error("{file}{}: {msg}", pos.map(|p| format!(":{p}")).unwrap_or_default())]
    Invalid {
        file: String,
        pos: Option<Pos>,
        msg: String,
    },
    #[error("no manifest given")]
    Empty,
}

/// Reads, parses and merges `paths` in order (`-` is stdin), then validates the result.
pub fn load(paths: &[PathBuf]) -> Result<Manifest, ManifestError> {
    if paths.is_empty() {
        return Err(ManifestError::Empty);
    }
    let mut merged = Manifest::default();
    for path in paths {
        let (label, text, dir) = read(path)?;
        let ctx = parse::Ctx {
            file: label.into(),
            dir,
        };
        merge::merge(&mut merged, parse::document(&text, &ctx)?);
    }
    validate::validate(&merged)?;
    Ok(merged)
}

/// Parses and validates one manifest from text; `file` labels errors and
/// `dir` anchors relative `@pkg:` and `source` paths.
pub fn from_str(text: &str, file: &str, dir: &Path) -> Result<Manifest, ManifestError> {
    let ctx = parse::Ctx {
        file: Arc::from(file),
        dir: dir.to_path_buf(),
    };
    let m = parse::document(text, &ctx)?;
    validate::validate(&m)?;
    Ok(m)
}

fn read(path: &Path) -> Result<(String, String, PathBuf), ManifestError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| ManifestError::Read {
                path: STDIN_LABEL.into(),
                source,
            })?;
        let dir = std::env::current_dir().map_err(|source| ManifestError::Read {
            path: STDIN_LABEL.into(),
            source,
        })?;
        return Ok((STDIN_LABEL.into(), text, dir));
    }
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: label.clone(),
        source,
    })?;
    let abs = std::path::absolute(path).map_err(|source| ManifestError::Read {
        path: label.clone(),
        source,
    })?;
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((label, text, dir))
}

impl ImageConfig {
    /// Parses an image's `org.mobyproject.config` label; `image` names it in errors.
    pub fn from_label(text: &str, image: &str) -> Result<ImageConfig, ManifestError> {
        parse::label(text, image)
    }
}

#[cfg(test)]
mod tests;
