//! The manifest's types: LinuxKit's format key for key, plus osk's extras.
//!
//! Every per-image setting is an `Option` so "unset" (fall back to the
//! image's label, then to defaults) differs from "set to empty".

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use osk_layout::{BindNs, Interface, RestartPolicy};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::node::Pos;

/// LinuxKit's template prefix for a local package instead of an image reference.
pub const PKG_PREFIX: &str = "@pkg:";

/// Which list of a manifest a container comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ContainerKind {
    Onboot,
    Onshutdown,
    Service,
}

impl ContainerKind {
    /// The manifest key of the section.
    pub fn section(self) -> &'static str {
        match self {
            ContainerKind::Onboot => "onboot",
            ContainerKind::Onshutdown => "onshutdown",
            ContainerKind::Service => "services",
        }
    }
}

impl fmt::Display for ContainerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.section())
    }
}

/// Where something was written: file label, position, and the directory
/// relative paths in it are resolved against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file as given on the command line, or `<stdin>`.
    pub file: Arc<str>,
    /// Directory of the file (the current directory for stdin).
    pub dir: PathBuf,
    /// Position of the entry itself.
    pub pos: Pos,
    /// Position of each key of the entry (and `key[i]` for list items), for
    /// errors found after parsing.
    pub keys: BTreeMap<String, Pos>,
}

impl Origin {
    /// The position of `key` if recorded, else the entry's.
    pub fn at(&self, key: &str) -> Pos {
        self.keys.get(key).copied().unwrap_or(self.pos)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageSource {
    /// An image reference (`linuxkit/getty:abc`, `docker.io/x/y@sha256:...`).
    Reference(String),
    /// A local osk package directory (`@pkg:PATH`), absolute once loaded.
    Package(PathBuf),
}

/// An image as written in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    /// The text as written (before `@pkg:` paths are made absolute).
    pub text: String,
    pub source: ImageSource,
}

/// A manifest value that does not parse; each variant carries the text at fault.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("image reference is empty")]
    EmptyImage,
    #[error("image reference `{0}` contains whitespace")]
    ImageWhitespace(String),
    #[error("`{0}` names no package directory")]
    NoPackageDir(String),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    #[error("mode `{0}` is not an octal file mode like \"0644\"")]
    Mode(String),
    #[error("invalid name `{0}`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit")]
    Name(String),
}

impl ImageRef {
    /// Parses a reference; `@pkg:` paths are kept as written until [`ImageRef::anchor`].
    pub fn parse(text: &str) -> Result<ImageRef, ValueError> {
        if text.is_empty() {
            return Err(ValueError::EmptyImage);
        }
        if text.chars().any(char::is_whitespace) {
            return Err(ValueError::ImageWhitespace(text.into()));
        }
        let source = match text.strip_prefix(PKG_PREFIX) {
            Some("") => return Err(ValueError::NoPackageDir(text.into())),
            Some(path) => ImageSource::Package(PathBuf::from(path)),
            None => {
                crate::reference::Reference::parse(text)?;
                ImageSource::Reference(text.to_owned())
            }
        };
        Ok(ImageRef {
            text: text.to_owned(),
            source,
        })
    }

    /// Resolves a relative `@pkg:` path against the manifest's directory.
    pub fn anchor(&mut self, dir: &Path) {
        if let ImageSource::Package(p) = &mut self.source {
            if p.is_relative() {
                *p = normalize(&dir.join(&*p));
            }
        }
    }
}

/// Lexically removes `.` and `..` so equal paths print the same.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ImageSource::Reference(r) => f.write_str(r),
            ImageSource::Package(p) => write!(f, "{PKG_PREFIX}{}", p.display()),
        }
    }
}

impl Serialize for ImageRef {
    // Resolved form, so a `--dry-run` output loads the same from anywhere.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ImageRef::parse(&text).map_err(de::Error::custom)
    }
}

/// A user or group: a number, or a name (another container's name, which
/// LinuxKit maps to the id it allocates to that container, or `root`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    Num(u32),
    Name(String),
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Num(n) => s.serialize_u32(*n),
            Id::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a numeric id or a name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                u32::try_from(v)
                    .map(Id::Num)
                    .map_err(|_| E::custom(format!("id {v} is larger than 4294967295")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u32::try_from(v)
                    .map(Id::Num)
                    .map_err(|_| E::custom(format!("id {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                Ok(Id::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// Map values that YAML may type as numbers or booleans (`ip_forward: 1`)
/// are kept as the strings the kernel and annotations want.
fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Scalar(String);
    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Scalar;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_owned()))
                }
                fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
                fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                    Ok(Scalar(v.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }
    let m: Option<BTreeMap<String, Scalar>> = Option::deserialize(d)?;
    Ok(m.map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

/// A mount as LinuxKit writes it (OCI's, every field optional: the type
/// defaults from the source, the source from the type, the destination
/// from the type).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    #[serde(
        rename = "uidMappings",
        alias = "uidmappings",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub uid_mappings: Option<Vec<IdMapping>>,
    #[serde(
        rename = "gidMappings",
        alias = "gidmappings",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gid_mappings: Option<Vec<IdMapping>>,
}

/// A user-namespace id range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMapping {
    #[serde(rename = "containerID", alias = "containerid", default)]
    pub container_id: u32,
    #[serde(rename = "hostID", alias = "hostid", default)]
    pub host_id: u32,
    #[serde(default)]
    pub size: u32,
}

/// A device node to create in the container (or `path: all` to allow a
/// whole type in the device cgroup).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    /// Octal file mode, e.g. `"0666"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Cgroup resource limits, named as in the OCI runtime spec (LinuxKit's
/// spellings accepted too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceCgroup>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Pids>,
    #[serde(
        rename = "blockIO",
        alias = "blockio",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub block_io: Option<BlockIo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_limits: Option<Vec<HugepageLimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCgroup {
    #[serde(default)]
    pub allow: bool,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<i64>,
    #[serde(rename = "kernelTCP", default, skip_serializing_if = "Option::is_none")]
    pub kernel_tcp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swappiness: Option<u64>,
    #[serde(
        rename = "disableOOMKiller",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_oom_killer: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_runtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mems: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pids {
    pub limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlockIo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_device: Option<Vec<WeightDevice>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_read_bps_device: Option<Vec<ThrottleDevice>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_write_bps_device: Option<Vec<ThrottleDevice>>,
    #[serde(
        rename = "throttleReadIOPSDevice",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub throttle_read_iops_device: Option<Vec<ThrottleDevice>>,
    #[serde(
        rename = "throttleWriteIOPSDevice",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub throttle_write_iops_device: Option<Vec<ThrottleDevice>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WeightDevice {
    pub major: i64,
    pub minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_weight: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleDevice {
    pub major: i64,
    pub minor: i64,
    pub rate: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HugepageLimit {
    /// E.g. `2MB` (OCI's form; LinuxKit's schema wrongly says integer).
    pub page_size: String,
    pub limit: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(rename = "classID", default, skip_serializing_if = "Option::is_none")]
    pub class_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priorities: Option<Vec<InterfacePriority>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfacePriority {
    pub name: String,
    pub priority: u32,
}

/// LinuxKit's `runtime` section: what happens around the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkdir: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<MountConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<Interface>>,
    #[serde(rename = "bindNS", default, skip_serializing_if = "Option::is_none")]
    pub bind_ns: Option<BindNs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The per-image settings: what an entry of `onboot`/`onshutdown`/`services`
/// may set besides `name` and `image`, and exactly what an image's
/// `org.mobyproject.config` label holds (as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    #[serde(
        rename = "capabilities.add",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub capabilities_add: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambient: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<MountConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binds: Option<Vec<String>>,
    #[serde(rename = "binds.add", default, skip_serializing_if = "Option::is_none")]
    pub binds_add: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<Device>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_mappings: Option<Vec<IdMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid_mappings: Option<Vec<IdMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub sysctl: Option<BTreeMap<String, String>>,
    /// `"nofile,1024,2048"`: limit name (with or without `RLIMIT_`), soft, hard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimits: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_gids: Option<Vec<Id>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privileges: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "Option::is_none"
    )]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeConfig>,
}

/// One container of `onboot`, `onshutdown` or `services`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageEntry {
    pub name: String,
    pub image: ImageRef,
    #[serde(flatten)]
    pub config: ImageConfig,
    /// osk: restart policy (services only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicy>,
    /// osk: services that must be running first (services only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// osk: seconds an onboot/onshutdown container may run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// osk: seconds between SIGTERM and SIGKILL (services only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period: Option<u64>,
    #[serde(skip)]
    pub kind: Option<ContainerKind>,
    #[serde(skip)]
    pub origin: Origin,
}

impl ImageEntry {
    /// A bare entry, as tests and programmatic users build them.
    pub fn new(kind: ContainerKind, name: &str, image: &str) -> Result<ImageEntry, ValueError> {
        Ok(ImageEntry {
            name: name.to_owned(),
            image: ImageRef::parse(image)?,
            config: ImageConfig::default(),
            restart: None,
            depends_on: Vec::new(),
            timeout: None,
            stop_grace_period: None,
            kind: Some(kind),
            origin: Origin::default(),
        })
    }
}

/// The `kernel` section; each field overrides separately when merging.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Name of the kernel file in the image (default `kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Name of the modules tar in the image (default `kernel.tar`; `none` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar: Option<String>,
    /// Name of the microcode cpio in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ucode: Option<String>,
}

impl Kernel {
    pub fn is_empty(&self) -> bool {
        *self == Kernel::default()
    }
}

/// A file, directory or symlink to add to the root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub directory: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// A host file to copy; relative to the manifest's directory (`~/` is $HOME).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `yaml` or `json`: write the (merged) manifest itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Skip a `source` that does not exist instead of failing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
    /// Octal, e.g. `"0644"` (default 0600, directories 0700).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<Id>,
    #[serde(skip)]
    pub origin: Origin,
}

impl FileEntry {
    /// `path` without leading slashes: the key under which files replace each other.
    pub fn key(&self) -> &str {
        self.path.trim_start_matches('/')
    }

    /// The host path of `source`: `~/` expanded, relative paths against the manifest's directory.
    pub fn source_path(&self) -> Option<PathBuf> {
        let src = self.source.as_deref()?;
        if let Some(rest) = src.strip_prefix("~/") {
            if let Some(home) = std::env::var_os("HOME") {
                return Some(PathBuf::from(home).join(rest));
            }
        }
        Some(self.origin.dir.join(src))
    }

    /// The mode as a number (LinuxKit's defaults when unset).
    pub fn mode_bits(&self) -> Result<u32, ValueError> {
        match &self.mode {
            None if self.directory => Ok(0o700),
            None => Ok(0o600),
            Some(m) => u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| ValueError::Mode(m.clone())),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The format of a volume's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    Oci,
    Filesystem,
}

/// A named volume containers can bind by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<VolumeFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Vec<String>>,
    #[serde(skip)]
    pub origin: Origin,
}

impl Volume {
    /// Where LinuxKit mounts a volume's merged view on the host.
    pub fn merged_dir(&self) -> String {
        format!("/containers/volumes/{}/merged", self.name)
    }
}

/// A whole (merged) manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Manifest {
    #[serde(skip_serializing_if = "Kernel::is_empty")]
    pub kernel: Kernel,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init: Vec<ImageRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub onboot: Vec<ImageEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub onshutdown: Vec<ImageEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ImageEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

impl Manifest {
    /// The entries of one section.
    pub fn section(&self, kind: ContainerKind) -> &[ImageEntry] {
        match kind {
            ContainerKind::Onboot => &self.onboot,
            ContainerKind::Onshutdown => &self.onshutdown,
            ContainerKind::Service => &self.services,
        }
    }

    pub(crate) fn section_mut(&mut self, kind: ContainerKind) -> &mut Vec<ImageEntry> {
        match kind {
            ContainerKind::Onboot => &mut self.onboot,
            ContainerKind::Onshutdown => &mut self.onshutdown,
            ContainerKind::Service => &mut self.services,
        }
    }

    /// LinuxKit's ids for `uid: <container name>`: 100, 101, ... over
    /// onboot, onshutdown, then services (a later equal name wins).
    pub fn id_map(&self) -> BTreeMap<String, u32> {
        let mut map = BTreeMap::new();
        let all = self
            .onboot
            .iter()
            .chain(&self.onshutdown)
            .chain(&self.services);
        for (i, e) in all.enumerate() {
            map.insert(e.name.clone(), 100 + i as u32);
        }
        map
    }

    /// Every image the build needs, each once, in manifest order.
    pub fn images(&self) -> Vec<&ImageRef> {
        let mut seen = std::collections::BTreeSet::new();
        let all = self
            .kernel
            .image
            .iter()
            .chain(&self.init)
            .chain(
                self.onboot
                    .iter()
                    .chain(&self.onshutdown)
                    .chain(&self.services)
                    .map(|e| &e.image),
            )
            .chain(self.volumes.iter().filter_map(|v| v.image.as_ref()));
        all.filter(|r| seen.insert(&r.source)).collect()
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// The manifest as YAML for `--dry-run`: merged, `@pkg:` paths absolute,
    /// unset keys omitted, same bytes for the same inputs.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a manifest always serializes to YAML")
    }
}
