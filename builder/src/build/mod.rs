//! `osk build`: a [`BuildPlan`] (images already resolved) to kernel+initrd or tar outputs.
//!
//! The plan is assembled into one in-memory tree in LinuxKit's order
//! (kernel.tar, init images, onboot, onshutdown, services, files), then each
//! output streams that tree out of the spool into a temporary file in the
//! output directory; all of them are renamed into place only when every one
//! was written.

mod boot;
mod files;
mod output;
mod plan;
pub mod resolve;
mod rpi;
mod volume;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::assemble::{self, AssembleError, FileInode, InodeId, Kind, Meta, Node, Spool, Tree};
use crate::manifest::VolumeFormat;
use crate::reference::Digest;
use crate::store::{Image, PlatformSpec, Store, StoreError};

pub use files::{expand_source, parse_mode, FilePlan, FileWhat, ModeError};
pub use output::{remove_temporaries, write_tar, Format, FormatError};
pub use plan::{image_defaults, plan, FileEntryError, Resolve};
pub use resolve::{ImageProvider, ResolveError, Resolver, StoreRegistry};

pub use crate::initramfs::Compression;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    #[error("kernel image {image}: {reason}")]
    Kernel { image: String, reason: String },
    #[error("{what}: {path:?} {reason}")]
    Place {
        what: String,
        path: String,
        reason: String,
    },
    #[error("files[{index}] ({path}): {reason}")]
    File {
        index: usize,
        path: String,
        reason: String,
    },
    /// A `files` entry of the manifest is malformed.
    #[error("files[{index}] ({path}): {reason}")]
    FileEntry {
        index: usize,
        path: String,
        reason: FileEntryError,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("volume {volume}: image {image} for platform {platform} is not in the store whole; pull it with `osk pull --platform {platform} {image}` or drop it from the volume's platforms")]
    VolumePlatform {
        volume: String,
        image: String,
        platform: String,
        #[source]
        source: Box<StoreError>,
    },
    /// Pulling, loading or building an image failed; the error names the image.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("{0}")]
    Usage(String),
    #[error("boot binaries image {image}: {reason}")]
    Boot { image: String, reason: String },
    /// Names the stub, kernel or ESP file, or the disk size.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
}

/// The kernel section, with its image resolved.
#[derive(Debug, Clone)]
pub struct KernelPlan {
    pub image: Image,
    pub cmdline: String,
    /// The kernel binary's path in the image (LinuxKit's `binary`, default `kernel`).
    pub binary: String,
    /// The modules tar's path in the image (`tar`, default `kernel.tar`; None for `none`).
    pub tar: Option<String>,
    /// Early microcode cpio in the image (`ucode`), prepended uncompressed to the initrd.
    pub ucode: Option<String>,
}

impl KernelPlan {
    pub fn new(image: Image, cmdline: impl Into<String>) -> KernelPlan {
        KernelPlan {
            image,
            cmdline: cmdline.into(),
            binary: osk_layout::KERNEL_BINARY.into(),
            tar: Some(osk_layout::KERNEL_TAR.into()),
            ucode: None,
        }
    }
}

/// Which list a container comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Onboot,
    Onshutdown,
    Service,
}

/// One container: where its bundle goes, its image, and its generated specs.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// Root-relative bundle directory, e.g. `containers/services/getty`.
    pub bundle: String,
    pub image: Image,
    pub config_json: Vec<u8>,
    pub runtime_json: Vec<u8>,
}

impl ContainerPlan {
    /// The bundle directory osk-init expects for the `index`-th container of `section`.
    pub fn bundle_dir(section: Section, index: usize, name: &str) -> String {
        match section {
            Section::Onboot => format!(
                "{}/{}",
                osk_layout::ONBOOT_DIR,
                osk_layout::ordered_bundle_name(index, name)
            ),
            Section::Onshutdown => format!(
                "{}/{}",
                osk_layout::ONSHUTDOWN_DIR,
                osk_layout::ordered_bundle_name(index, name)
            ),
            Section::Service => format!("{}/{name}", osk_layout::SERVICES_DIR),
        }
    }
}

/// One manifest volume, with its image (if any) resolved.
#[derive(Debug, Clone)]
pub struct VolumePlan {
    pub name: String,
    /// Put into the volume's `lower`; None for an empty volume.
    pub image: Option<Image>,
    pub readonly: bool,
    /// `Filesystem`: the image's root filesystem; `Oci`: an OCI image layout.
    pub format: VolumeFormat,
    /// For `Oci`: the platforms the layout holds; empty means the image's own.
    pub platforms: Vec<PlatformSpec>,
}

/// Everything a build needs, with every image already in the store.
#[derive(Debug, Clone, Default)]
pub struct BuildPlan {
    pub kernel: Option<KernelPlan>,
    pub init: Vec<Image>,
    /// Placed before the containers, as LinuxKit does.
    pub volumes: Vec<VolumePlan>,
    /// Onboot, then onshutdown, then services, each in manifest order.
    pub containers: Vec<ContainerPlan>,
    pub files: Vec<FilePlan>,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub formats: Vec<Format>,
    pub dir: PathBuf,
    pub name: String,
    pub compress: Compression,
    /// Every mtime in the outputs (SOURCE_DATE_EPOCH, else 0).
    pub mtime: u32,
    /// The disk formats' size in bytes (None: just large enough).
    pub disk_size: Option<u64>,
    /// The boot binaries image (`pkgs/bootloader`), needed by `uki` and the disk formats.
    pub boot: Option<Image>,
    /// The Raspberry Pi firmware image (`pkgs/raspi`), needed by `rpi4`.
    pub firmware: Option<Image>,
}

/// The assembled system: the root tree and the kernel pieces beside it.
#[derive(Debug)]
pub struct Assembled {
    pub tree: Tree,
    /// The kernel image's name, for messages.
    pub kernel_image: String,
    pub kernel: Option<FileInode>,
    /// The kernel image's device trees (`dtbs/NAME.dtb`), by file name.
    pub dtbs: Vec<(String, FileInode)>,
    pub ucode: Option<FileInode>,
    pub cmdline: String,
}

/// Reads `SOURCE_DATE_EPOCH` (0 when unset).
pub fn source_date_epoch() -> Result<u32, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) if v.is_empty() => Ok(0),
        Ok(v) => v.trim().parse().map_err(|_| {
            BuildError::Usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds (0..=4294967295)"
            ))
        }),
    }
}

/// Assembles the plan and writes every output format; returns the files written.
pub fn build(
    store: &Store,
    spool: &Spool,
    plan: &BuildPlan,
    opts: &BuildOptions,
) -> Result<Vec<PathBuf>, BuildError> {
    if opts.formats.is_empty() {
        return Err(BuildError::Usage("no output format given".into()));
    }
    for f in [Format::KernelInitrd, Format::Rpi4] {
        if opts.formats.contains(&f) && plan.kernel.is_none() {
            return Err(BuildError::Usage(format!(
                "format {f} needs a kernel section in the manifest"
            )));
        }
    }
    let bootable: Vec<String> = (opts.formats.iter())
        .filter(|f| f.needs_boot())
        .map(|f| f.to_string())
        .collect();
    if !bootable.is_empty() && plan.kernel.is_none() {
        return Err(BuildError::Usage(format!(
            "format {} needs a kernel section in the manifest",
            bootable.join(", ")
        )));
    }
    let bios = opts.formats.iter().any(|f| f.needs_bios());
    let boot_files = match (&opts.boot, bootable.is_empty()) {
        (_, true) => None,
        (Some(image), false) => Some(boot::load(store, spool, image, bios)?),
        (None, false) => {
            return Err(BuildError::Usage(format!(
                "format {} needs the boot binaries image: build it with `osk pkg build pkgs/bootloader` and pass it as `--bootloader @pkg:PATH/pkgs/bootloader` (or a reference)",
                bootable.join(", ")
            )))
        }
    };
    let firmware = match (&opts.firmware, opts.formats.contains(&Format::Rpi4)) {
        (_, false) => None,
        (Some(image), true) => Some(rpi::load_firmware(store, spool, image)?),
        (None, true) => {
            return Err(BuildError::Usage(
                "format rpi4 needs the Raspberry Pi firmware image: build it with `osk pkg build --arch arm64 pkgs/raspi` and pass it as `--firmware @pkg:PATH/pkgs/raspi` (or a reference)".into(),
            ))
        }
    };
    for image in plan_images(plan) {
        store
            .check_layer_sizes(image)
            .map_err(|(digest, source)| AssembleError::Blob {
                image: image.reference.familiar(),
                digest,
                source: Box::new(source),
            })?;
    }
    let segments = crate::initramfs::SegmentCache::in_store(store.root());
    let attempt = || {
        assemble(store, spool, plan).and_then(|a| {
            let boot = boot_files.as_ref();
            output::write_outputs(spool, &segments, &a, boot, firmware.as_deref(), opts)
        })
    };
    match attempt() {
        Err(e) if assemble::spool_damage(&e).is_some() => {
            let first = assemble::spool_damage(&e).expect("checked").clone();
            heal_spool(spool, plan, first)?;
            // Healed entries come from verified blobs; damage now is a failing disk.
            attempt()
        }
        other => other,
    }
}

/// Every image a plan names (volumes' other platforms are loaded later).
fn plan_images(plan: &BuildPlan) -> impl Iterator<Item = &Image> {
    let kernel = plan.kernel.iter().map(|k| &k.image);
    let volumes = plan.volumes.iter().filter_map(|v| v.image.as_ref());
    let containers = plan.containers.iter().map(|c| &c.image);
    kernel.chain(&plan.init).chain(volumes).chain(containers)
}

/// Reports and drops `first` and every other damaged spool entry, naming the
/// images that use each, so the next attempt spools them again from their
/// verified blobs (a bad blob then fails the build, naming its image).
fn heal_spool(
    spool: &Spool,
    plan: &BuildPlan,
    first: assemble::SpoolDamage,
) -> Result<(), BuildError> {
    let mut damaged = spool.check_content().map_err(spool_err(spool))?;
    if !damaged.iter().any(|d| d.path == first.path) {
        damaged.push(first);
    }
    for d in damaged {
        let mut users: Vec<String> = match d.expected {
            Some(sha) => plan_images(plan)
                .filter(|i| assemble::image_uses_content(spool, i, &sha))
                .map(|i| i.reference.familiar())
                .collect(),
            None => Vec::new(),
        };
        users.sort();
        users.dedup();
        let by = if users.is_empty() {
            "no image of this build (or the manifest's files and generated specs)".to_string()
        } else {
            format!("image {}", users.join(", image "))
        };
        tracing::warn!(
            "{d}; used by {by}; dropping it and spooling it again from the verified blob"
        );
        std::fs::remove_file(&d.path)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|source| BuildError::Io {
                path: d.path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Builds the root tree from the plan.
pub fn assemble(store: &Store, spool: &Spool, plan: &BuildPlan) -> Result<Assembled, BuildError> {
    let mut root = Tree::new();
    let mut out = Assembled {
        tree: Tree::new(),
        kernel_image: String::new(),
        kernel: None,
        dtbs: Vec::new(),
        ucode: None,
        cmdline: String::new(),
    };
    if let Some(k) = &plan.kernel {
        let name = k.image.reference.familiar();
        tracing::info!("kernel {name}");
        let tree = assemble::flatten(store, spool, &k.image)?;
        let missing = |what: &str, path: &str| BuildError::Kernel {
            image: name.clone(),
            reason: format!(
                "has no {what} file {path:?} (set it in the manifest's kernel section)"
            ),
        };
        out.kernel = Some(
            *tree
                .file(k.binary.as_bytes())
                .ok_or_else(|| missing("kernel binary", &k.binary))?,
        );
        if let Some(u) = &k.ucode {
            out.ucode = Some(*tree.file(u.as_bytes()).ok_or_else(|| missing("ucode", u))?);
        }
        let dtb_dir = format!("{}/", osk_layout::KERNEL_DTBS);
        for (path, _) in tree.walk() {
            let Some(file) = (path.strip_prefix(dtb_dir.as_bytes()))
                .filter(|f| !f.contains(&b'/'))
                .and_then(|f| String::from_utf8(f.to_vec()).ok())
            else {
                continue;
            };
            if let Some(inode) = tree.file(&path) {
                out.dtbs.push((file, *inode));
            }
        }
        out.kernel_image = name.clone();
        if let Some(t) = &k.tar {
            let tar = tree
                .file(t.as_bytes())
                .ok_or_else(|| missing("modules tar", t))?;
            let entries = assemble::spooled_tar_entries(spool, &name, t, &tar.sha)?;
            root.apply_layer(&entries, &format!("{name} ({t})"), false)?;
        }
        out.cmdline = k.cmdline.clone();
    }
    for image in &plan.init {
        let name = image.reference.familiar();
        tracing::info!("init {name}");
        let tree = assemble::flatten(store, spool, image)?;
        graft(
            &mut root,
            &tree,
            "",
            &mut HashMap::new(),
            &format!("init image {name}"),
        )?;
    }
    for v in &plan.volumes {
        volume::place(&mut root, store, spool, v)?;
    }
    // One flattened tree and inode map per image: a second placement of the
    // same image hard-links to the first instead of storing it again.
    let mut placed: HashMap<Digest, (Tree, HashMap<InodeId, InodeId>)> = HashMap::new();
    let empty = spool.put_bytes(b"").map_err(spool_err(spool))?;
    for c in &plan.containers {
        let name = c.image.reference.familiar();
        tracing::info!("{} {name}", c.bundle);
        if !placed.contains_key(&c.image.manifest_digest) {
            let mut tree = assemble::flatten(store, spool, &c.image)?;
            touch(&mut tree, empty, &name);
            placed.insert(c.image.manifest_digest.clone(), (tree, HashMap::new()));
        }
        let (tree, inodes) = placed
            .get_mut(&c.image.manifest_digest)
            .expect("inserted above");
        let what = format!("container {} (image {name})", c.bundle);
        let place = |reason: String, path: &str| BuildError::Place {
            what: what.clone(),
            path: path.to_string(),
            reason,
        };
        let bundle = c.bundle.trim_matches('/');
        if root.lookup(bundle.as_bytes()).is_some() {
            return Err(place(
                "is used by two containers; names must be unique".into(),
                bundle,
            ));
        }
        root.add_dir(bundle.as_bytes(), Meta::root(0o755), Meta::root(0o755))
            .map_err(|r| place(r.to_string(), bundle))?;
        for (file, bytes) in [
            (osk_layout::CONFIG_JSON, &c.config_json),
            (osk_layout::RUNTIME_JSON, &c.runtime_json),
        ] {
            let sha = spool.put_bytes(bytes).map_err(spool_err(spool))?;
            let path = format!("{bundle}/{file}");
            root.add_file(
                path.as_bytes(),
                sha,
                bytes.len() as u64,
                Meta::root(0o644),
                Meta::root(0o755),
            )
            .map_err(|r| place(r.to_string(), &path))?;
        }
        let rootfs = format!("{bundle}/{}", osk_layout::ROOTFS_DIR);
        graft(&mut root, tree, &rootfs, inodes, &what)?;
    }
    files::apply(&mut root, spool, &plan.files)?;
    out.tree = root;
    Ok(out)
}

fn graft(
    root: &mut Tree,
    src: &Tree,
    at: &str,
    inodes: &mut HashMap<InodeId, InodeId>,
    what: &str,
) -> Result<(), BuildError> {
    let kept = root
        .graft(src, at.as_bytes(), inodes)
        .map_err(|reason| BuildError::Place {
            what: what.to_string(),
            path: at.to_string(),
            reason: reason.to_string(),
        })?;
    for path in kept {
        tracing::warn!("{what}: {path} is a directory from an earlier image; keeping it and ignoring the non-directory");
    }
    Ok(())
}

/// Paths runc needs to exist in a container's root (LinuxKit adds the same).
fn touch(tree: &mut Tree, empty: assemble::Sha, image: &str) {
    let dir = || Node {
        meta: Meta::root(0o755),
        kind: Kind::Dir(Default::default()),
    };
    let mut results = Vec::new();
    for d in ["dev", "dev/pts", "dev/shm", "etc", "proc", "sys"] {
        results.push((d, tree.add_if_missing(d.as_bytes(), dir())));
    }
    results.push((
        "etc/mtab",
        tree.add_if_missing(
            b"etc/mtab",
            Node {
                meta: Meta::root(0o777),
                kind: Kind::Symlink(b"/proc/mounts".to_vec()),
            },
        ),
    ));
    for f in ["etc/resolv.conf", "etc/hosts"] {
        let r = if tree.lookup(f.as_bytes()).is_some() {
            Ok(())
        } else {
            tree.add_file(f.as_bytes(), empty, 0, Meta::root(0o644), Meta::root(0o755))
        };
        results.push((f, r));
    }
    for (path, r) in results {
        if let Err(reason) = r {
            tracing::warn!("image {image}: cannot create /{path}: {reason}");
        }
    }
}

fn spool_err(spool: &Spool) -> impl Fn(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: spool.root().to_path_buf(),
        source,
    }
}

/// The default output name: the first manifest's file stem (as LinuxKit),
/// `osk` for standard input (`-`).
pub fn default_name(first_manifest: &Path) -> String {
    if first_manifest == Path::new("-") {
        return "osk".into();
    }
    first_manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "osk".into())
}

/// `formats` without repeats, in the order first given.
pub fn unique_formats(formats: impl IntoIterator<Item = Format>) -> Vec<Format> {
    let mut out = Vec::new();
    for f in formats {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_name_is_the_stem_or_osk_for_stdin() {
        assert_eq!(default_name(Path::new("/x/node.yml")), "node");
        assert_eq!(default_name(Path::new("-")), "osk");
    }

    #[test]
    fn unique_formats_keeps_first_order() {
        assert_eq!(
            unique_formats([Format::Tar, Format::KernelInitrd, Format::Tar]),
            [Format::Tar, Format::KernelInitrd]
        );
    }
}
