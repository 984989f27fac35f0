//! Orchestration: lock, assemble, build, store.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::debian::apt_source;
use super::debian::deb::{self, Filter};
use super::debian::fetch::{default_cache_dir, Fetcher};
use super::debian::index::{parse_atom, parse_packages};
use super::debian::release::{Keyring, Release, ALLOW_EXPIRED_ENV, DEFAULT_KEYRING};
use super::debian::resolve::{resolve, Universe};
use super::image::{self, Image, RunConfig};
use super::lock::{inputs_hash, Lock, Locked, Locks, LOCK_FILE};
use super::spec::{parse_mode, Base, Spec};
use super::tree::{normalise, Bytes, Node, Patterns, Tree, MERGED_USR_DIRS};
use super::{kernel, Error};
use crate::arch::Arch;
use crate::assemble::{self, Spool};
use crate::reference::Reference;
use crate::store::{self, Store};
use oci_spec::image::{Descriptor, ImageConfiguration, MediaType, PlatformBuilder};

/// Bumped when the builder's output for the same inputs changes.
const FORMAT: &str = "osk-pkg-1";
/// The same for kernel packages only (2: `etc/osk/modules` holds
/// `kernel.boot`; 3: modules.order only lists the shipped modules, no
/// modules.builtin.modinfo).
const KERNEL_FORMAT: &str = "osk-kernel-3";
/// Image references are `osk/NAME:TAG`.
pub const IMAGE_PREFIX: &str = "osk/";
/// Where Debian's ca-certificates puts the single certificates `ca-bundle` folds together.
const CA_CERTS_DIR: &str = "usr/share/ca-certificates";

/// How to reach the archive and where to cache.
#[derive(Debug, Clone)]
pub struct Options {
    /// Mirror URL; `None`: `OSK_DEBIAN_MIRROR`, then the host's apt sources.
    pub mirror: Option<String>,
    pub keyring: PathBuf,
    pub cache_dir: PathBuf,
    /// The host apt configuration directory (normally `/etc/apt`).
    pub etc_apt: PathBuf,
    /// mtime of every layer entry (`SOURCE_DATE_EPOCH`, else 0).
    pub source_date_epoch: u64,
    /// Lock against a Release past its `Valid-Until` (default: `OSK_ALLOW_EXPIRED_RELEASE=1`).
    pub allow_expired_release: bool,
    /// Registries reached over plain HTTP when a `from:` image must be pulled.
    pub insecure_registries: Vec<String>,
    /// The architecture to lock and build for (`--arch`; default: the host's).
    pub arch: Arch,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mirror: None,
            keyring: PathBuf::from(DEFAULT_KEYRING),
            cache_dir: default_cache_dir(),
            etc_apt: PathBuf::from("/etc/apt"),
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            allow_expired_release: std::env::var(ALLOW_EXPIRED_ENV).as_deref() == Ok("1"),
            insecure_registries: Vec::new(),
            arch: Arch::host(),
        }
    }
}

/// A package folder, read and checked, as built for one architecture.
struct Package {
    dir: PathBuf,
    name: String,
    /// build.yml with its variables expanded for `arch`.
    spec: Spec,
    arch: Arch,
    locks: Option<Locks>,
}

impl Package {
    fn load(dir: &Path, arch: Arch) -> Result<Package, Error> {
        let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Other(format!("{}: no package name", dir.display())))?
            .to_string();
        let path = dir.join("build.yml");
        let spec_text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let spec = Spec::parse(&spec_text, &path)?.for_arch(arch, &path)?;
        let locks = Locks::read(&dir)?;
        Ok(Package {
            dir,
            name,
            spec,
            arch,
            locks,
        })
    }

    /// This architecture's lock, which must exist and match build.yml.
    fn checked_lock(&self) -> Result<Option<Lock>, Error> {
        if self.spec.debian.is_none() {
            return Ok(None);
        }
        let arch = self.arch;
        let path = self.dir.join(LOCK_FILE).display().to_string();
        let relock = format!("osk pkg lock --arch {arch} {}", self.dir.display());
        let lock = match &self.locks {
            None => {
                return Err(Error::Lock {
                    path,
                    message: format!("missing; run `{relock}`"),
                })
            }
            Some(l) => l.get(arch).ok_or_else(|| Error::Lock {
                path: path.clone(),
                message: format!("has no {arch} resolution; run `{relock}`"),
            })?,
        };
        if lock.inputs != inputs_hash(&self.spec, arch) {
            return Err(Error::Lock {
                path,
                message: format!(
                    "stale for {arch}: build.yml's debian/kernel sections changed since it was written; run `{relock}`"
                ),
            });
        }
        Ok(Some(lock))
    }

    fn spec_path(&self) -> String {
        self.dir.join("build.yml").display().to_string()
    }
}

/// Resolves build.yml's Debian packages against the signed archive and
/// writes `build.lock`. Returns the lock.
pub fn lock(dir: &Path, opts: &Options) -> Result<Lock, Error> {
    let pkg = Package::load(dir, opts.arch)?;
    let arch = opts.arch;
    let for_arch = |e: Error| Error::ForArch {
        package: pkg.name.clone(),
        arch,
        source: Box::new(e),
    };
    let debian = pkg.spec.debian.as_ref().ok_or_else(|| Error::Spec {
        at: pkg.dir.join("build.yml").display().to_string(),
        message: "no `debian` section: nothing to lock".into(),
    })?;
    let mirror = apt_source::mirror(opts.mirror.as_deref(), &opts.etc_apt)?;
    let keyring = Keyring::load(&opts.keyring)?;
    let fetcher = Fetcher::new(opts.cache_dir.clone());
    let mut all = Vec::new();
    for suite in &debian.suites {
        let origin = format!("dists/{suite}/InRelease");
        let signed = fetcher.get_text(&format!("{mirror}/{origin}"))?;
        let text = keyring.verify_cleartext(&signed, &origin)?;
        let release = Release::parse(&text, &origin)?;
        release.check_valid_until(unix_now(), opts.allow_expired_release, suite, &mirror)?;
        for comp in &debian.components {
            let base = format!("{comp}/binary-{}/Packages", arch.debian());
            let (key, entry) = ["xz", "gz"]
                .iter()
                .find_map(|ext| {
                    let k = format!("{base}.{ext}");
                    release.files.get(&k).map(|e| (k, e.clone()))
                })
                .ok_or_else(|| Error::Release {
                    file: origin.clone(),
                    message: format!("lists no {base}.xz or .gz"),
                })?;
            let name = format!("dists/{suite}/{key}");
            let path = fetcher.get_verified(
                &format!("{mirror}/{name}"),
                &entry.sha256,
                entry.size,
                &name,
            )?;
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let mut text = String::new();
            let mut reader: Box<dyn Read> = if key.ends_with(".xz") {
                Box::new(liblzma::read::XzDecoder::new(file))
            } else {
                Box::new(flate2::read::GzDecoder::new(file))
            };
            reader
                .read_to_string(&mut text)
                .map_err(|e| Error::io(&path, e))?;
            all.extend(parse_packages(&text, &name)?);
        }
    }
    let universe = Universe::new(all, arch.debian());
    let requests = debian
        .packages
        .iter()
        .map(|p| parse_atom(p.name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| Error::Spec {
            at: pkg.dir.join("build.yml").display().to_string(),
            message: m.to_string(),
        })?;
    let mut chosen = resolve(&universe, &requests, &debian.skip).map_err(for_arch)?;
    if let Some(k) = &pkg.spec.kernel {
        // The kernel's own dependencies (kmod, initramfs tools) serve the
        // host's boot scripts, not an image: take the package alone.
        let p = universe
            .get(&k.package)
            .and_then(|l| l.first())
            .ok_or_else(|| Error::Unresolvable {
                dependency: k.package.clone(),
                chain: "kernel.package".into(),
                detail: "not in the indexes (the ABI name changes with each kernel update)".into(),
            })
            .map_err(for_arch)?;
        chosen.push(p.clone());
    }
    let lock = Lock::new(
        inputs_hash(&pkg.spec, arch),
        chosen
            .into_iter()
            .map(|p| Locked {
                name: p.name,
                version: p.version.to_string(),
                architecture: p.architecture,
                sha256: p.sha256,
                size: p.size,
                filename: p.filename,
            })
            .collect(),
    );
    let mut locks = pkg.locks.clone().unwrap_or_default();
    locks.set(arch, lock.clone());
    locks.write(&pkg.dir)?;
    Ok(lock)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Downloads (or finds cached) every locked .deb.
fn fetch_debs(
    pkg: &Package,
    lock: &Lock,
    opts: &Options,
) -> Result<BTreeMap<String, PathBuf>, Error> {
    let fetcher = Fetcher::new(opts.cache_dir.clone());
    let mut mirror: Option<String> = None;
    let mut out = BTreeMap::new();
    for p in &lock.packages {
        let cached = fetcher.cached_path(&p.sha256);
        let path = if cached.exists() {
            cached
        } else {
            if mirror.is_none() {
                mirror = Some(apt_source::mirror(opts.mirror.as_deref(), &opts.etc_apt)?);
            }
            let url = format!("{}/{}", mirror.as_deref().unwrap_or_default(), p.filename);
            let label = format!("{} {} ({})", p.name, p.version, p.filename);
            fetcher
                .get_verified(&url, &p.sha256, p.size, &label)
                .map_err(|e| match e {
                    Error::Http { not_found: true, .. } => Error::Lock {
                        path: pkg.dir.join(LOCK_FILE).display().to_string(),
                        message: format!(
                            "the mirror no longer has {label}; run `osk pkg lock {}` to move to what it has",
                            pkg.dir.display()
                        ),
                    },
                    e => e,
                })?
        };
        out.insert(p.name.clone(), path);
    }
    Ok(out)
}

/// Walks up from `dir` to the cargo workspace root.
fn workspace_root(dir: &Path) -> Result<PathBuf, Error> {
    for d in dir.ancestors() {
        let toml = d.join("Cargo.toml");
        if std::fs::read_to_string(&toml).is_ok_and(|t| t.contains("[workspace]")) {
            return Ok(d.to_path_buf());
        }
    }
    Err(Error::Other(format!(
        "{}: `binaries` needs the package to live inside the osk cargo workspace",
        dir.display()
    )))
}

/// Builds the spec's workspace binaries: static, with paths remapped so the
/// bytes do not depend on where the checkout lives.
fn build_binaries(pkg: &Package) -> Result<Vec<(String, Vec<u8>)>, Error> {
    if pkg.spec.binaries.is_empty() {
        return Ok(Vec::new());
    }
    let root = workspace_root(&pkg.dir)?;
    let target = pkg.arch.rust_target();
    let linker_env = cross_linker(&root, pkg.arch).map_err(|message| Error::Cargo {
        package: pkg.spec.binaries[0].package.clone(),
        message,
    })?;
    // The workspace's `[profile.image]`: fat LTO, one codegen unit, size-optimised.
    const PROFILE: &str = "image";
    let mut packages: Vec<&str> = pkg
        .spec
        .binaries
        .iter()
        .map(|b| b.package.as_str())
        .collect();
    packages.sort();
    packages.dedup();
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    // `-C strip=symbols` here because cargo 1.95 passes `strip=debuginfo`
    // whatever the profile says; a later -C wins. osk-init: -730 kB.
    let rustflags = format!(
        "-C target-feature=+crt-static -C strip=symbols --remap-path-prefix={}=/osk --remap-path-prefix={}=/cargo",
        root.display(),
        cargo_home.display()
    );
    for p in &packages {
        tracing::info!("cargo build --profile {PROFILE} -p {p} --target {target}");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.envs(linker_env.clone());
        let out = cargo
            .current_dir(&root)
            .env("RUSTFLAGS", &rustflags)
            .args([
                "build",
                "--profile",
                PROFILE,
                "--locked",
                "-p",
                p,
                "--bins",
                "--target",
                target,
            ])
            .output()
            .map_err(|e| Error::Cargo {
                package: p.to_string(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(Error::Cargo {
                package: p.to_string(),
                message: String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    pkg.spec
        .binaries
        .iter()
        .map(|b| {
            let path = target_dir.join(target).join(PROFILE).join(&b.bin);
            std::fs::read(&path)
                .map(|d| (b.dest.clone(), d))
                .map_err(|e| Error::io(&path, e))
        })
        .collect()
}

/// What cargo needs to link for `arch` on this host, as environment
/// variables; or what to run when the Rust target is missing.
fn cross_linker(root: &Path, arch: Arch) -> Result<Vec<(String, String)>, String> {
    let target = arch.rust_target();
    if target == host_rust_target() {
        return Ok(Vec::new());
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .current_dir(root)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("{rustc} --print sysroot: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    linker_env(&sysroot, arch, |v| std::env::var_os(v).is_some())
}

/// [`cross_linker`] for the toolchain at `sysroot`; `is_set` tells whether
/// the user already chose a linker through an environment variable.
fn linker_env(
    sysroot: &Path,
    arch: Arch,
    is_set: impl Fn(&str) -> bool,
) -> Result<Vec<(String, String)>, String> {
    let target = arch.rust_target();
    let rustlib = sysroot.join("lib/rustlib");
    if !rustlib.join(target).join("lib").is_dir() {
        return Err(format!(
            "the Rust target {target} (osk's binaries for {arch}) is not installed: run `rustup target add {target}`"
        ));
    }
    let var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    if is_set(&var) {
        return Ok(Vec::new());
    }
    // The toolchain's own lld links a static musl binary with the target's
    // self-contained C runtime: no cross gcc needed.
    let lld = rustlib.join(host_rust_target()).join("bin/rust-lld");
    if !lld.is_file() {
        return Err(format!(
            "no linker for {target}: this Rust toolchain has no rust-lld ({}); install a rustup toolchain, \
             or Debian's cross linker (`apt-get install gcc-aarch64-linux-gnu`) and set {var}=aarch64-linux-gnu-gcc",
            lld.display()
        ));
    }
    Ok(vec![(var, "rust-lld".into())])
}

/// The Rust target of the machine building.
fn host_rust_target() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => Arch::Arm64.rust_target(),
        _ => Arch::Amd64.rust_target(),
    }
}

/// Every file in the package folder, sorted, for the tag.
fn folder_files(dir: &Path) -> Result<Vec<(String, u32, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let e = e.map_err(|e| Error::io(&d, e))?;
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
            if meta.is_dir() {
                stack.push(p);
            } else {
                use std::os::unix::fs::PermissionsExt;
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .to_string();
                let data = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
                out.push((rel, meta.permissions().mode() & 0o111, data));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A package with its inputs gathered: ready to tag and assemble.
struct Prepared {
    pkg: Package,
    binaries: Vec<(String, Vec<u8>)>,
    base: Option<PreparedBase>,
    tag: String,
}

enum PreparedBase {
    Package(Box<Prepared>),
    /// An image from the store, resolved to one platform.
    Image(Box<store::Image>),
}

/// The `from:` image, from the store; pulled only when the store lacks it,
/// as `osk build` does for manifest images.
fn base_image(
    pkg: &Package,
    reference: &Reference,
    store: &Store,
    arch: &str,
    opts: &Options,
) -> Result<store::Image, Error> {
    let present = store.resolve(reference)?.is_some();
    let pull = crate::pull::PullOptions {
        arch: arch.to_string(),
        insecure_registries: opts.insecure_registries.clone(),
        ..Default::default()
    };
    crate::pull::ensure(store, reference, &pull).map_err(|e| Error::BaseImage {
        at: pkg.spec_path(),
        reference: reference.familiar(),
        message: if present {
            e.to_string()
        } else {
            format!(
                "not in the store {} ({arch}), and pulling it failed: {e}; \
                 get it with `osk pull {}` or `osk cache import`",
                store.root().display(),
                reference.familiar()
            )
        },
    })
}

fn prepare(dir: &Path, store: &Store, opts: &Options, depth: usize) -> Result<Prepared, Error> {
    if depth > 8 {
        return Err(Error::Other(format!(
            "{}: `from` chain too deep (a cycle?)",
            dir.display()
        )));
    }
    let pkg = Package::load(dir, opts.arch)?;
    let lock = pkg.checked_lock()?;
    let base = match pkg.spec.base() {
        Some(Base::Package(p)) => Some(PreparedBase::Package(Box::new(prepare(
            &pkg.dir.join(p),
            store,
            opts,
            depth + 1,
        )?))),
        Some(Base::Image(r)) => Some(PreparedBase::Image(Box::new(base_image(
            &pkg,
            &r,
            store,
            opts.arch.oci(),
            opts,
        )?))),
        None => None,
    };
    let binaries = build_binaries(&pkg)?;
    let mut h = Sha256::new();
    let mut field = |k: &str, v: &[u8]| {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    };
    field("format", FORMAT.as_bytes());
    if pkg.spec.kernel.is_some() {
        field("kernel-format", KERNEL_FORMAT.as_bytes());
        // arm64's /kernel became Image.gz; amd64's tags stay.
        if pkg.arch == Arch::Arm64 {
            field("kernel-image", b"Image.gz");
        }
    }
    // A bundle no longer keeps the single certificates beside it.
    if pkg.spec.ca_bundle.is_some() {
        field("ca-bundle", b"certificates folded in");
    }
    field("name", pkg.name.as_bytes());
    // amd64 tags stay what they were before other architectures.
    if pkg.arch != Arch::Amd64 {
        field("arch", pkg.arch.oci().as_bytes());
    }
    field(
        "source-date-epoch",
        opts.source_date_epoch.to_string().as_bytes(),
    );
    for (rel, exec, data) in folder_files(&pkg.dir)? {
        // Only this architecture's resolution: locking another one keeps this tag.
        let data = match (&rel[..], &pkg.locks, &lock) {
            (LOCK_FILE, Some(all), Some(_)) => all.only(pkg.arch).to_text()?.into_bytes(),
            _ => data,
        };
        field(&format!("file:{rel}:{exec:o}"), &data);
    }
    for (dest, data) in &binaries {
        field(&format!("binary:{dest}"), &Sha256::digest(data));
    }
    match &base {
        Some(PreparedBase::Package(b)) => field("base", b.tag.as_bytes()),
        // The platform manifest's digest: a changed base is a new tag.
        Some(PreparedBase::Image(i)) => field("base-image", i.manifest_digest.as_str().as_bytes()),
        None => {}
    }
    let tag = hex::encode(&h.finalize()[..16]);
    Ok(Prepared {
        pkg,
        binaries,
        base,
        tag,
    })
}

impl Prepared {
    fn reference(&self) -> String {
        format!("{IMAGE_PREFIX}{}:{}", self.pkg.name, self.tag)
    }
}

/// The root filesystem of a store image, its layers applied with OCI
/// semantics (whiteouts, opaque directories) by [`assemble::flatten`].
/// Hard links become copies, as in [`deb::unpack`].
fn image_tree(store: &Store, image: &store::Image) -> Result<Tree, Error> {
    let name = image.reference.familiar();
    let spool_dir = store.root().join("spool");
    let spool = Spool::open(&spool_dir).map_err(|e| Error::io(&spool_dir, e))?;
    let flat = assemble::flatten(store, &spool, image)?;
    // Paths and link targets become text in the package's tree and build.yml.
    let text = |b: &[u8]| {
        std::str::from_utf8(b).map(|_| ()).map_err(|_| {
            Error::Image(format!(
                "base image {name}: {:?} is not UTF-8",
                String::from_utf8_lossy(b)
            ))
        })
    };
    for (path, id) in flat.walk() {
        text(&path)?;
        if let assemble::Kind::Symlink(t) = &flat.node(id).kind {
            text(t)?;
        }
    }
    // Hard links keep sharing an inode; the layer writes each as a copy.
    flat.map_inodes(|inode| {
        let mut data = Vec::with_capacity(inode.size as usize);
        spool
            .open_content(&inode.sha)
            .and_then(|mut r| r.read_to_end(&mut data))
            .map_err(|e| {
                Error::Image(format!(
                    "base image {name}: {}: {e}",
                    hex::encode(inode.sha)
                ))
            })?;
        Ok(Bytes {
            data,
            meta: inode.meta,
        })
    })
}

/// Assembles the root filesystem of a prepared package.
fn assemble(p: &Prepared, store: &Store, opts: &Options) -> Result<Tree, Error> {
    let spec = &p.pkg.spec;
    let lock = p.pkg.checked_lock()?;
    let debs = match lock {
        Some(l) => fetch_debs(&p.pkg, &l, opts)?,
        None => BTreeMap::new(),
    };
    if let Some(k) = &spec.kernel {
        let deb = debs.get(&k.package).ok_or_else(|| Error::Lock {
            path: p.pkg.dir.join(LOCK_FILE).display().to_string(),
            message: format!(
                "does not list the kernel package {}; run `osk pkg lock`",
                k.package
            ),
        })?;
        let modules: Vec<String> = k.modules.iter().map(|m| m.name().to_string()).collect();
        let dtbs: Vec<String> = k.dtbs.iter().map(|d| d.name().to_string()).collect();
        return kernel::kernel_tree(deb, &modules, &k.boot, &dtbs, opts.source_date_epoch);
    }
    let mut tree = match &p.base {
        Some(PreparedBase::Package(b)) => assemble(b, store, opts)?,
        Some(PreparedBase::Image(i)) => image_tree(store, i)?,
        None => Tree::default(),
    };
    let at = p.pkg.dir.join("build.yml").display().to_string();
    let put = |tree: &mut Tree, path: &str, node: Node| {
        tree.insert(path, node).map_err(|cause| Error::Path {
            from: at.clone(),
            path: path.to_string(),
            cause,
        })
    };
    let pat = |v: Vec<String>| {
        Patterns::new(&v).map_err(|e| Error::Spec {
            at: at.clone(),
            message: format!("bad pattern: {e}"),
        })
    };
    let exclude = pat(spec.excludes(p.pkg.arch))?;
    let keep = pat(spec.keeps(p.pkg.arch))?;
    let merged_usr = spec.debian.as_ref().is_none_or(|d| d.merged_usr);
    let filter = Filter {
        exclude: &exclude,
        keep: &keep,
        merged_usr,
    };
    for path in debs.values() {
        deb::unpack(path, &filter, &mut tree)?;
    }
    if merged_usr {
        for d in MERGED_USR_DIRS {
            // A base image's real directory stays: its contents would hang below a symlink.
            let base_dir = tree.is_dir(d);
            if tree.lookup(format!("usr/{d}").as_bytes()).is_some() && !base_dir {
                put(&mut tree, d, Node::symlink(&format!("usr/{d}")))?;
            }
        }
    }
    for d in ["dev", "proc", "sys", "run", "etc", "var", "root"] {
        put(
            &mut tree,
            d,
            Node::dir(if d == "root" { 0o700 } else { 0o755 }),
        )?;
    }
    put(&mut tree, "tmp", Node::dir(0o1777))?;
    if let Some(dest) = &spec.ca_bundle {
        let mut bundle = Vec::new();
        for (path, id) in tree.walk_by_path() {
            if let (true, assemble::Kind::File(ino)) = (
                path.starts_with(CA_CERTS_DIR.as_bytes())
                    && path.get(CA_CERTS_DIR.len()) == Some(&b'/')
                    && path.ends_with(b".crt"),
                &tree.node(id).kind,
            ) {
                let d = &tree.inode(*ino).data;
                bundle.extend_from_slice(d);
                if !d.ends_with(b"\n") {
                    bundle.push(b'\n');
                }
            }
        }
        if bundle.is_empty() {
            return Err(Error::Spec {
                at: at.clone(),
                message: "ca-bundle: no usr/share/ca-certificates/**.crt (add ca-certificates to debian.packages)".into(),
            });
        }
        put(
            &mut tree,
            &normalise(dest, merged_usr).unwrap_or_default(),
            Node::file(bundle, 0o644),
        )?;
        // The bundle is what TLS clients read; the single certificates are
        // only update-ca-certificates' input, which no image runs. Kept,
        // they cost minimal's initrd ~100 kB compressed.
        tree.remove(CA_CERTS_DIR.as_bytes());
    }
    for d in &spec.directories {
        let mode = d.mode.as_deref().and_then(parse_mode).unwrap_or(0o755);
        put(
            &mut tree,
            &normalise(&d.path, merged_usr).unwrap_or_default(),
            Node::dir(mode),
        )?;
    }
    for f in &spec.files {
        let src = p.pkg.dir.join(&f.src);
        let data = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        let mode = f.mode.as_deref().and_then(parse_mode).unwrap_or(0o644);
        put(
            &mut tree,
            &normalise(&f.dest, merged_usr).unwrap_or_default(),
            Node::file(data, mode),
        )?;
    }
    for (dest, data) in &p.binaries {
        put(
            &mut tree,
            &normalise(dest, merged_usr).unwrap_or_default(),
            Node::file(data.clone(), 0o755),
        )?;
    }
    for s in &spec.symlinks {
        put(
            &mut tree,
            &normalise(&s.path, merged_usr).unwrap_or_default(),
            Node::symlink(&s.target),
        )?;
    }
    Ok(tree)
}

/// The image config: a base image's settings as defaults, build.yml's on top.
fn run_config(p: &Prepared) -> RunConfig {
    let spec = &p.pkg.spec;
    let base = match &p.base {
        Some(PreparedBase::Image(i)) => i.config.config().clone().unwrap_or_default(),
        _ => Default::default(),
    };
    let mut env = base.env().clone().unwrap_or_default();
    // A variable build.yml sets replaces the base's in place.
    for e in &spec.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        match env
            .iter_mut()
            .find(|b| b.split_once('=').map_or(b.as_str(), |(k, _)| k) == key)
        {
            Some(b) => b.clone_from(e),
            None => env.push(e.clone()),
        }
    }
    if spec.kernel.is_none() && !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    // As in a Dockerfile: a new entrypoint drops the base's command.
    let (entrypoint, cmd) = match (&spec.entrypoint, &spec.cmd) {
        (Some(e), c) => (Some(e.clone()), c.clone()),
        (None, Some(c)) => (base.entrypoint().clone(), Some(c.clone())),
        (None, None) => (base.entrypoint().clone(), base.cmd().clone()),
    };
    RunConfig {
        entrypoint,
        cmd,
        env,
        workdir: spec
            .workdir
            .clone()
            .or_else(|| base.working_dir().clone().filter(|w| !w.is_empty())),
        label: spec.config.clone(),
        labels: base
            .labels()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        architecture: Some(p.pkg.arch.oci().to_string()),
    }
}

/// A built package image.
#[derive(Debug, Clone)]
pub struct Built {
    /// `osk/NAME:TAG`.
    pub reference: String,
    pub image: Image,
    /// Uncompressed content bytes (files only).
    pub content_size: u64,
}

/// Builds the package at `dir` from its lock. Never re-resolves. `store`
/// holds (or receives, pulled) a `from:` image.
pub fn build(dir: &Path, store: &Store, opts: &Options) -> Result<Built, Error> {
    let p = prepare(dir, store, opts, 0)?;
    let tree = assemble(&p, store, opts)?;
    let image = image::build(&tree, &run_config(&p), opts.source_date_epoch)?;
    Ok(Built {
        reference: p.reference(),
        content_size: tree.content_size(),
        image,
    })
}

/// The reference `osk pkg build` would produce, without building the image
/// (workspace binaries are built: they are inputs).
pub fn show_tag(dir: &Path, store: &Store, opts: &Options) -> Result<String, Error> {
    Ok(prepare(dir, store, opts, 0)?.reference())
}

/// Stores a built image under its reference; returns the manifest descriptor.
pub fn write_to_store(store: &Store, built: &Built) -> Result<Descriptor, Error> {
    let layer = store.put_bytes(MediaType::ImageLayerGzip, &built.image.layer)?;
    let config: ImageConfiguration = serde_json::from_slice(&built.image.config)
        .map_err(|e| Error::Image(format!("config does not parse as OCI: {e}")))?;
    let reference = Reference::parse(&built.reference).map_err(|e| Error::Image(e.to_string()))?;
    Ok(store.write_image(&reference, &config, vec![layer])?)
}

/// Names one multi-platform index over a package's per-architecture images
/// (`osk pkg build --arch amd64,arm64`): a manifest naming it resolves to
/// the image of its build's `--arch`. Its tag hashes the images' tags, so
/// the same builds give the same index. Returns the index's reference.
pub fn write_index(store: &Store, images: &[(Arch, &Built)]) -> Result<Reference, Error> {
    let name = match images.first() {
        Some((_, b)) => b
            .reference
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string(),
        None => return Err(Error::Image("an index needs at least one image".into())),
    };
    let mut h = Sha256::new();
    h.update(b"osk-pkg-index-1");
    let mut manifests = Vec::new();
    for (arch, built) in images {
        let reference =
            Reference::parse(&built.reference).map_err(|e| Error::Image(e.to_string()))?;
        let mut d = store
            .resolve(&reference)?
            .ok_or_else(|| Error::Image(format!("{} is not in the store", built.reference)))?;
        d.set_annotations(None);
        d.set_platform(Some(
            PlatformBuilder::default()
                .os("linux")
                .architecture(arch.oci())
                .build()
                .expect("os and architecture are set"),
        ));
        h.update(built.reference.as_bytes());
        h.update(b"\n");
        manifests.push(d);
    }
    let index = store::index_of(manifests);
    let desc = store.put_bytes(MediaType::ImageIndex, &store::to_json(&index))?;
    let tag = hex::encode(&h.finalize()[..16]);
    let reference =
        Reference::parse(&format!("{name}:{tag}")).map_err(|e| Error::Image(e.to_string()))?;
    store.tag(&reference, &desc)?;
    Ok(reference)
}

/// Returns the package's reference, building it into `store` only if the
/// store lacks it. `osk build` calls this for `@pkg:PATH` images.
pub fn ensure_built(dir: &Path, store: &Store, opts: &Options) -> Result<Reference, Error> {
    let p = prepare(dir, store, opts, 0)?;
    let reference = Reference::parse(&p.reference()).map_err(|e| Error::Image(e.to_string()))?;
    if store.resolve(&reference)?.is_some() {
        return Ok(reference);
    }
    let tree = assemble(&p, store, opts)?;
    let built = Built {
        reference: p.reference(),
        content_size: tree.content_size(),
        image: image::build(&tree, &run_config(&p), opts.source_date_epoch)?,
    };
    write_to_store(store, &built)?;
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_rust_target_or_linker_says_what_to_run() {
        let root = tempfile::tempdir().unwrap();
        let never = |_: &str| false;
        let err = linker_env(root.path(), Arch::Arm64, never).unwrap_err();
        assert!(
            err.contains("run `rustup target add aarch64-unknown-linux-musl`"),
            "{err}"
        );
        let rustlib = root.path().join("lib/rustlib");
        std::fs::create_dir_all(rustlib.join("aarch64-unknown-linux-musl/lib")).unwrap();
        let err = linker_env(root.path(), Arch::Arm64, never).unwrap_err();
        assert!(
            err.contains("apt-get install gcc-aarch64-linux-gnu"),
            "{err}"
        );
        let bin = rustlib.join(host_rust_target()).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("rust-lld"), b"").unwrap();
        assert_eq!(
            linker_env(root.path(), Arch::Arm64, never).unwrap(),
            [(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER".to_string(),
                "rust-lld".to_string()
            )]
        );
        // A linker the user chose is left alone.
        assert!(linker_env(root.path(), Arch::Arm64, |_| true)
            .unwrap()
            .is_empty());
    }
}
