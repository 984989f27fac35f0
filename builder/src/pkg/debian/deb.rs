//! Unpacking `.deb` files in-process: `ar` container, `data.tar.{xz,zst,gz}`.
//! Maintainer scripts are never run (they are not even read).

use std::io::Read;
use std::path::Path;

use super::Error;
use crate::assemble::Meta;
use crate::pkg::tree::{normalise, Kind, Node, Patterns, Tree};

/// What to keep while unpacking.
pub struct Filter<'a> {
    pub exclude: &'a Patterns,
    pub keep: &'a Patterns,
    pub merged_usr: bool,
}

impl Filter<'_> {
    fn wanted(&self, path: &str) -> bool {
        !self.exclude.matches(path) || self.keep.matches(path)
    }
}

/// Streams the `data.tar.*` member of a .deb to `f`.
pub fn with_data_tar<T>(
    deb: &Path,
    f: impl FnOnce(&mut tar::Archive<Box<dyn Read + '_>>) -> Result<T, Error>,
) -> Result<T, Error> {
    let bad = |m: String| Error::Deb {
        file: deb.display().to_string(),
        message: m,
    };
    let file = std::fs::File::open(deb).map_err(|e| Error::io(deb, e))?;
    let mut ar = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).to_string();
        let reader: Box<dyn Read> = match name.as_str() {
            "data.tar.xz" => Box::new(liblzma::read::XzDecoder::new(entry)),
            "data.tar.zst" => {
                Box::new(zstd::stream::read::Decoder::new(entry).map_err(|e| bad(e.to_string()))?)
            }
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(entry)),
            "data.tar" => Box::new(entry),
            n if n.starts_with("data.tar") => return Err(bad(format!("unsupported member {n}"))),
            _ => continue,
        };
        let mut archive = tar::Archive::new(reader);
        return f(&mut archive);
    }
    Err(bad("no data.tar member".to_string()))
}

/// Unpacks a .deb's files into `tree`, honouring the filter.
pub fn unpack(deb: &Path, filter: &Filter, tree: &mut Tree) -> Result<(), Error> {
    let bad = |m: String| Error::Deb {
        file: deb.display().to_string(),
        message: m,
    };
    with_data_tar(deb, |archive| {
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            let raw = entry
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .to_string();
            let Some(path) = normalise(&raw, filter.merged_usr) else {
                continue;
            };
            if !filter.wanted(&path) {
                continue;
            }
            let h = entry.header();
            let mode = h.mode().map_err(|e| bad(e.to_string()))? & 0o7777;
            let owner = |id: std::io::Result<u64>, what: &str| {
                let id = id.map_err(|e| bad(e.to_string()))?;
                u32::try_from(id).map_err(|_| bad(format!("{raw}: {what} {id} out of range")))
            };
            let uid = owner(h.uid(), "uid")?;
            let gid = owner(h.gid(), "gid")?;
            let kind = match h.entry_type() {
                tar::EntryType::Directory => Kind::Dir(()),
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::with_capacity(h.size().unwrap_or(0) as usize);
                    entry
                        .read_to_end(&mut data)
                        .map_err(|e| bad(format!("{raw}: {e}")))?;
                    Kind::File(data)
                }
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name()
                        .map_err(|e| bad(e.to_string()))?
                        .ok_or_else(|| bad(format!("{raw}: symlink without target")))?;
                    Kind::Symlink(target.to_string_lossy().into_owned().into_bytes())
                }
                tar::EntryType::Link => {
                    // Hard links become copies: one sorted layer cannot
                    // guarantee the target precedes the link.
                    let target = entry
                        .link_name()
                        .map_err(|e| bad(e.to_string()))?
                        .and_then(|t| normalise(&t.to_string_lossy(), filter.merged_usr))
                        .ok_or_else(|| bad(format!("{raw}: hard link without target")))?;
                    match tree.bytes(&target) {
                        Some(d) => Kind::File(d.to_vec()),
                        None => continue,
                    }
                }
                other => return Err(bad(format!("{raw}: unsupported entry type {other:?}"))),
            };
            let node = Node {
                kind,
                meta: Meta { mode, uid, gid },
            };
            tree.insert(&path, node).map_err(|cause| Error::Path {
                from: deb.display().to_string(),
                path: path.clone(),
                cause,
            })?;
        }
        Ok(())
    })
}
