//! Writing an image as a `docker save` tarball, which `docker load` reads.
//!
//! The dockerd in Debian 12 (20.10) loads only this legacy shape, not OCI
//! layouts: `manifest.json` names the config and one uncompressed
//! `<diff-id>/layer.tar` per layer. Layers are decompressed here so any
//! dockerd loads them, and each one's uncompressed digest is checked against
//! the config's `rootfs.diff_ids`, as `docker load` would, before the archive
//! is renamed into place.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, Write};
use std::path::Path;

use super::transfer::{append_bytes, fixed_header};
use super::{io_err, verify_error, with_context, Result, Store, StoreError};
use crate::reference::{Digest, Reference, Sha256Writer};

impl Store {
    /// Writes `reference`'s `os/arch` image to `dest` in `docker save`'s format.
    pub fn export_docker_archive(
        &self,
        reference: &Reference,
        arch: &str,
        dest: &Path,
    ) -> Result<()> {
        let image = self.image(reference, "linux", arch)?;
        let name = reference.familiar();
        let remedy = super::remedy(reference);
        let bad_blob = |e: StoreError| with_context(e, &remedy);
        let diff_ids = image.config.rootfs().diff_ids();
        let layers = image.layers()?;
        if diff_ids.len() != layers.len() {
            return Err(StoreError::Import(format!(
                "image {name}: its config lists {} diff_ids for {} layers, so docker would refuse it",
                diff_ids.len(),
                layers.len()
            )));
        }
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(parent).map_err(io_err(parent))?;
        let mut tar = tar::Builder::new(tmp.as_file());

        let config_digest = super::descriptor_digest(image.manifest.config())?;
        let config_bytes = self.read_blob(&config_digest).map_err(bad_blob)?;
        let config_name = format!("{}.json", config_digest.hex());
        append_bytes(&mut tar, &config_name, &config_bytes)?;

        let mut layer_names = Vec::new();
        let mut written = BTreeSet::new();
        for ((digest, _), diff_id) in layers.iter().zip(diff_ids) {
            let diff_id: Digest = diff_id.parse().map_err(|_| {
                StoreError::Import(format!(
                    "image {name}: diff_id {} is not a sha256 digest",
                    crate::untrusted::quote(diff_id.as_bytes())
                ))
            })?;
            let entry = format!("{}/layer.tar", diff_id.hex());
            // Docker lists a layer once per use but stores it once.
            if written.insert(diff_id.clone()) {
                let mut plain = tempfile::tempfile_in(parent).map_err(io_err(parent))?;
                let actual = self
                    .decompress_layer(digest, &mut plain)
                    .map_err(bad_blob)?;
                if actual != diff_id {
                    return Err(StoreError::DigestMismatch {
                        expected: diff_id,
                        actual,
                        context: format!(
                            " (the uncompressed layer {digest} of image {name}{remedy})"
                        ),
                    });
                }
                let size = plain.stream_position().map_err(io_err(dest))?;
                plain.rewind().map_err(io_err(dest))?;
                let mut header = fixed_header(size);
                tar.append_data(&mut header, &entry, plain)
                    .map_err(io_err(dest))?;
            }
            layer_names.push(entry);
        }

        let tags: Vec<String> = match reference.tag() {
            Some(_) if reference.digest().is_none() => vec![name.clone()],
            _ => Vec::new(),
        };
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": tags,
            "Layers": layer_names,
        }]);
        append_bytes(&mut tar, "manifest.json", manifest.to_string().as_bytes())?;
        tar.finish().map_err(io_err(dest))?;
        drop(tar);
        super::transfer::readable(&tmp, dest)?;
        tmp.persist(dest).map_err(|e| io_err(dest)(e.error))?;
        Ok(())
    }

    /// Streams layer blob `digest`, decompressed, into `out`; returns the
    /// digest of what was written. The blob itself is verified at its end.
    fn decompress_layer(&self, digest: &Digest, out: &mut File) -> Result<Digest> {
        let path = self.blob_path(digest);
        let mut raw = BufReader::with_capacity(256 * 1024, self.open_blob(digest)?);
        let mut hashing = Sha256Writer::new(io::BufWriter::new(out));
        let head = raw.fill_buf().map_err(|e| verify_error(e, &path))?;
        let copied = match head {
            [0x1f, 0x8b, ..] => io::copy(
                &mut flate2::bufread::MultiGzDecoder::new(&mut raw),
                &mut hashing,
            ),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => zstd::Decoder::with_buffer(&mut raw)
                .and_then(|mut d| io::copy(&mut d, &mut hashing)),
            _ => io::copy(&mut raw, &mut hashing),
        };
        // Read to the end whatever happened: a digest mismatch explains a
        // decoding error better than the decoding error does.
        let drained = io::copy(&mut raw, &mut io::sink());
        drained.map_err(|e| verify_error(e, &path))?;
        copied.map_err(|e| verify_error(e, &path))?;
        let (mut plain, sha) = hashing.finish();
        plain.flush().map_err(io_err(&path))?;
        Ok(Digest::from_sha256_hex(&hex::encode(sha)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ImageConfigurationBuilder, MediaType, RootFsBuilder};
    use std::collections::BTreeMap;
    use std::fs;
    use std::io::Read;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            b.append_data(&mut fixed_header(data.len() as u64), name, *data)
                .unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// An image of a gzip layer and a zstd layer, with diff_ids as given
    /// (`None`: the right ones).
    fn plain_layers() -> Vec<Vec<u8>> {
        vec![
            tar_of(&[("bin/hello", b"hi")]),
            tar_of(&[("etc/motd", b"motd")]),
        ]
    }

    fn image(store: &Store, diff_ids: Option<Vec<String>>) -> (Reference, Vec<Vec<u8>>) {
        let plain = plain_layers();
        let blobs = [gzip(&plain[0]), zstd::encode_all(&plain[1][..], 3).unwrap()];
        let layers = blobs
            .iter()
            .map(|b| store.put_bytes(MediaType::ImageLayerGzip, b).unwrap())
            .collect();
        let ids =
            diff_ids.unwrap_or_else(|| plain.iter().map(|p| Digest::of(p).to_string()).collect());
        let config = ImageConfigurationBuilder::default()
            .architecture("amd64")
            .os("linux")
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(ids)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let r = Reference::parse("osk/demo:1").unwrap();
        store.write_image(&r, &config, layers).unwrap();
        (r, plain)
    }

    fn entries(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(File::open(path).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn writes_what_docker_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let (r, plain) = image(&store, None);
        let out = dir.path().join("demo.tar");
        store.export_docker_archive(&r, "amd64", &out).unwrap();
        let files = entries(&out);
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["osk/demo:1"]));
        let layers: Vec<String> = manifest[0]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert_eq!(layers.len(), 2);
        // Each layer is stored uncompressed under its diff_id.
        for (name, want) in layers.iter().zip(&plain) {
            assert_eq!(&files[name], want);
            assert_eq!(name, &format!("{}/layer.tar", Digest::of(want).hex()));
        }
        let config: serde_json::Value =
            serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
        assert_eq!(config["architecture"], "amd64");
        // Same image, same bytes.
        let again = dir.path().join("again.tar");
        store.export_docker_archive(&r, "amd64", &again).unwrap();
        assert_eq!(fs::read(&out).unwrap(), fs::read(&again).unwrap());
    }

    #[test]
    fn a_wrong_diff_id_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let wrong = Digest::of(b"not the layer").to_string();
        let first = Digest::of(&plain_layers()[0]).to_string();
        let (r, _) = image(&store, Some(vec![first, wrong]));
        let out = dir.path().join("demo.tar");
        let err = store.export_docker_archive(&r, "amd64", &out).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains("osk/demo:1"), "{err}");
        assert!(!out.exists());
        // No temporary file is left beside it either.
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["store"]);
    }

    #[test]
    fn a_config_without_diff_ids_is_refused_with_the_image_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let (r, _) = image(&store, Some(Vec::new()));
        let err = store
            .export_docker_archive(&r, "amd64", &dir.path().join("x.tar"))
            .unwrap_err();
        assert!(
            err.to_string().contains("osk/demo:1")
                && err.to_string().contains("0 diff_ids for 2 layers"),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_layer_blob_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let (r, _) = image(&store, None);
        let img = store.image(&r, "linux", "amd64").unwrap();
        let (digest, _) = img.layers().unwrap()[0].clone();
        let path = store.blob_path(&digest);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let out = dir.path().join("demo.tar");
        let err = store.export_docker_archive(&r, "amd64", &out).unwrap_err();
        assert!(err.to_string().contains(&digest.to_string()), "{err}");
        assert!(!out.exists());
    }
}
