//! Glue from a loaded [`Manifest`] to a [`BuildPlan`]: every image resolved,
//! every container's `config.json`/`runtime.json` generated from the manifest,
//! the image's `org.mobyproject.config` label and its config.

use crate::manifest::{
    ContainerKind, FileEntry, Id, ImageConfig, ImageRef, Manifest, Volume, VolumeFormat,
};
use crate::spec::{self, ImageDefaults};
use crate::store::{Image, PlatformSpec};

use super::{
    BuildError, BuildPlan, ContainerPlan, FilePlan, FileWhat, KernelPlan, Section, VolumePlan,
};

/// A `files` entry that cannot become a [`FilePlan`]; variants carry the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum FileEntryError {
    #[error("unsupported metadata {0:?} (yaml or json)")]
    Metadata(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("has no contents, source, symlink, metadata or directory")]
    Empty,
    #[error("unknown user or group `{0}`: use a number, `root`, or a container's name")]
    UnknownId(String),
    #[error("{0}")]
    Mode(#[from] crate::manifest::ValueError),
}

/// Turns an image reference of the manifest into an image in the store
/// (from the store, a registry, or a package build).
pub trait Resolve {
    fn resolve(&mut self, image: &ImageRef) -> Result<Image, BuildError>;
}

impl<F: FnMut(&ImageRef) -> Result<Image, BuildError>> Resolve for F {
    fn resolve(&mut self, image: &ImageRef) -> Result<Image, BuildError> {
        self(image)
    }
}

/// What the image's config says about how to run it.
pub fn image_defaults(image: &Image) -> ImageDefaults {
    let Some(c) = image.config.config().as_ref() else {
        return ImageDefaults::default();
    };
    ImageDefaults {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
        ..Default::default()
    }
}

/// Resolves every image of `m` and generates each container's specs.
pub fn plan(m: &Manifest, resolver: &mut impl Resolve) -> Result<BuildPlan, BuildError> {
    let mut plan = BuildPlan::default();
    if let Some(image) = &m.kernel.image {
        let mut k = KernelPlan::new(
            resolver.resolve(image)?,
            m.kernel.cmdline.clone().unwrap_or_default(),
        );
        if let Some(b) = &m.kernel.binary {
            k.binary = b.clone();
        }
        match m.kernel.tar.as_deref() {
            Some("none") => k.tar = None,
            Some(t) => k.tar = Some(t.to_string()),
            None => {}
        }
        k.ucode = m.kernel.ucode.clone().filter(|u| !u.is_empty());
        plan.kernel = Some(k);
    }
    for image in &m.init {
        plan.init.push(resolver.resolve(image)?);
    }
    for v in &m.volumes {
        plan.volumes.push(volume_plan(v, resolver)?);
    }
    for (kind, section) in [
        (ContainerKind::Onboot, Section::Onboot),
        (ContainerKind::Onshutdown, Section::Onshutdown),
        (ContainerKind::Service, Section::Service),
    ] {
        for (index, entry) in m.section(kind).iter().enumerate() {
            let image = resolver.resolve(&entry.image)?;
            let name = image.reference.familiar();
            let label = match image.label(osk_layout::CONFIG_LABEL) {
                Some(text) => Some(
                    ImageConfig::from_label(text, &name)
                        .map_err(|e| BuildError::Usage(e.to_string()))?,
                ),
                None => None,
            };
            let defaults = image_defaults(&image).with_manifest(m);
            let (spec, runtime) = spec::generate(entry, label.as_ref(), &defaults, kind)
                .map_err(|e| BuildError::Usage(e.to_string()))?;
            plan.containers.push(ContainerPlan {
                bundle: ContainerPlan::bundle_dir(section, index, &entry.name),
                image,
                config_json: spec::to_json_bytes(&spec),
                runtime_json: spec::runtime_json_bytes(&runtime),
            });
        }
    }
    let ids = m.id_map();
    for (index, f) in m.files.iter().enumerate() {
        plan.files.push(
            file_plan(m, f, &ids).map_err(|reason| BuildError::FileEntry {
                index,
                path: format!("{} ({})", f.path, f.origin),
                reason,
            })?,
        );
    }
    Ok(plan)
}

/// A volume's image resolved (for the build's platform) and its platforms parsed.
fn volume_plan(v: &Volume, resolver: &mut impl Resolve) -> Result<VolumePlan, BuildError> {
    let format = v.format.unwrap_or(VolumeFormat::Filesystem);
    let mut platforms: Vec<PlatformSpec> = Vec::new();
    for p in v.platforms.iter().flatten() {
        let p: PlatformSpec = p.parse().map_err(|e| {
            BuildError::Usage(format!(
                "{}:{}: volume `{}`: {e}",
                v.origin.file,
                v.origin.at("platforms"),
                v.name
            ))
        })?;
        if !platforms.contains(&p) {
            platforms.push(p);
        }
    }
    if !platforms.is_empty() && format != VolumeFormat::Oci {
        tracing::warn!(
            "{}: volume `{}`: `platforms` only applies to `format: oci`; ignoring it",
            v.origin,
            v.name
        );
        platforms.clear();
    }
    Ok(VolumePlan {
        name: v.name.clone(),
        // Without an image LinuxKit makes an empty volume whatever the format.
        image: match &v.image {
            Some(image) => Some(resolver.resolve(image)?),
            None => None,
        },
        readonly: v.readonly,
        format,
        platforms,
    })
}

fn file_plan(
    m: &Manifest,
    f: &FileEntry,
    ids: &std::collections::BTreeMap<String, u32>,
) -> Result<FilePlan, FileEntryError> {
    let what = if f.directory {
        FileWhat::Directory
    } else if let Some(t) = &f.symlink {
        FileWhat::Symlink(t.clone())
    } else if let Some(c) = &f.contents {
        FileWhat::Contents(c.clone().into_bytes())
    } else if let Some(kind) = &f.metadata {
        FileWhat::Contents(match kind.as_str() {
            "yaml" => m.to_yaml().into_bytes(),
            "json" => {
                let v = serde_json::to_value(m)?;
                let mut b = serde_json::to_vec_pretty(&v)?;
                b.push(b'\n');
                b
            }
            other => return Err(FileEntryError::Metadata(other.into())),
        })
    } else if let Some(src) = f.source_path() {
        FileWhat::Source(src)
    } else {
        return Err(FileEntryError::Empty);
    };
    // LinuxKit's ids: a number, `root`, or another container's name.
    let id = |v: &Option<Id>| match v {
        None => Ok(0),
        Some(Id::Num(n)) => Ok(*n),
        Some(Id::Name(n)) if n.is_empty() || n == "root" => Ok(0),
        Some(Id::Name(n)) => ids
            .get(n)
            .copied()
            .ok_or_else(|| FileEntryError::UnknownId(n.clone())),
    };
    Ok(FilePlan {
        path: f.path.clone(),
        what,
        mode: Some(f.mode_bits()?),
        uid: id(&f.uid)?,
        gid: id(&f.gid)?,
        optional: f.optional,
    })
}
