//! The image: one deterministic layer (sorted tar, fixed mtime, numeric
//! owners, gzip with fixed parameters) and a config with sorted JSON keys.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::tree::Tree;
use super::Error;
use crate::assemble::Kind;

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The image's runtime configuration.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// JSON for the `org.mobyproject.config` label.
    pub label: Option<Value>,
    /// Other labels (a base image's), kept as they are.
    pub labels: BTreeMap<String, String>,
    /// OCI architecture; `None`: amd64.
    pub architecture: Option<String>,
}

/// A finished image, ready to be stored.
#[derive(Debug, Clone)]
pub struct Image {
    /// gzip-compressed layer.
    pub layer: Vec<u8>,
    /// sha256 of the uncompressed layer.
    pub diff_id: String,
    /// Serialized config JSON (sorted keys).
    pub config: Vec<u8>,
}

impl Image {
    pub fn layer_digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.layer)))
    }

    pub fn config_digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.config)))
    }
}

/// Serializes the tree as an uncompressed tar, in path order.
pub fn layer_tar(tree: &Tree, mtime: u64) -> Result<Vec<u8>, std::io::Error> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (path, id) in tree.walk_by_path() {
        let node = tree.node(id);
        let path = OsStr::from_bytes(&path);
        let mut h = tar::Header::new_gnu();
        // A file's owner and mode are its inode's (a hard link's are its target's).
        let meta = match node.kind {
            Kind::File(ino) => tree.inode(ino).meta,
            _ => node.meta,
        };
        h.set_mtime(mtime);
        h.set_uid(meta.uid.into());
        h.set_gid(meta.gid.into());
        h.set_mode(meta.mode);
        match &node.kind {
            Kind::Dir(_) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                let mut dir = path.to_owned();
                dir.push("/");
                b.append_data(&mut h, dir, std::io::empty())?;
            }
            Kind::File(ino) => {
                let data = &tree.inode(*ino).data;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, OsStr::from_bytes(target))?;
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                h.set_entry_type(if matches!(node.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_size(0);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                b.append_data(&mut h, path, std::io::empty())?;
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())?;
            }
        }
    }
    b.into_inner()
}

/// Builds the layer and config for `tree`.
pub fn build(tree: &Tree, run: &RunConfig, mtime: u64) -> Result<Image, Error> {
    let tar = layer_tar(tree, mtime).map_err(|e| Error::Image(e.to_string()))?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    // No file name and mtime 0 in the gzip header: same input, same bytes.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)
        .map_err(|e| Error::Image(e.to_string()))?;
    let layer = gz.finish().map_err(|e| Error::Image(e.to_string()))?;

    let mut cfg = serde_json::Map::new();
    if let Some(e) = &run.entrypoint {
        cfg.insert("Entrypoint".into(), json!(e));
    }
    if let Some(c) = &run.cmd {
        cfg.insert("Cmd".into(), json!(c));
    }
    if !run.env.is_empty() {
        cfg.insert("Env".into(), json!(run.env));
    }
    if let Some(w) = &run.workdir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    let mut labels = run.labels.clone();
    if let Some(label) = &run.label {
        // serde_json's Map is a BTreeMap here: keys come out sorted.
        let text = serde_json::to_string(label).map_err(|e| Error::Image(e.to_string()))?;
        labels.insert(osk_layout::CONFIG_LABEL.to_string(), text);
    }
    if !labels.is_empty() {
        cfg.insert("Labels".into(), json!(labels));
    }
    let created = chrono_free_rfc3339(mtime);
    let config = json!({
        "architecture": run.architecture.as_deref().unwrap_or("amd64"),
        "os": "linux",
        "created": created,
        "config": Value::Object(cfg),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    Ok(Image {
        layer,
        diff_id,
        config: serde_json::to_vec(&config).map_err(|e| Error::Image(e.to_string()))?,
    })
}

/// Seconds since the epoch as RFC 3339 UTC.
fn chrono_free_rfc3339(secs: u64) -> String {
    crate::civil::Civil::from_unix(secs as i64).rfc3339()
}

#[cfg(test)]
mod tests {
    use super::super::tree::Node;
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(chrono_free_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(chrono_free_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn same_tree_same_bytes_and_sorted_entries() {
        let mut t = Tree::default();
        t.insert("usr/bin/b", Node::file(b"b".to_vec(), 0o755))
            .unwrap();
        t.insert("etc/a", Node::file(b"a".to_vec(), 0o644)).unwrap();
        t.insert("bin", Node::symlink("usr/bin")).unwrap();
        // Path-string order, not a tree walk: `usr-x` comes between `usr` and `usr/bin`.
        t.insert("usr-x", Node::file(b"x".to_vec(), 0o600)).unwrap();
        let run = RunConfig {
            cmd: Some(vec!["/usr/bin/b".into()]),
            label: Some(json!({"net": "host", "capabilities": ["all"]})),
            ..Default::default()
        };
        let a = build(&t, &run, 0).unwrap();
        let b = build(&t, &run, 0).unwrap();
        assert_eq!((a.layer_digest(), &a.config), (b.layer_digest(), &b.config));
        let tar = layer_tar(&t, 0).unwrap();
        let mut ar = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "bin",
                "etc/",
                "etc/a",
                "usr/",
                "usr-x",
                "usr/bin/",
                "usr/bin/b"
            ]
        );
        // Pinned: these bytes decide every package image's digest.
        assert_eq!(
            a.layer_digest(),
            "sha256:e986ff5fbb8d5e6cb64db0e96b2a7dcf30cc769623c3408911aa84e7817e384c"
        );
        let cfg: Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(
            cfg["config"]["Labels"][osk_layout::CONFIG_LABEL],
            r#"{"capabilities":["all"],"net":"host"}"#
        );
    }

    /// Every kind of entry, owners, special bits and a directory given twice:
    /// the layer's entry list and digest are pinned, so a change to the tree
    /// or the writer shows here before it changes a package's digest.
    #[test]
    fn every_entry_kind_is_written_in_path_order_with_pinned_bytes() {
        use crate::assemble::Meta;
        let mut t = Tree::default();
        let mut owned = Node::dir(0o750);
        owned.meta.uid = 100;
        owned.meta.gid = 101;
        t.insert("var/lib/app", owned).unwrap();
        // Shipped again by a later package: the first owner stays.
        t.insert("var/lib/app", Node::dir(0o755)).unwrap();
        t.insert("usr/bin/tool", Node::file(b"#!/bin/sh\n".to_vec(), 0o4755))
            .unwrap();
        t.insert("usr/bin/tool.d", Node::dir(0o755)).unwrap();
        t.insert("usr/bin/tool-x", Node::symlink("tool")).unwrap();
        t.insert("tmp", Node::dir(0o1777)).unwrap();
        // Path order puts `lib-extra` between `lib` and `lib/x`.
        t.insert("usr/lib/x", Node::file(b"x".to_vec(), 0o644))
            .unwrap();
        t.insert("usr/lib-extra", Node::file(b"y".to_vec(), 0o644))
            .unwrap();
        t.insert(
            "dev/null",
            Node {
                kind: Kind::Char(1, 3),
                meta: Meta::root(0o666),
            },
        )
        .unwrap();
        t.insert(
            "dev/sda",
            Node {
                kind: Kind::Block(8, 0),
                meta: Meta::root(0o660),
            },
        )
        .unwrap();
        t.insert(
            "run/fifo",
            Node {
                kind: Kind::Fifo,
                meta: Meta::root(0o600),
            },
        )
        .unwrap();
        // Replaced: the last file wins.
        t.insert("etc/motd", Node::file(b"old".to_vec(), 0o644))
            .unwrap();
        t.insert("etc/motd", Node::file(b"new\n".to_vec(), 0o644))
            .unwrap();
        assert_eq!(t.content_size(), 10 + 4 + 2);
        let tar = layer_tar(&t, 1_700_000_000).unwrap();
        let mut ar = tar::Archive::new(tar.as_slice());
        let entries: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                format!(
                    "{} {:?} {:o} {}:{}",
                    e.path().unwrap().display(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap()
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                "dev/ Directory 755 0:0",
                "dev/null Char 666 0:0",
                "dev/sda Block 660 0:0",
                "etc/ Directory 755 0:0",
                "etc/motd Regular 644 0:0",
                "run/ Directory 755 0:0",
                "run/fifo Fifo 600 0:0",
                "tmp/ Directory 1777 0:0",
                "usr/ Directory 755 0:0",
                "usr/bin/ Directory 755 0:0",
                "usr/bin/tool Regular 4755 0:0",
                "usr/bin/tool-x Symlink 777 0:0",
                "usr/bin/tool.d/ Directory 755 0:0",
                "usr/lib/ Directory 755 0:0",
                "usr/lib-extra Regular 644 0:0",
                "usr/lib/x Regular 644 0:0",
                "var/ Directory 755 0:0",
                "var/lib/ Directory 755 0:0",
                "var/lib/app/ Directory 750 100:101",
            ]
        );
        let image = build(&t, &RunConfig::default(), 1_700_000_000).unwrap();
        assert_eq!(
            image.diff_id,
            "sha256:011e39c087632c0865842a1db63d5842a660446a1bed403e055f45d66885a4ba"
        );
        assert_eq!(
            image.layer_digest(),
            "sha256:1121c3cc1bd9e62762952ac9ed3963b7b2cb24e4351917489c9e822c3c403610"
        );
    }
}
