//! Image resolution policy: the store first, else the registry; `@pkg:` images built when missing.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::manifest::{ImageRef, ImageSource};
use crate::pkg;
use crate::pull::{self, PullError, PullOptions};
use crate::reference::{Reference, ReferenceError};
use crate::store::{Image, Store, StoreError};

use super::{BuildError, Resolve};

#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("image {image}: {source}")]
    Reference {
        image: String,
        #[source]
        source: ReferenceError,
    },
    /// Names the image itself.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Names the image itself.
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("{image}")]
    Package {
        image: String,
        #[source]
        source: Box<pkg::Error>,
    },
}

/// What resolution needs from the world; [`StoreRegistry`] is the real one.
pub trait ImageProvider {
    /// Whether the store names `reference` at all (for any platform).
    fn has(&self, reference: &Reference) -> Result<bool, ResolveError>;
    /// Loads `reference` for `arch` from the store.
    fn load(&self, reference: &Reference, arch: &str) -> Result<Image, ResolveError>;
    /// Fetches `reference` for `arch` from its registry into the store.
    fn pull(&self, reference: &Reference, arch: &str) -> Result<Image, ResolveError>;
    /// Builds the package in `dir` into the store unless it is there; returns its reference.
    fn build_package(&self, image: &ImageRef, dir: &Path) -> Result<Reference, ResolveError>;
}

/// Turns the manifest's image references into images for one architecture.
pub struct Resolver<P> {
    provider: P,
    arch: String,
    refresh: bool,
}

impl<P: ImageProvider> Resolver<P> {
    pub fn new(provider: P, arch: impl Into<String>) -> Self {
        Resolver {
            provider,
            arch: arch.into(),
            refresh: false,
        }
    }

    /// Fetch every registry image's tag again even when the store has it (`--pull`).
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    pub fn image(&self, image: &ImageRef) -> Result<Image, ResolveError> {
        match &image.source {
            ImageSource::Reference(text) => {
                let r = Reference::parse(text).map_err(|source| ResolveError::Reference {
                    image: text.clone(),
                    source,
                })?;
                if !self.refresh && self.provider.has(&r)? {
                    match self.provider.load(&r, &self.arch) {
                        Ok(image) => return Ok(image),
                        // E.g. an index pulled for another platform: fetch what is missing.
                        Err(e) => {
                            tracing::debug!(
                                "{}: not usable from the store ({e}); pulling",
                                r.familiar()
                            )
                        }
                    }
                }
                self.provider.pull(&r, &self.arch)
            }
            ImageSource::Package(dir) => {
                let r = self.provider.build_package(image, dir)?;
                self.provider.load(&r, &self.arch)
            }
        }
    }
}

impl<P: ImageProvider> Resolve for Resolver<P> {
    fn resolve(&mut self, image: &ImageRef) -> Result<Image, BuildError> {
        Ok(self.image(image)?)
    }
}

/// The real provider: the local store, registries, and `osk pkg` builds.
pub struct StoreRegistry<'a> {
    pub store: &'a Store,
    /// Where `@pkg:` builds cache downloaded `.deb`s.
    pub deb_cache: PathBuf,
    pub insecure_registries: Vec<String>,
}

impl ImageProvider for StoreRegistry<'_> {
    fn has(&self, reference: &Reference) -> Result<bool, ResolveError> {
        let present = self
            .store
            .resolve(reference)
            .map_err(|source| PullError::Store {
                reference: reference.familiar(),
                source: Box::new(source),
            })?;
        Ok(present.is_some())
    }

    fn load(&self, reference: &Reference, arch: &str) -> Result<Image, ResolveError> {
        Ok(self.store.image(reference, "linux", arch)?)
    }

    fn pull(&self, reference: &Reference, arch: &str) -> Result<Image, ResolveError> {
        let opts = PullOptions {
            arch: arch.to_string(),
            insecure_registries: self.insecure_registries.clone(),
            ..Default::default()
        };
        Ok(pull::pull(self.store, reference, &opts)?.image)
    }

    fn build_package(&self, image: &ImageRef, dir: &Path) -> Result<Reference, ResolveError> {
        let opts = pkg::Options {
            cache_dir: self.deb_cache.clone(),
            ..Default::default()
        };
        pkg::ensure_built(dir, self.store, &opts).map_err(|e| ResolveError::Package {
            image: image.to_string(),
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use super::*;
    use crate::reference::Digest;

    /// A store of names (no blobs) that records what it was asked to do.
    #[derive(Default)]
    struct Fake {
        stored: RefCell<BTreeSet<String>>,
        /// Names present but not loadable (e.g. another platform only).
        unloadable: BTreeSet<String>,
        /// Registry names that exist.
        remote: BTreeSet<String>,
        calls: RefCell<Vec<String>>,
    }

    impl Fake {
        fn image(reference: &Reference) -> Image {
            use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};
            let config = DescriptorBuilder::default()
                .media_type(MediaType::ImageConfig)
                .digest(
                    Digest::of(b"{}")
                        .as_str()
                        .parse::<oci_spec::image::Digest>()
                        .unwrap(),
                )
                .size(2u64)
                .build()
                .unwrap();
            Image {
                reference: reference.clone(),
                manifest_digest: Digest::of(reference.to_string().as_bytes()),
                manifest: ImageManifestBuilder::default()
                    .schema_version(2u32)
                    .config(config)
                    .layers(vec![])
                    .build()
                    .unwrap(),
                config: Default::default(),
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl ImageProvider for Fake {
        fn has(&self, r: &Reference) -> Result<bool, ResolveError> {
            Ok(self.stored.borrow().contains(&r.familiar()))
        }
        fn load(&self, r: &Reference, arch: &str) -> Result<Image, ResolveError> {
            self.calls
                .borrow_mut()
                .push(format!("load {} {arch}", r.familiar()));
            if !self.stored.borrow().contains(&r.familiar())
                || self.unloadable.contains(&r.familiar())
            {
                return Err(StoreError::NotFound {
                    reference: r.familiar(),
                    store: PathBuf::from("/fake"),
                }
                .into());
            }
            Ok(Fake::image(r))
        }
        fn pull(&self, r: &Reference, arch: &str) -> Result<Image, ResolveError> {
            self.calls
                .borrow_mut()
                .push(format!("pull {} {arch}", r.familiar()));
            if !self.remote.contains(&r.familiar()) {
                return Err(PullError::Setup {
                    reference: r.familiar(),
                    detail: "no such image".into(),
                }
                .into());
            }
            self.stored.borrow_mut().insert(r.familiar());
            Ok(Fake::image(r))
        }
        fn build_package(&self, _: &ImageRef, dir: &Path) -> Result<Reference, ResolveError> {
            self.calls
                .borrow_mut()
                .push(format!("build {}", dir.display()));
            let name = format!("osk/{}:0", dir.file_name().unwrap().to_str().unwrap());
            self.stored.borrow_mut().insert(name.clone());
            Ok(Reference::parse(&name).unwrap())
        }
    }

    fn image_ref(text: &str) -> ImageRef {
        ImageRef::parse(text).unwrap()
    }

    #[test]
    fn a_stored_image_is_not_pulled() {
        let fake = Fake::default();
        fake.stored.borrow_mut().insert("alpine:3".into());
        let r = Resolver::new(fake, "arm64");
        let img = r.image(&image_ref("alpine:3")).unwrap();
        assert_eq!(img.reference.familiar(), "alpine:3");
        assert_eq!(r.provider.calls(), ["load alpine:3 arm64"]);
    }

    #[test]
    fn a_missing_image_is_pulled_for_the_arch() {
        let fake = Fake {
            remote: ["alpine:3".to_string()].into(),
            ..Default::default()
        };
        let r = Resolver::new(fake, "riscv64");
        r.image(&image_ref("alpine:3")).unwrap();
        assert_eq!(r.provider.calls(), ["pull alpine:3 riscv64"]);
    }

    #[test]
    fn an_unloadable_stored_image_is_pulled() {
        let fake = Fake {
            unloadable: ["alpine:3".to_string()].into(),
            remote: ["alpine:3".to_string()].into(),
            ..Default::default()
        };
        fake.stored.borrow_mut().insert("alpine:3".into());
        let r = Resolver::new(fake, "amd64");
        r.image(&image_ref("alpine:3")).unwrap();
        assert_eq!(
            r.provider.calls(),
            ["load alpine:3 amd64", "pull alpine:3 amd64"]
        );
    }

    #[test]
    fn refresh_pulls_even_a_stored_image() {
        let fake = Fake {
            remote: ["alpine:3".to_string()].into(),
            ..Default::default()
        };
        fake.stored.borrow_mut().insert("alpine:3".into());
        let r = Resolver::new(fake, "amd64").refresh(true);
        r.image(&image_ref("alpine:3")).unwrap();
        r.image(&image_ref("alpine:3")).unwrap();
        assert_eq!(
            r.provider.calls(),
            ["pull alpine:3 amd64", "pull alpine:3 amd64"]
        );
    }

    #[test]
    fn a_package_image_is_built_then_loaded() {
        let r = Resolver::new(Fake::default(), "amd64").refresh(true);
        let img = r.image(&image_ref("@pkg:/src/pkgs/getty")).unwrap();
        assert_eq!(img.reference.familiar(), "osk/getty:0");
        // `--pull` never sends a package image to a registry.
        assert_eq!(
            r.provider.calls(),
            ["build /src/pkgs/getty", "load osk/getty:0 amd64"]
        );
    }

    #[test]
    fn a_failed_pull_names_the_image() {
        let r = Resolver::new(Fake::default(), "amd64");
        let err = r.image(&image_ref("example.org/nothing:1")).unwrap_err();
        assert!(err.to_string().contains("example.org/nothing:1"), "{err}");
    }

    #[test]
    fn a_bad_reference_names_the_image() {
        let r = Resolver::new(Fake::default(), "amd64");
        let bad = ImageRef {
            text: "Bad:Ref:x".into(),
            source: ImageSource::Reference("Bad:Ref:x".into()),
        };
        let err = r.image(&bad).unwrap_err();
        assert!(matches!(err, ResolveError::Reference { .. }), "{err:?}");
        assert!(err.to_string().starts_with("image Bad:Ref:x: "), "{err}");
        assert!(r.provider.calls().is_empty());
    }
}
