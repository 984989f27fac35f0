//! Image resolution policy: the store first, else the registry; `@pkg:` images built when missing.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::arch::Arch;
use crate::manifest::{ImageRef, ImageSource};
use crate::pkg;
use crate::pull::{self, PullError, PullOptions};
use crate::reference::{Reference, ReferenceError};
use crate::store::{Image, PlatformSpec, Store, StoreError};

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
    /// Whatever a provider returned: the build never takes another platform's image.
    #[error("image {image} is for {has}, not {wanted}: build with `--arch {}` or use an image for {wanted}", has.arch)]
    Platform {
        image: String,
        wanted: String,
        has: PlatformSpec,
    },
    #[error("{stored}; pulling it for that platform failed too: {pulled}")]
    StoredPlatforms {
        stored: StoreError,
        pulled: Box<ResolveError>,
    },
    #[error("image {image} has no {wanted} image")]
    PackagePlatform {
        image: String,
        wanted: String,
        #[source]
        source: Box<ResolveError>,
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
    /// Builds the package in `dir` for `arch` into the store unless it is there; returns its reference.
    fn build_package(
        &self,
        image: &ImageRef,
        dir: &Path,
        arch: Arch,
    ) -> Result<Reference, ResolveError>;
}

/// Turns the manifest's image references into images for one architecture.
pub struct Resolver<P> {
    provider: P,
    arch: Arch,
    refresh: bool,
}

impl<P: ImageProvider> Resolver<P> {
    pub fn new(provider: P, arch: Arch) -> Self {
        Resolver {
            provider,
            arch,
            refresh: false,
        }
    }

    /// Fetch every registry image's tag again even when the store has it (`--pull`).
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    /// The image for the resolver's architecture, or an error naming it and what it has.
    pub fn image(&self, image: &ImageRef) -> Result<Image, ResolveError> {
        let found = self.any_platform(image)?;
        let has = PlatformSpec::of(&found);
        if !self.platform().covers(&has) {
            return Err(ResolveError::Platform {
                image: image.to_string(),
                wanted: self.platform().to_string(),
                has,
            });
        }
        Ok(found)
    }

    fn platform(&self) -> PlatformSpec {
        PlatformSpec {
            os: "linux".into(),
            arch: self.arch.oci().into(),
            variant: None,
        }
    }

    /// What the provider hands out for `image`, before the platform check.
    fn any_platform(&self, image: &ImageRef) -> Result<Image, ResolveError> {
        let arch = self.arch.oci();
        match &image.source {
            ImageSource::Reference(text) => {
                let r = Reference::parse(text).map_err(|source| ResolveError::Reference {
                    image: text.clone(),
                    source,
                })?;
                let mut stored = None;
                if !self.refresh && self.provider.has(&r)? {
                    match self.provider.load(&r, arch) {
                        Ok(image) => return Ok(image),
                        // E.g. an index pulled for another platform: fetch what is missing.
                        Err(e) => {
                            tracing::debug!(
                                "{}: not usable from the store ({e}); pulling",
                                r.familiar()
                            );
                            stored = Some(e);
                        }
                    }
                }
                self.provider.pull(&r, arch).map_err(|pulled| match stored {
                    // The store's platforms say more than a failed pull does.
                    Some(ResolveError::Store(e @ StoreError::NoPlatform { .. })) => {
                        ResolveError::StoredPlatforms {
                            stored: e,
                            pulled: Box::new(pulled),
                        }
                    }
                    _ => pulled,
                })
            }
            ImageSource::Package(dir) => {
                let r = self.provider.build_package(image, dir, self.arch)?;
                self.provider
                    .load(&r, arch)
                    .map_err(|source| ResolveError::PackagePlatform {
                        image: image.to_string(),
                        wanted: self.platform().to_string(),
                        source: Box::new(source),
                    })
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

    fn build_package(
        &self,
        image: &ImageRef,
        dir: &Path,
        arch: Arch,
    ) -> Result<Reference, ResolveError> {
        let opts = pkg::Options {
            cache_dir: self.deb_cache.clone(),
            arch,
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
        /// Names handed out as amd64 whatever was asked (a provider's bug, or a
        /// package built for amd64 only).
        amd64_only: BTreeSet<String>,
        calls: RefCell<Vec<String>>,
    }

    impl Fake {
        /// An image of `reference` whose config says `arch`.
        fn image(reference: &Reference, arch: &str) -> Image {
            use oci_spec::image::{
                DescriptorBuilder, ImageConfigurationBuilder, ImageManifestBuilder, MediaType,
            };
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
                config: ImageConfigurationBuilder::default()
                    .os("linux")
                    .architecture(arch)
                    .build()
                    .unwrap(),
            }
        }
        fn made(&self, r: &Reference, arch: &str) -> Image {
            if self.amd64_only.contains(&r.familiar()) {
                return Fake::image(r, "amd64");
            }
            Fake::image(r, arch)
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
            Ok(self.made(r, arch))
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
            Ok(self.made(r, arch))
        }
        fn build_package(
            &self,
            _: &ImageRef,
            dir: &Path,
            arch: Arch,
        ) -> Result<Reference, ResolveError> {
            self.calls
                .borrow_mut()
                .push(format!("build {} {arch}", dir.display()));
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
        let r = Resolver::new(fake, Arch::Arm64);
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
        let r = Resolver::new(fake, Arch::Arm64);
        r.image(&image_ref("alpine:3")).unwrap();
        assert_eq!(r.provider.calls(), ["pull alpine:3 arm64"]);
    }

    #[test]
    fn an_unloadable_stored_image_is_pulled() {
        let fake = Fake {
            unloadable: ["alpine:3".to_string()].into(),
            remote: ["alpine:3".to_string()].into(),
            ..Default::default()
        };
        fake.stored.borrow_mut().insert("alpine:3".into());
        let r = Resolver::new(fake, Arch::Amd64);
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
        let r = Resolver::new(fake, Arch::Amd64).refresh(true);
        r.image(&image_ref("alpine:3")).unwrap();
        r.image(&image_ref("alpine:3")).unwrap();
        assert_eq!(
            r.provider.calls(),
            ["pull alpine:3 amd64", "pull alpine:3 amd64"]
        );
    }

    #[test]
    fn a_package_image_is_built_then_loaded() {
        let r = Resolver::new(Fake::default(), Arch::Amd64).refresh(true);
        let img = r.image(&image_ref("@pkg:/src/pkgs/getty")).unwrap();
        assert_eq!(img.reference.familiar(), "osk/getty:0");
        // `--pull` never sends a package image to a registry.
        assert_eq!(
            r.provider.calls(),
            ["build /src/pkgs/getty amd64", "load osk/getty:0 amd64"]
        );
    }

    #[test]
    fn a_failed_pull_names_the_image() {
        let r = Resolver::new(Fake::default(), Arch::Amd64);
        let err = r.image(&image_ref("example.org/nothing:1")).unwrap_err();
        assert!(err.to_string().contains("example.org/nothing:1"), "{err}");
    }

    #[test]
    fn a_bad_reference_names_the_image() {
        let r = Resolver::new(Fake::default(), Arch::Amd64);
        let bad = ImageRef {
            text: "Bad:Ref:x".into(),
            source: ImageSource::Reference("Bad:Ref:x".into()),
        };
        let err = r.image(&bad).unwrap_err();
        assert!(matches!(err, ResolveError::Reference { .. }), "{err:?}");
        assert!(err.to_string().starts_with("image Bad:Ref:x: "), "{err}");
        assert!(r.provider.calls().is_empty());
    }

    #[test]
    fn an_image_of_another_arch_is_refused_naming_what_it_has() {
        let fake = Fake {
            remote: ["alpine:3".to_string()].into(),
            amd64_only: ["alpine:3".to_string()].into(),
            ..Default::default()
        };
        let r = Resolver::new(fake, Arch::Arm64);
        let err = r.image(&image_ref("alpine:3")).unwrap_err();
        assert!(matches!(err, ResolveError::Platform { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("image alpine:3 is for linux/amd64, not linux/arm64"),
            "{text}"
        );
    }

    #[test]
    fn a_package_built_for_another_arch_is_refused() {
        let fake = Fake {
            amd64_only: ["osk/getty:0".to_string()].into(),
            ..Default::default()
        };
        let r = Resolver::new(fake, Arch::Arm64);
        let err = r.image(&image_ref("@pkg:/src/pkgs/getty")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("@pkg:/src/pkgs/getty"), "{text}");
        assert!(text.contains("linux/amd64"), "{text}");
        // The same package resolves for the arch it was built for.
        let fake = Fake {
            amd64_only: ["osk/getty:0".to_string()].into(),
            ..Default::default()
        };
        Resolver::new(fake, Arch::Amd64)
            .image(&image_ref("@pkg:/src/pkgs/getty"))
            .unwrap();
    }
}
