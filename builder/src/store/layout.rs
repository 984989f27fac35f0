//! An image described as a self-contained OCI image layout: the `index.json`
//! naming it and every blob that index reaches, for writing somewhere else
//! (a volume in the initramfs). Only platforms the store holds whole go in,
//! so the layout never refers to a blob it lacks.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, MediaType, Platform, PlatformBuilder, ANNOTATION_REF_NAME};

use super::{descriptor, descriptor_digest, index_of, to_json, Image, Result, Store};
use crate::reference::{Digest, Reference};

/// containerd's importer prefers this name over `ref.name`; containerd and
/// Docker put the full name here and only the tag in `ref.name`.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

/// `desc` named `name` for every importer: OCI's `ref.name` (which skopeo
/// and umoci read) and containerd's image name (which `ctr import` and
/// `linuxkit cache import` read), both the full reference.
pub(super) fn named(desc: &Descriptor, name: &str) -> Descriptor {
    let mut d = desc.clone();
    let mut ann = d.annotations().clone().unwrap_or_default();
    ann.insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
    ann.insert(CONTAINERD_IMAGE_NAME.to_string(), name.to_string());
    d.set_annotations(Some(ann));
    d
}

/// `os/arch[/variant]`, as manifests and `--platform` write a platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlatformSpec {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

/// A platform not written `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("platform `{text}` is not OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64 or linux/arm/v7")]
pub struct BadPlatform {
    pub text: String,
}

impl FromStr for PlatformSpec {
    type Err = BadPlatform;

    fn from_str(s: &str) -> Result<Self, BadPlatform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts[..] {
            [os, arch] if ok(os) && ok(arch) => Ok(PlatformSpec {
                os: os.into(),
                arch: arch.into(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(PlatformSpec {
                os: os.into(),
                arch: arch.into(),
                variant: Some(variant.into()),
            }),
            _ => Err(BadPlatform {
                text: s.to_string(),
            }),
        }
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl PlatformSpec {
    /// The platform an image's config declares.
    pub fn of(image: &Image) -> PlatformSpec {
        PlatformSpec {
            os: image.config.os().to_string(),
            arch: image.config.architecture().to_string(),
            variant: image.config.variant().clone().filter(|v| !v.is_empty()),
        }
    }

    /// Whether `other` is this platform (no variant asked: any variant).
    pub fn covers(&self, other: &PlatformSpec) -> bool {
        self.os == other.os
            && self.arch == other.arch
            && (self.variant.is_none() || self.variant == other.variant)
    }

    /// Whether an index entry's platform is this one.
    pub fn matches(&self, p: &Platform) -> bool {
        self.covers(&PlatformSpec {
            os: p.os().to_string(),
            arch: p.architecture().to_string(),
            variant: p.variant().clone(),
        })
    }

    fn to_oci(&self) -> Platform {
        let mut b = PlatformBuilder::default()
            .os(self.os.as_str())
            .architecture(self.arch.as_str());
        if let Some(v) = &self.variant {
            b = b.variant(v.clone());
        }
        b.build().expect("os and architecture are set")
    }
}

/// What an OCI image layout of one image holds besides `oci-layout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The bytes of `index.json`.
    pub index_json: Vec<u8>,
    /// Blobs made for the layout (the index over several platforms).
    pub generated: Vec<(Digest, Vec<u8>)>,
    /// Blobs copied from the store, sorted and without duplicates.
    pub blobs: Vec<Digest>,
}

/// The content of the `oci-layout` file.
pub fn oci_layout_file() -> &'static [u8] {
    super::OCI_LAYOUT.as_bytes()
}

impl Store {
    /// A layout naming `images` (one per platform, all from the store) `name`.
    /// One image is named directly, as `skopeo copy` does; several go
    /// under a new index. Deterministic: same images, same bytes.
    pub fn layout(&self, name: &Reference, images: &[Image]) -> Result<Layout> {
        let name = name.without_digest().to_string();
        let mut blobs = BTreeSet::new();
        let mut manifests = Vec::new();
        for image in images {
            // Read (and so verify) the manifest for its exact size.
            let size = self.read_blob(&image.manifest_digest)?.len() as u64;
            let media = image
                .manifest
                .media_type()
                .clone()
                .unwrap_or(MediaType::ImageManifest);
            let mut d = descriptor(media, &image.manifest_digest, size);
            d.set_platform(Some(PlatformSpec::of(image).to_oci()));
            if manifests
                .iter()
                .any(|m: &Descriptor| m.digest() == d.digest())
            {
                continue;
            }
            blobs.insert(image.manifest_digest.clone());
            blobs.insert(descriptor_digest(image.manifest.config())?);
            for (digest, _) in image.layers()? {
                blobs.insert(digest);
            }
            manifests.push(d);
        }
        let mut generated = Vec::new();
        let top = match &manifests[..] {
            [one] => one.clone(),
            _ => {
                let index = index_of(manifests);
                let bytes = to_json(&index);
                let digest = Digest::of(&bytes);
                let d = descriptor(MediaType::ImageIndex, &digest, bytes.len() as u64);
                generated.push((digest, bytes));
                d
            }
        };
        let index = index_of(vec![named(&top, &name)]);
        Ok(Layout {
            index_json: to_json(&index),
            generated,
            blobs: blobs.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_specs_parse_and_print() {
        let p: PlatformSpec = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            "linux/amd64".parse::<PlatformSpec>().unwrap().to_string(),
            "linux/amd64"
        );
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v1/x",
            "linux amd64",
        ] {
            let e = bad.parse::<PlatformSpec>().unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }
}
