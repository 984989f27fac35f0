//! `build.yml`: what goes into a package image. Parsed strictly: an unknown
//! key is an error naming file:line:col.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Error;
use crate::arch::Arch;

/// Paths a minimal OS never needs; `default-excludes: false` turns them off.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/linda",
    "usr/share/bug",
    "usr/share/doc-base",
    "usr/share/menu",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/fish",
    "usr/share/pixmaps",
    "usr/share/applications",
    "usr/share/icons",
    "usr/share/gdb",
    "usr/share/apport",
    "usr/lib/systemd",
    "usr/lib/tmpfiles.d",
    "usr/lib/sysusers.d",
    "etc/systemd",
    "etc/init.d",
    "etc/rc*.d",
    "etc/logrotate.d",
    "etc/cron.*",
    "etc/default",
    "lib/systemd",
    "usr/lib/${triplet}/gconv",
    "usr/share/debconf",
    "usr/share/initramfs-tools",
    "etc/initramfs-tools",
];

/// Kept even if an exclude matches: licence texts are small and owed.
pub const DEFAULT_KEEPS: &[&str] = &["usr/share/doc/*/copyright"];

/// One `build.yml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Spec {
    /// Base: `@pkg:PATH` (another osk package, relative to this folder) or
    /// an image reference resolved from the local store.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub debian: Option<Debian>,
    #[serde(default)]
    pub kernel: Option<Kernel>,
    /// Extra path patterns to drop (root-relative globs; a match drops the
    /// subtree). Here and in `keep`, `${triplet}` is the target's Debian
    /// multiarch triplet (`x86_64-linux-gnu`) and `${arch}` its Debian name;
    /// `{path, arch}` is a pattern for that architecture only.
    #[serde(default)]
    pub exclude: Vec<PathPattern>,
    /// Patterns kept even when excluded.
    #[serde(default)]
    pub keep: Vec<PathPattern>,
    #[serde(default = "yes")]
    pub default_excludes: bool,
    /// Files from the package folder.
    #[serde(default)]
    pub files: Vec<File>,
    /// Binaries built with cargo from this workspace.
    #[serde(default)]
    pub binaries: Vec<Binary>,
    /// Symlinks maintainer scripts would have made (alternatives...).
    #[serde(default)]
    pub symlinks: Vec<Symlink>,
    /// Empty directories to create.
    #[serde(default)]
    pub directories: Vec<Directory>,
    /// Write the CA bundle (all `usr/share/ca-certificates/**.crt`, sorted) here.
    #[serde(default)]
    pub ca_bundle: Option<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    /// LinuxKit runtime settings, stored as the `org.mobyproject.config` label.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

fn main_component() -> Vec<String> {
    vec!["main".to_string()]
}

/// Debian packages to install with their dependency closure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Debian {
    /// Suites searched together (e.g. `[bookworm, bookworm-updates]`).
    pub suites: Vec<String>,
    #[serde(default = "main_component")]
    pub components: Vec<String>,
    /// The one architecture this package exists for (content that only one
    /// has); none: any, chosen by `--arch`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// Requested packages, `name` or `name (>= version)`, or `{name, arch}`
    /// for a package one architecture only needs (isolinux: x86's BIOS).
    #[serde(default)]
    pub packages: Vec<DebPackage>,
    /// Packages never installed; dependencies on them count as met
    /// (for dependencies that only serve maintainer scripts, e.g. debconf).
    #[serde(default)]
    pub skip: Vec<String>,
    /// Debian's merged-/usr layout: `/bin`, `/sbin`, `/lib*` link into `/usr`.
    #[serde(default = "yes")]
    pub merged_usr: bool,
}

/// The kernel image form: `/kernel` and `/kernel.tar` from a linux-image package.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Kernel {
    /// The exact ABI package, e.g. `linux-image-6.1.0-37-amd64`.
    pub package: String,
    /// Modules to ship; their `depends=` closure is added. osk-init loads
    /// the drivers of the devices it finds and the rest when the kernel asks.
    pub modules: Vec<Module>,
    /// Modules loaded at every boot whatever the hardware (must be shipped).
    #[serde(default)]
    pub boot: Vec<String>,
    /// Device trees to keep, as `/dtbs/NAME.dtb`: paths below the package's
    /// `usr/lib/linux-image-VERSION/` (`broadcom/bcm2711-rpi-4-b.dtb`), or
    /// `{name, arch}` for one architecture's (only arm64's packages have any).
    #[serde(default)]
    pub dtbs: Vec<Module>,
}

/// A name, or `{name, arch}` for one architecture only (its place in the
/// list is kept): `kernel.modules` (a module only one architecture has or
/// needs), `kernel.dtbs`, and `debian.packages` (a request of one
/// architecture only, `name` or `name (>= version)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Named {
    Any(String),
    Only {
        name: String,
        /// Debian architecture name, e.g. `amd64`.
        arch: String,
    },
}

/// A `kernel.modules` or `kernel.dtbs` entry.
pub type Module = Named;
/// A `debian.packages` entry.
pub type DebPackage = Named;

impl Named {
    pub fn name(&self) -> &str {
        match self {
            Named::Any(n) | Named::Only { name: n, .. } => n,
        }
    }

    fn applies_to(&self, arch: Arch) -> bool {
        match self {
            Named::Any(_) => true,
            Named::Only { arch: a, .. } => a == arch.debian(),
        }
    }
}

/// An `exclude` or `keep` entry: a pattern, or `{path, arch}` for a pattern
/// of one architecture only (what differs is not always spelt `${arch}`:
/// qemu names amd64 `x86_64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PathPattern {
    Any(String),
    Only {
        path: String,
        /// Debian architecture name, e.g. `amd64`.
        arch: String,
    },
}

impl PathPattern {
    pub fn pattern(&self) -> &str {
        match self {
            PathPattern::Any(p) | PathPattern::Only { path: p, .. } => p,
        }
    }

    fn applies_to(&self, arch: Arch) -> bool {
        match self {
            PathPattern::Any(_) => true,
            PathPattern::Only { arch: a, .. } => a == arch.debian(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Path inside the package folder.
    pub src: String,
    /// Absolute path in the image.
    pub dest: String,
    /// Octal mode as a string, e.g. "0755" (default 0644).
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    /// Cargo package in this workspace.
    pub package: String,
    /// Binary target name.
    pub bin: String,
    /// Absolute path in the image.
    pub dest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    #[serde(default)]
    pub mode: Option<String>,
}

/// What `from:` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// Another osk package folder, relative to this one.
    Package(String),
    /// An OCI image in the local store.
    Image(crate::reference::Reference),
}

/// The variables `build.yml` patterns and package names may use.
pub const VARIABLES: &str = "${arch}, ${triplet}";

/// `text` with `${arch}` and `${triplet}` replaced for `arch`; an unknown
/// variable or a `${` left open is an error naming it.
pub fn expand(text: &str, arch: Arch) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{text}`: `${{` without a closing `}}`"))?;
        out.push_str(match &after[..end] {
            "arch" => arch.debian(),
            "triplet" => arch.triplet(),
            other => {
                return Err(format!(
                    "`{text}`: unknown variable `${{{other}}}` (known: {VARIABLES})"
                ))
            }
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses an octal mode string ("0755", "755", "1777").
pub fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
}

/// Formats a serde-saphyr error as `file:line:col: message`.
pub fn yaml_error(path: &Path, err: &serde_saphyr::Error) -> Error {
    let at = match err.location() {
        Some(l) => format!("{}:{}:{}", path.display(), l.line(), l.column()),
        None => path.display().to_string(),
    };
    Error::Spec {
        at,
        message: err.to_string(),
    }
}

/// A `from:` that names neither a package nor an image.
#[derive(Debug, thiserror::Error)]
#[error(
    "`from: {from}`: neither `@pkg:PATH` (another osk package) nor an image reference: {reason}"
)]
pub struct BaseError {
    pub from: String,
    pub reason: crate::reference::ReferenceError,
}

fn parse_base(from: &str) -> Result<Base, BaseError> {
    if let Some(p) = from.strip_prefix("@pkg:") {
        return Ok(Base::Package(p.to_string()));
    }
    crate::reference::Reference::parse(from)
        .map(Base::Image)
        .map_err(|reason| BaseError {
            from: from.into(),
            reason,
        })
}

impl Spec {
    pub fn parse(text: &str, path: &Path) -> Result<Spec, Error> {
        let spec: Spec = serde_saphyr::from_str(text).map_err(|e| yaml_error(path, &e))?;
        spec.validate(path)?;
        Ok(spec)
    }

    fn validate(&self, path: &Path) -> Result<(), Error> {
        let bad = |m: String| {
            Err(Error::Spec {
                at: path.display().to_string(),
                message: m,
            })
        };
        if let Some(k) = &self.kernel {
            if self.debian.is_none() {
                return bad("`kernel` needs a `debian` section naming the suites".into());
            }
            for m in &k.modules {
                if let Module::Only { name, arch } = m {
                    if let Err(e) = arch.parse::<Arch>() {
                        return bad(format!("kernel.modules: {name}: {e}"));
                    }
                }
            }
            if k.modules.is_empty() {
                return bad(
                    "`kernel.modules` is empty: a guest without modules has no disk or network"
                        .into(),
                );
            }
            if !self.files.is_empty() || !self.binaries.is_empty() || self.from.is_some() {
                return bad("a `kernel` package holds only /kernel and /kernel.tar (no files, binaries or from)".into());
            }
        }
        for p in self.debian.iter().flat_map(|d| &d.packages) {
            if let DebPackage::Only { name, arch } = p {
                if let Err(e) = arch.parse::<Arch>() {
                    return bad(format!("debian.packages: {name}: {e}"));
                }
            }
        }
        for p in self.exclude.iter().chain(&self.keep) {
            if let PathPattern::Only { path, arch } = p {
                if let Err(e) = arch.parse::<Arch>() {
                    return bad(format!("{path}: {e}"));
                }
            }
        }
        let templated = self
            .exclude
            .iter()
            .chain(&self.keep)
            .map(PathPattern::pattern)
            .chain(
                self.debian
                    .iter()
                    .flat_map(|d| &d.packages)
                    .map(DebPackage::name),
            )
            .chain(self.kernel.iter().map(|k| k.package.as_str()));
        for t in templated {
            if let Err(m) = expand(t, Arch::Amd64) {
                return bad(m);
            }
        }
        if let Some(d) = &self.debian {
            if let Some(a) = &d.architecture {
                if let Err(e) = a.parse::<Arch>() {
                    return bad(format!("debian.architecture: {e}"));
                }
            }
            if d.suites.is_empty() {
                return bad("`debian.suites` is empty".into());
            }
            if d.packages.is_empty() && self.kernel.is_none() {
                return bad("`debian.packages` is empty".into());
            }
        }
        if let Some(f) = &self.from {
            if let Err(e) = parse_base(f) {
                return bad(e.to_string());
            }
        }
        for f in &self.files {
            if !f.dest.starts_with('/') {
                return bad(format!("files: dest `{}` must be absolute", f.dest));
            }
            if f.src.starts_with('/') || f.src.split('/').any(|p| p == "..") {
                return bad(format!(
                    "files: src `{}` must stay inside the package folder",
                    f.src
                ));
            }
            if let Some(m) = &f.mode {
                if parse_mode(m).is_none() {
                    return bad(format!(
                        "files: bad mode `{m}` for {} (octal string, e.g. \"0755\")",
                        f.dest
                    ));
                }
            }
        }
        for d in &self.directories {
            if let Some(m) = &d.mode {
                if parse_mode(m).is_none() {
                    return bad(format!("directories: bad mode `{m}` for {}", d.path));
                }
            }
        }
        for b in &self.binaries {
            if !b.dest.starts_with('/') {
                return bad(format!("binaries: dest `{}` must be absolute", b.dest));
            }
        }
        if let Some(c) = &self.config {
            if !c.is_object() {
                return bad("`config` must be a mapping (LinuxKit image config)".into());
            }
        }
        Ok(())
    }

    /// The base `from:` names, if any.
    pub fn base(&self) -> Option<Base> {
        // validate() accepted it.
        self.from.as_deref().and_then(|f| parse_base(f).ok())
    }

    /// This spec as built for `arch`: package names expanded, or an error
    /// when the package is for another architecture only.
    pub fn for_arch(&self, arch: Arch, path: &Path) -> Result<Spec, Error> {
        let mut s = self.clone();
        // validate() expanded every template once: they all expand.
        let ex = |t: &mut String| *t = expand(t, arch).unwrap_or_else(|_| t.clone());
        if let Some(d) = &mut s.debian {
            if let Some(only) = &d.architecture {
                if only != arch.debian() {
                    return Err(Error::Spec {
                        at: path.display().to_string(),
                        message: format!(
                            "this package is for {only} only (debian.architecture), not {arch}"
                        ),
                    });
                }
            }
            // This architecture's requests, as plain names: a lock's inputs
            // hash the same as before `{name, arch}` entries.
            d.packages = d
                .packages
                .iter()
                .filter(|p| p.applies_to(arch))
                .map(|p| {
                    let mut n = p.name().to_string();
                    ex(&mut n);
                    DebPackage::Any(n)
                })
                .collect();
        }
        if let Some(k) = &mut s.kernel {
            ex(&mut k.package);
            k.modules.retain(|m| m.applies_to(arch));
            k.dtbs.retain(|d| d.applies_to(arch));
        }
        Ok(s)
    }

    /// All exclude patterns in force for `arch`.
    pub fn excludes(&self, arch: Arch) -> Vec<String> {
        let defaults = DEFAULT_EXCLUDES.iter().filter(|_| self.default_excludes);
        expand_all(defaults.copied().chain(for_arch(&self.exclude, arch)), arch)
    }

    /// All keep patterns for `arch`.
    pub fn keeps(&self, arch: Arch) -> Vec<String> {
        expand_all(
            DEFAULT_KEEPS
                .iter()
                .copied()
                .chain(for_arch(&self.keep, arch)),
            arch,
        )
    }
}

fn for_arch(patterns: &[PathPattern], arch: Arch) -> impl Iterator<Item = &str> {
    patterns
        .iter()
        .filter(move |p| p.applies_to(arch))
        .map(PathPattern::pattern)
}

fn expand_all<'a>(patterns: impl Iterator<Item = &'a str>, arch: Arch) -> Vec<String> {
    // validate() expanded every template once: they all expand.
    patterns
        .map(|p| expand(p, arch).unwrap_or_else(|_| p.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = "debian:\n  suites: [bookworm]\n  packages: [a]\n  pakages: [b]\n";
        let err = Spec::parse(text, Path::new("pkgs/x/build.yml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pkgs/x/build.yml:4:"), "{err}");
        assert!(err.contains("pakages"), "{err}");
    }

    #[test]
    fn parses_config_label_and_defaults() {
        let text = "debian:\n  suites: [bookworm]\n  packages: [busybox-static]\n\
                    cmd: [/bin/sh]\nconfig:\n  net: host\n  capabilities: [CAP_SYS_ADMIN]\n";
        let s = Spec::parse(text, Path::new("b.yml")).unwrap();
        let d = s.debian.as_ref().unwrap();
        assert_eq!(d.components, ["main"]);
        assert_eq!(d.architecture, None);
        assert!(d.merged_usr);
        assert_eq!(s.config.as_ref().unwrap()["net"], "host");
        assert!(s
            .excludes(Arch::Amd64)
            .contains(&"usr/share/doc".to_string()));
        assert!(s
            .excludes(Arch::Arm64)
            .contains(&"usr/lib/aarch64-linux-gnu/gconv".to_string()));
    }

    #[test]
    fn rejects_bad_mode_and_escaping_src() {
        let base = "debian:\n  suites: [bookworm]\n  packages: [a]\n";
        let e = Spec::parse(
            &format!("{base}files:\n  - {{src: x, dest: /x, mode: \"999\"}}\n"),
            Path::new("b"),
        );
        assert!(e.unwrap_err().to_string().contains("bad mode"));
        let e = Spec::parse(
            &format!("{base}files:\n  - {{src: ../x, dest: /x}}\n"),
            Path::new("b"),
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("inside the package folder"));
    }

    #[test]
    fn from_is_a_package_or_an_image_reference() {
        let base = "debian:\n  suites: [bookworm]\n  packages: [a]\n";
        let s = Spec::parse(&format!("{base}from: \"@pkg:../x\"\n"), Path::new("b")).unwrap();
        assert_eq!(s.base(), Some(Base::Package("../x".into())));
        let s = Spec::parse(&format!("{base}from: alpine:3.19\n"), Path::new("b")).unwrap();
        match s.base() {
            Some(Base::Image(r)) => assert_eq!(r.to_string(), "docker.io/library/alpine:3.19"),
            other => panic!("{other:?}"),
        }
        let e = Spec::parse(
            &format!("{base}from: Not/A:Ref!\n"),
            Path::new("p/build.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("p/build.yml") && e.contains("Not/A:Ref!"), "{e}");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("1777"), Some(0o1777));
        assert_eq!(parse_mode("8"), None);
    }

    #[test]
    fn variables_expand_per_arch_and_unknown_ones_are_named() {
        assert_eq!(
            expand("usr/lib/${triplet}/libm.so.6", Arch::Arm64).unwrap(),
            "usr/lib/aarch64-linux-gnu/libm.so.6"
        );
        assert_eq!(
            expand("linux-image-6.1.0-37-${arch}", Arch::Amd64).unwrap(),
            "linux-image-6.1.0-37-amd64"
        );
        let text =
            "debian:\n  suites: [bookworm]\n  packages: [a]\nexclude: [usr/lib/${tripel}/x]\n";
        let err = Spec::parse(text, Path::new("p/build.yml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p/build.yml") && err.contains("${tripel}"),
            "{err}"
        );
        assert!(expand("a${arch", Arch::Amd64)
            .unwrap_err()
            .contains("closing"));
    }

    #[test]
    fn a_package_for_one_arch_refuses_the_other() {
        let text =
            "debian:\n  suites: [bookworm]\n  architecture: amd64\n  packages: [grub-pc-bin]\n";
        let s = Spec::parse(text, Path::new("p/build.yml")).unwrap();
        s.for_arch(Arch::Amd64, Path::new("p/build.yml")).unwrap();
        let err = s
            .for_arch(Arch::Arm64, Path::new("p/build.yml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p/build.yml") && err.contains("amd64 only"),
            "{err}"
        );
    }

    #[test]
    fn init_excludes_expand_to_each_triplet() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pkgs/init/build.yml");
        let s = Spec::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        let amd64 = s.excludes(Arch::Amd64);
        // The patterns amd64 layers were built with, to the letter.
        assert!(amd64.contains(&"usr/lib/x86_64-linux-gnu/libm.so.6".to_string()));
        assert!(amd64.contains(&"usr/lib/x86_64-linux-gnu/gconv".to_string()));
        assert!(s
            .excludes(Arch::Arm64)
            .contains(&"usr/lib/aarch64-linux-gnu/libm.so.6".to_string()));
        assert!(!amd64.iter().any(|p| p.contains("${")), "{amd64:?}");
    }

    #[test]
    fn a_module_of_one_arch_keeps_its_place_for_it_only() {
        let text = "debian:\n  suites: [bookworm]\nkernel:\n  package: linux-image-${arch}\n  modules:\n    - virtio\n    - {name: ata_piix, arch: amd64}\n    - ext4\n";
        let p = Path::new("k/build.yml");
        let s = Spec::parse(text, p).unwrap();
        let names = |a| -> Vec<String> {
            let k = s.for_arch(a, p).unwrap().kernel.unwrap();
            assert_eq!(k.package, format!("linux-image-{a}"));
            k.modules.iter().map(|m| m.name().to_string()).collect()
        };
        assert_eq!(names(Arch::Amd64), ["virtio", "ata_piix", "ext4"]);
        assert_eq!(names(Arch::Arm64), ["virtio", "ext4"]);
        let bad = text.replace("arch: amd64", "arch: sparc");
        let err = Spec::parse(&bad, p).unwrap_err().to_string();
        assert!(err.contains("ata_piix") && err.contains("sparc"), "{err}");
    }

    #[test]
    fn a_debian_package_of_one_arch_is_requested_for_it_only() {
        let text = "debian:\n  suites: [bookworm]\n  packages:\n    - systemd-boot-efi\n    - {name: isolinux, arch: amd64}\n";
        let p = Path::new("b/build.yml");
        let s = Spec::parse(text, p).unwrap();
        let names = |a| -> Vec<String> {
            let d = s.for_arch(a, p).unwrap().debian.unwrap();
            d.packages.iter().map(|m| m.name().to_string()).collect()
        };
        assert_eq!(names(Arch::Amd64), ["systemd-boot-efi", "isolinux"]);
        assert_eq!(names(Arch::Arm64), ["systemd-boot-efi"]);
        let bad = text.replace("arch: amd64", "arch: mips");
        let err = Spec::parse(&bad, p).unwrap_err().to_string();
        assert!(err.contains("isolinux") && err.contains("mips"), "{err}");
    }

    #[test]
    fn a_keep_of_one_arch_applies_to_it_only() {
        let text = "debian:\n  suites: [bookworm]\n  packages: [a]\nexclude: [usr/bin]\nkeep:\n  - usr/bin/${arch}\n  - {path: usr/bin/qemu-aarch64-static, arch: amd64}\n";
        let p = Path::new("q/build.yml");
        let s = Spec::parse(text, p).unwrap();
        let amd64 = s.keeps(Arch::Amd64);
        assert!(amd64.contains(&"usr/bin/qemu-aarch64-static".to_string()));
        assert!(amd64.contains(&"usr/bin/amd64".to_string()));
        let arm64 = s.keeps(Arch::Arm64);
        assert!(!arm64.contains(&"usr/bin/qemu-aarch64-static".to_string()));
        assert!(arm64.contains(&"usr/bin/arm64".to_string()));
        let bad = text.replace("arch: amd64", "arch: sparc");
        let err = Spec::parse(&bad, p).unwrap_err().to_string();
        assert!(
            err.contains("qemu-aarch64-static") && err.contains("sparc"),
            "{err}"
        );
    }
}
