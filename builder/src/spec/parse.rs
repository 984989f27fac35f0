//! LinuxKit's compact string forms: binds, tmpfs, rlimits, capabilities, ids.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::ALL_CAPABILITIES;
use crate::manifest::{nearest, Id, MountConfig};

/// A compact setting that does not parse; each variant carries the text at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("bind `{0}` needs `source:destination[:options]`")]
    BindShape(String),
    #[error("bind `{0}` has too many `:`")]
    BindColons(String),
    #[error("bind `{0}` has an empty source or destination")]
    BindEmpty(String),
    #[error("tmpfs `{0}` has too many `:`")]
    TmpfsColons(String),
    #[error("tmpfs `{0}` has no destination")]
    TmpfsDestination(String),
    #[error("rlimit `{0}` must be `name,soft,hard`")]
    RlimitShape(String),
    #[error("unknown rlimit `{name}`{hint}")]
    UnknownRlimit { name: String, hint: String },
    #[error("rlimit `{rlimit}`: `{value}` is not a number or `unlimited`")]
    RlimitValue { rlimit: String, value: String },
    #[error("rlimit `{0}`: soft limit is above the hard limit")]
    RlimitOrder(String),
    #[error("capability `{0}` must be the only entry of its list")]
    CapabilityAlone(String),
    #[error("unknown capability `{name}`{hint}")]
    UnknownCapability { name: String, hint: String },
    #[error("unknown user or group `{0}`: use a number, `root`, or the name of a container in the manifest")]
    UnknownId(String),
    #[error("source `{0}` is neither an absolute path nor a volume of the manifest")]
    UnknownVolume(String),
    #[error("volume `{0}` is read-only; add the `ro` option")]
    ReadonlyVolume(String),
    #[error("mount at `{0}` has no `type`")]
    MountType(String),
    #[error("mount of type `{0}` has no `destination`")]
    MountDestination(String),
    #[error("`{key}: {value}` must be `host`, `new`{none} or an absolute path to a namespace")]
    Namespace {
        key: String,
        value: String,
        none: &'static str,
    },
}

/// A parsed `src:dst[:opts]` bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: String,
    pub destination: String,
    pub options: Vec<String>,
}

/// Parses `src:dst[:opt,opt]`. Without options a bind is `rw,rbind,rshared`
/// (LinuxKit's default); with options `rbind` is added.
pub fn parse_bind(s: &str) -> Result<Bind, SettingError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, destination, options) = match parts.as_slice() {
        [src, dst] => (
            *src,
            *dst,
            vec!["rw".into(), "rbind".into(), "rshared".into()],
        ),
        [src, dst, opts] => {
            let mut o: Vec<String> = opts
                .split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect();
            if !o.iter().any(|x| x == "rbind" || x == "bind") {
                o.push("rbind".into());
            }
            (*src, *dst, o)
        }
        [_] => return Err(SettingError::BindShape(s.into())),
        _ => return Err(SettingError::BindColons(s.into())),
    };
    if source.is_empty() || destination.is_empty() {
        return Err(SettingError::BindEmpty(s.into()));
    }
    Ok(Bind {
        source: source.into(),
        destination: destination.into(),
        options,
    })
}

/// Parses `dst[:opt,opt]`.
pub fn parse_tmpfs(s: &str) -> Result<(String, Vec<String>), SettingError> {
    let mut parts = s.splitn(3, ':');
    let dest = parts.next().unwrap_or_default();
    let opts = parts.next();
    if parts.next().is_some() {
        return Err(SettingError::TmpfsColons(s.into()));
    }
    if dest.is_empty() {
        return Err(SettingError::TmpfsDestination(s.into()));
    }
    let opts = opts
        .map(|o| {
            o.split(',')
                .filter(|o| !o.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok((dest.into(), opts))
}

/// A POSIX resource limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

const RLIMITS: &[&str] = &[
    "RLIMIT_AS",
    "RLIMIT_CORE",
    "RLIMIT_CPU",
    "RLIMIT_DATA",
    "RLIMIT_FSIZE",
    "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_NOFILE",
    "RLIMIT_NPROC",
    "RLIMIT_RSS",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
    "RLIMIT_SIGPENDING",
    "RLIMIT_STACK",
];

/// Parses `name,soft,hard` (`nofile,1024,2048`; `unlimited` allowed).
pub fn parse_rlimit(s: &str) -> Result<Rlimit, SettingError> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [name, soft, hard] = parts.as_slice() else {
        return Err(SettingError::RlimitShape(s.into()));
    };
    let mut kind = name.to_ascii_uppercase();
    if !kind.starts_with("RLIMIT_") {
        kind = format!("RLIMIT_{kind}");
    }
    if !RLIMITS.contains(&kind.as_str()) {
        let hint = nearest(&kind, RLIMITS.iter().copied())
            .map(|n| {
                format!(
                    " (did you mean `{}`?)",
                    n.trim_start_matches("RLIMIT_").to_lowercase()
                )
            })
            .unwrap_or_default();
        return Err(SettingError::UnknownRlimit {
            name: name.to_string(),
            hint,
        });
    }
    let num = |v: &str| -> Result<u64, SettingError> {
        if v.eq_ignore_ascii_case("unlimited") {
            Ok(u64::MAX)
        } else {
            v.parse().map_err(|_| SettingError::RlimitValue {
                rlimit: s.into(),
                value: v.into(),
            })
        }
    };
    let (soft, hard) = (num(soft)?, num(hard)?);
    if soft > hard {
        return Err(SettingError::RlimitOrder(s.into()));
    }
    Ok(Rlimit { kind, soft, hard })
}

/// Normalises capability names (`sys_admin` → `CAP_SYS_ADMIN`), expands a
/// lone `all`/`none`, and returns them sorted and unique.
pub(crate) fn capabilities(list: &[String]) -> Result<Vec<String>, SettingError> {
    if let [one] = list {
        match one.to_ascii_lowercase().as_str() {
            "all" => return Ok(ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for c in list {
        let lower = c.to_ascii_lowercase();
        if lower == "all" || lower == "none" {
            return Err(SettingError::CapabilityAlone(c.clone()));
        }
        let mut name = c.to_ascii_uppercase();
        if !name.starts_with("CAP_") {
            name = format!("CAP_{name}");
        }
        if !ALL_CAPABILITIES.contains(&name.as_str()) {
            let hint = nearest(&name, ALL_CAPABILITIES.iter().copied())
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            return Err(SettingError::UnknownCapability {
                name: c.clone(),
                hint,
            });
        }
        out.push(name);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// LinuxKit's ids: a number, `root`, or another container's name.
pub(crate) fn numeric_id(v: &Id, id_map: &BTreeMap<String, u32>) -> Result<u32, SettingError> {
    match v {
        Id::Num(n) => Ok(*n),
        Id::Name(n) if n.is_empty() || n == "root" => Ok(0),
        Id::Name(n) => id_map
            .get(n)
            .copied()
            .ok_or_else(|| SettingError::UnknownId(n.clone())),
    }
}

/// The image config's `User`, when numeric (`1000` or `1000:1000`).
pub(crate) fn image_user(user: Option<&str>) -> (Option<u32>, Option<u32>) {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return (None, None);
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = u.parse().ok();
    let gid = g.and_then(|g| g.parse().ok());
    if uid.is_none() || (g.is_some() && gid.is_none()) {
        tracing::warn!(
            "image user `{user}` is not numeric; ignoring it (set `uid`/`gid` in the manifest)"
        );
    }
    (uid, gid)
}

/// A bind source that is not absolute names a volume: its merged directory.
pub(crate) fn volume_source(
    source: &str,
    options: &[String],
    volumes: &BTreeMap<String, bool>,
) -> Result<String, SettingError> {
    if source.starts_with('/') {
        return Ok(source.to_owned());
    }
    let Some(readonly) = volumes.get(source) else {
        return Err(SettingError::UnknownVolume(source.into()));
    };
    if *readonly && !options.iter().any(|o| o == "ro") {
        return Err(SettingError::ReadonlyVolume(source.into()));
    }
    Ok(format!("/containers/volumes/{source}/merged"))
}

/// A mount with LinuxKit's defaulting applied.
pub(crate) struct Mount {
    pub destination: String,
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Fills a mount's gaps as LinuxKit does: the type from a well-known source
/// (or `tmpfs` for `/dev`), the source from the type, the destination from
/// the type.
pub(crate) fn mount(m: &MountConfig) -> Result<Mount, SettingError> {
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let source = nonempty(&m.source);
    let dest = nonempty(&m.destination);
    let kind = nonempty(&m.kind)
        .or_else(|| {
            source
                .as_deref()
                .filter(|s| matches!(*s, "mqueue" | "devpts" | "proc" | "sysfs" | "cgroup"))
                .map(str::to_owned)
        })
        .or_else(|| (dest.as_deref() == Some("/dev")).then(|| "tmpfs".to_owned()))
        .ok_or_else(|| SettingError::MountType(dest.clone().unwrap_or_else(|| "?".into())))?;
    let destination = dest
        .or_else(|| {
            match kind.as_str() {
                "proc" => Some("/proc"),
                "devpts" => Some("/dev/pts"),
                "sysfs" => Some("/sys"),
                "cgroup" => Some("/sys/fs/cgroup"),
                "mqueue" => Some("/dev/mqueue"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .ok_or_else(|| SettingError::MountDestination(kind.clone()))?;
    Ok(Mount {
        destination,
        source: source.unwrap_or_else(|| kind.clone()),
        kind,
        options: m.options.clone().unwrap_or_default(),
    })
}

/// One namespace entry: `host`/`root` shares the host's (None), `new` makes
/// one (`none` too, for the network), anything else is a path to join.
pub(crate) fn namespace(typ: &str, key: &str, value: &str) -> Result<Option<Value>, SettingError> {
    match value {
        "host" | "root" => Ok(None),
        "new" => Ok(Some(json!({ "type": typ }))),
        "none" if typ == "network" => Ok(Some(json!({ "type": typ }))),
        path if path.starts_with('/') => Ok(Some(json!({ "type": typ, "path": path }))),
        other => Err(SettingError::Namespace {
            key: key.into(),
            value: other.into(),
            none: if typ == "network" { ", `none`" } else { "" },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds() {
        assert_eq!(
            parse_bind("/var:/var").unwrap(),
            Bind {
                source: "/var".into(),
                destination: "/var".into(),
                options: vec!["rw".into(), "rbind".into(), "rshared".into()],
            }
        );
        assert_eq!(
            parse_bind("/a:/b:ro,rshared").unwrap().options,
            ["ro", "rshared", "rbind"]
        );
        assert!(parse_bind("/a")
            .unwrap_err()
            .to_string()
            .contains("source:destination"));
        assert!(parse_bind("/a:/b:c:d")
            .unwrap_err()
            .to_string()
            .contains("too many"));
    }

    #[test]
    fn tmpfs() {
        assert_eq!(
            parse_tmpfs("/run:size=10m,mode=755").unwrap(),
            ("/run".into(), vec!["size=10m".into(), "mode=755".into()])
        );
        assert_eq!(parse_tmpfs("/tmp").unwrap(), ("/tmp".into(), vec![]));
        assert!(parse_tmpfs("/a:b:c").is_err());
    }

    #[test]
    fn rlimits() {
        assert_eq!(
            parse_rlimit("nofile,1024,2048").unwrap(),
            Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 2048
            }
        );
        assert_eq!(
            parse_rlimit("RLIMIT_CORE, unlimited, unlimited")
                .unwrap()
                .hard,
            u64::MAX
        );
        assert_eq!(
            parse_rlimit("nofil,1,2").unwrap_err().to_string(),
            "unknown rlimit `nofil` (did you mean `nofile`?)"
        );
        assert!(parse_rlimit("nofile,3,2").is_err());
        assert!(parse_rlimit("nofile,3").is_err());
    }

    #[test]
    fn capability_names() {
        assert_eq!(
            capabilities(&[
                "sys_admin".into(),
                "CAP_NET_ADMIN".into(),
                "CAP_SYS_ADMIN".into()
            ])
            .unwrap(),
            ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
        assert_eq!(capabilities(&["ALL".into()]).unwrap().len(), 41);
        assert!(capabilities(&["none".into()]).unwrap().is_empty());
        assert_eq!(
            capabilities(&["CAP_SYS_ADMN".into()])
                .unwrap_err()
                .to_string(),
            "unknown capability `CAP_SYS_ADMN` (did you mean `CAP_SYS_ADMIN`?)"
        );
    }

    #[test]
    fn ids() {
        let map = BTreeMap::from([("sshd".to_string(), 104)]);
        assert_eq!(numeric_id(&Id::Num(7), &map), Ok(7));
        assert_eq!(numeric_id(&Id::Name("root".into()), &map), Ok(0));
        assert_eq!(numeric_id(&Id::Name("sshd".into()), &map), Ok(104));
        assert!(numeric_id(&Id::Name("nobody".into()), &map).is_err());
        assert_eq!(image_user(Some("1000:50")), (Some(1000), Some(50)));
        assert_eq!(image_user(Some("nobody")), (None, None));
    }

    #[test]
    fn mount_defaults() {
        let m = mount(&MountConfig {
            source: Some("mqueue".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (m.kind.as_str(), m.destination.as_str()),
            ("mqueue", "/dev/mqueue")
        );
        let m = mount(&MountConfig {
            kind: Some("tmpfs".into()),
            destination: Some("/x".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(m.source, "tmpfs");
        assert!(mount(&MountConfig {
            destination: Some("/x".into()),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn volumes_resolve_and_respect_readonly() {
        let vols = BTreeMap::from([("data".to_string(), true)]);
        assert_eq!(
            volume_source("data", &["ro".into()], &vols).unwrap(),
            "/containers/volumes/data/merged"
        );
        assert!(volume_source("data", &["rw".into()], &vols)
            .unwrap_err()
            .to_string()
            .contains("read-only"));
        assert!(volume_source("nope", &[], &vols).is_err());
        assert_eq!(volume_source("/x", &[], &vols).unwrap(), "/x");
    }
}
