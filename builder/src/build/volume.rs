//! Manifest volumes in the root tree: `containers/volumes/NAME/{lower,merged}`
//! (+ `tmp` when writable), with the volume's image in `lower` either as its
//! root filesystem or, for `format: oci`, as an OCI image layout a service
//! can import (LinuxKit's two formats).

use std::collections::HashMap;

use crate::assemble::{self, Meta, Spool, Tree};
use crate::manifest::VolumeFormat;
use crate::store::{oci_layout_file, Image, PlatformSpec, Store};

use super::{graft, spool_err, BuildError, VolumePlan};

/// Places one volume. A filesystem volume's files never share inodes with a
/// container's rootfs: init binds a writable `lower` as is, so a write
/// through the volume must not reach a container's files.
pub(super) fn place(
    root: &mut Tree,
    store: &Store,
    spool: &Spool,
    v: &VolumePlan,
) -> Result<(), BuildError> {
    let what = match &v.image {
        Some(i) => format!("volume {} (image {})", v.name, i.reference.familiar()),
        None => format!("volume {}", v.name),
    };
    tracing::info!("{what}");
    let base = osk_layout::volume_dir(&v.name);
    let place = |reason: String, path: &str| BuildError::Place {
        what: what.clone(),
        path: path.to_string(),
        reason,
    };
    if root.lookup(base.as_bytes()).is_some() {
        return Err(place(
            "is used by two volumes (or an init image); volume names must be unique".into(),
            &base,
        ));
    }
    let mut dirs = vec![osk_layout::VOLUME_LOWER, osk_layout::VOLUME_MERGED];
    if !v.readonly {
        dirs.push(osk_layout::VOLUME_TMP);
    }
    for d in dirs {
        let path = format!("{base}/{d}");
        root.add_dir(path.as_bytes(), Meta::root(0o755), Meta::root(0o755))
            .map_err(|r| place(r.to_string(), &path))?;
    }
    let lower = format!("{base}/{}", osk_layout::VOLUME_LOWER);
    match (&v.image, v.format) {
        (None, _) => {}
        (Some(image), VolumeFormat::Filesystem) => {
            let tree = assemble::flatten(store, spool, image)?;
            graft(root, &tree, &lower, &mut HashMap::new(), &what)?;
        }
        (Some(image), VolumeFormat::Oci) => {
            let images = platform_images(store, v, image)?;
            place_layout(root, store, spool, image, &images, &lower, &place)?;
        }
    }
    Ok(())
}

/// The image once per platform asked for; none asked means the one the
/// build resolved (the build's platform).
fn platform_images(store: &Store, v: &VolumePlan, image: &Image) -> Result<Vec<Image>, BuildError> {
    if v.platforms.is_empty() {
        return Ok(vec![image.clone()]);
    }
    let mut out: Vec<Image> = Vec::new();
    for p in &v.platforms {
        let found = if p.covers(&PlatformSpec::of(image)) {
            image.clone()
        } else {
            store
                .image_for(&image.reference, p)
                .map_err(|source| BuildError::VolumePlatform {
                    volume: v.name.clone(),
                    image: image.reference.familiar(),
                    platform: p.to_string(),
                    source: Box::new(source),
                })?
        };
        if !out
            .iter()
            .any(|i| i.manifest_digest == found.manifest_digest)
        {
            out.push(found);
        }
    }
    Ok(out)
}

/// `oci-layout`, `index.json` and `blobs/sha256/*` under `at`, as plain files.
fn place_layout(
    root: &mut Tree,
    store: &Store,
    spool: &Spool,
    image: &Image,
    images: &[Image],
    at: &str,
    place: &dyn Fn(String, &str) -> BuildError,
) -> Result<(), BuildError> {
    let name = image.reference.familiar();
    let layout =
        store
            .layout(&image.reference, images)
            .map_err(|source| assemble::AssembleError::Blob {
                image: name.clone(),
                digest: image.manifest_digest.clone(),
                source: Box::new(source),
            })?;
    let dir = Meta::root(0o755);
    let file = Meta::root(0o644);
    let add_file = |root: &mut Tree, path: String, sha, size| {
        root.add_file(path.as_bytes(), sha, size, file, dir)
            .map_err(|r| place(r.to_string(), &path))
    };
    let add = |root: &mut Tree, path: String, bytes: &[u8]| {
        let sha = spool.put_bytes(bytes).map_err(spool_err(spool))?;
        add_file(root, path, sha, bytes.len() as u64)
    };
    add(root, format!("{at}/oci-layout"), oci_layout_file())?;
    add(root, format!("{at}/index.json"), &layout.index_json)?;
    let blobs = format!("{at}/blobs/sha256");
    root.add_dir(blobs.as_bytes(), dir, dir)
        .map_err(|r| place(r.to_string(), &blobs))?;
    for (digest, bytes) in &layout.generated {
        add(root, format!("{blobs}/{}", digest.hex()), bytes)?;
    }
    for digest in &layout.blobs {
        let (sha, size) = assemble::spool_blob(store, spool, &name, digest)?;
        add_file(root, format!("{blobs}/{}", digest.hex()), sha, size)?;
    }
    Ok(())
}
