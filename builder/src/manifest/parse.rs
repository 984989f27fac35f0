//! One manifest file (or label) from text to typed values, strictly: every
//! unknown key, wrong type or missing field is an error at its line:column.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use osk_layout::RestartPolicy;

use super::model::{
    ContainerKind, FileEntry, ImageConfig, ImageEntry, ImageRef, Kernel, Manifest, Origin,
    ValueError, Volume,
};
use super::node::{self, DeError, Kind, Node, Pos};
use super::{suggest, ManifestError};

const TOP_KEYS: &[&str] = &[
    "kernel",
    "init",
    "onboot",
    "onshutdown",
    "services",
    "files",
    "volumes",
];

/// Keys of an entry handled here rather than by [`ImageConfig`].
const HEAD_KEYS: &[&str] = &["name", "image"];

/// osk's extras and the sections they are valid in.
const EXTRA_KEYS: &[(&str, &[ContainerKind])] = &[
    ("restart", &[ContainerKind::Service]),
    ("depends_on", &[ContainerKind::Service]),
    ("stop_grace_period", &[ContainerKind::Service]),
    (
        "timeout",
        &[ContainerKind::Onboot, ContainerKind::Onshutdown],
    ),
];

/// Builds errors that name the file.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub file: Arc<str>,
    pub dir: std::path::PathBuf,
}

impl Ctx {
    pub fn err(&self, pos: Pos, msg: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_string(),
            pos: Some(pos),
            msg: msg.into(),
        }
    }

    pub fn de(&self, e: DeError) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_string(),
            pos: e.pos,
            msg: e.msg,
        }
    }

    fn origin(&self, node: &Node) -> Origin {
        Origin {
            file: self.file.clone(),
            dir: self.dir.clone(),
            pos: node.pos,
            keys: key_positions(node),
        }
    }
}

fn key_positions(node: &Node) -> BTreeMap<String, Pos> {
    let mut keys = BTreeMap::new();
    if let Kind::Map(entries) = &node.kind {
        for (k, _) in entries {
            if let Some(s) = k.as_str() {
                keys.insert(s.to_owned(), k.pos);
            }
        }
    }
    keys
}

fn key_of<'a>(ctx: &Ctx, k: &'a Node) -> Result<&'a str, ManifestError> {
    k.as_str().ok_or_else(|| {
        ctx.err(
            k.pos,
            format!("keys must be strings, found {}", k.describe()),
        )
    })
}

fn list<'a>(ctx: &Ctx, key: &str, v: &'a Node) -> Result<&'a [Node], ManifestError> {
    match &v.kind {
        Kind::Null => Ok(&[]),
        Kind::Seq(items) => Ok(items),
        _ => Err(ctx.err(
            v.pos,
            format!("`{key}` must be a list, found {}", v.describe()),
        )),
    }
}

/// Parses one manifest document.
pub(crate) fn document(text: &str, ctx: &Ctx) -> Result<Manifest, ManifestError> {
    let root = node::parse(text).map_err(|e| ctx.de(e))?;
    let mut m = Manifest::default();
    let entries = match &root.kind {
        Kind::Null => return Ok(m),
        Kind::Map(entries) => entries,
        _ => {
            return Err(ctx.err(
                root.pos,
                format!(
                "a manifest is a mapping with keys like `kernel`, `init` and `services`, found {}",
                root.describe()
            ),
            ))
        }
    };
    for (k, v) in entries {
        let key = key_of(ctx, k)?;
        match key {
            "kernel" => {
                if !matches!(v.kind, Kind::Null) {
                    m.kernel = v.to::<Kernel>().map_err(|e| ctx.de(e))?;
                }
                if let Some(image) = &mut m.kernel.image {
                    image.anchor(&ctx.dir);
                }
            }
            "init" => {
                for item in list(ctx, key, v)? {
                    let mut r = item.to::<ImageRef>().map_err(|e| ctx.de(e))?;
                    r.anchor(&ctx.dir);
                    m.init.push(r);
                }
            }
            "onboot" | "onshutdown" | "services" => {
                let kind = match key {
                    "onboot" => ContainerKind::Onboot,
                    "onshutdown" => ContainerKind::Onshutdown,
                    _ => ContainerKind::Service,
                };
                for item in list(ctx, key, v)? {
                    let entry = image_entry(ctx, kind, item)?;
                    let section = m.section_mut(kind);
                    // onboot/onshutdown run in order and are numbered (a
                    // second `format` for a second disk); services are not.
                    let first = section.iter().find(|e| e.name == entry.name);
                    if let Some(first) = first.filter(|_| kind == ContainerKind::Service) {
                        return Err(ctx.err(
                            entry.origin.at("name"),
                            format!(
                                "duplicate name `{}` in `{key}` (first at line {}); service names must be unique",
                                entry.name,
                                first.origin.at("name").line
                            ),
                        ));
                    }
                    section.push(entry);
                }
            }
            "files" => {
                for item in list(ctx, key, v)? {
                    let mut f = item.to::<FileEntry>().map_err(|e| ctx.de(e))?;
                    f.origin = ctx.origin(item);
                    m.files.push(f);
                }
            }
            "volumes" => {
                for item in list(ctx, key, v)? {
                    let mut vol = item.to::<Volume>().map_err(|e| ctx.de(e))?;
                    vol.origin = ctx.origin(item);
                    if let Some(image) = &mut vol.image {
                        image.anchor(&ctx.dir);
                    }
                    if let Some(first) = m.volumes.iter().find(|x| x.name == vol.name) {
                        return Err(ctx.err(
                            vol.origin.at("name"),
                            format!(
                                "duplicate volume name `{}` (first at line {})",
                                vol.name,
                                first.origin.at("name").line
                            ),
                        ));
                    }
                    m.volumes.push(vol);
                }
            }
            // LinuxKit's long-removed content trust section: harmless, ignored.
            "trust" => tracing::warn!("{}:{}: ignoring obsolete `trust` section", ctx.file, k.pos),
            other => {
                return Err(ctx.err(k.pos, suggest::unknown_key(other, TOP_KEYS.iter().copied())))
            }
        }
    }
    Ok(m)
}

fn config_keys() -> &'static [&'static str] {
    node::struct_fields::<ImageConfig>()
}

/// Every key an entry of `kind` may have, for suggestions.
fn entry_keys(kind: ContainerKind) -> Vec<&'static str> {
    let mut keys: Vec<&str> = HEAD_KEYS.to_vec();
    keys.extend(config_keys());
    keys.extend(
        EXTRA_KEYS
            .iter()
            .filter(|(_, kinds)| kinds.contains(&kind))
            .map(|(k, _)| *k),
    );
    keys
}

/// Container names become directory names and containerd ids.
pub(crate) fn check_name(name: &str) -> Result<(), ValueError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ValueError::Name(name.into()))
    }
}

fn image_entry(ctx: &Ctx, kind: ContainerKind, node: &Node) -> Result<ImageEntry, ManifestError> {
    let section = kind.section();
    let Kind::Map(entries) = &node.kind else {
        return Err(ctx.err(
            node.pos,
            format!(
                "each entry of `{section}` is a mapping with at least `name` and `image`, found {}",
                node.describe()
            ),
        ));
    };
    let mut origin = ctx.origin(node);
    let mut name = None;
    let mut image = None;
    let mut restart = None;
    let mut depends_on = Vec::new();
    let mut timeout = None;
    let mut stop_grace_period = None;
    let mut rest = Vec::new();
    let de = |e: DeError| ctx.de(e);
    for (k, v) in entries {
        let key = key_of(ctx, k)?;
        if let Some((_, kinds)) = EXTRA_KEYS.iter().find(|(x, _)| *x == key) {
            if !kinds.contains(&kind) {
                let hint = match key {
                    "timeout" => "; services run until stopped, see `stop_grace_period`",
                    "stop_grace_period" => {
                        "; use `timeout` to bound an onboot/onshutdown container"
                    }
                    _ => "",
                };
                return Err(ctx.err(
                    k.pos,
                    format!(
                        "`{key}` is only valid in {}, not in `{section}`{hint}",
                        kinds
                            .iter()
                            .map(|k| format!("`{}`", k.section()))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    ),
                ));
            }
        }
        match key {
            "name" => {
                let n: String = v.to().map_err(de)?;
                check_name(&n).map_err(|e| ctx.err(v.pos, e.to_string()))?;
                name = Some(n);
            }
            "image" => {
                let mut r: ImageRef = v.to().map_err(de)?;
                r.anchor(&ctx.dir);
                image = Some(r);
            }
            "restart" => {
                let s: String = v.to().map_err(de)?;
                restart = Some(RestartPolicy::parse(&s).ok_or_else(|| {
                    ctx.err(
                        v.pos,
                        suggest::unknown_value(&s, RestartPolicy::NAMES.iter().copied()),
                    )
                })?);
            }
            "depends_on" => {
                for (i, item) in list(ctx, key, v)?.iter().enumerate() {
                    depends_on.push(item.to::<String>().map_err(de)?);
                    origin.keys.insert(format!("depends_on[{i}]"), item.pos);
                }
            }
            "timeout" => timeout = Some(v.to::<u64>().map_err(de)?),
            "stop_grace_period" => stop_grace_period = Some(v.to::<u64>().map_err(de)?),
            _ if config_keys().contains(&key) => rest.push((k.clone(), v.clone())),
            other => {
                return Err(ctx.err(k.pos, suggest::unknown_key(other, entry_keys(kind))));
            }
        }
    }
    let missing = |key: &str| {
        ctx.err(
            node.pos,
            format!("entry of `{section}` is missing required key `{key}`"),
        )
    };
    let name = name.ok_or_else(|| missing("name"))?;
    let image = image.ok_or_else(|| missing("image"))?;
    let config = Node {
        pos: node.pos,
        kind: Kind::Map(rest),
    }
    .to::<ImageConfig>()
    .map_err(de)?;
    Ok(ImageEntry {
        name,
        image,
        config,
        restart,
        depends_on,
        timeout,
        stop_grace_period,
        kind: Some(kind),
        origin,
    })
}

/// Parses an image's `org.mobyproject.config` label (JSON, which is YAML).
pub(crate) fn label(text: &str, image: &str) -> Result<ImageConfig, ManifestError> {
    let ctx = Ctx {
        file: format!("{} label of {image}", osk_layout::CONFIG_LABEL).into(),
        dir: Path::new("/").to_path_buf(),
    };
    let root = node::parse(text).map_err(|e| ctx.de(e))?;
    if let Kind::Map(entries) = &root.kind {
        for (k, _) in entries {
            if let Some(key @ ("name" | "image")) = k.as_str() {
                return Err(ctx.err(k.pos, format!("`{key}` cannot be set in an image's label")));
            }
        }
    } else if !matches!(root.kind, Kind::Null) {
        return Err(ctx.err(
            root.pos,
            format!("the label must be a JSON object, found {}", root.describe()),
        ));
    }
    if matches!(root.kind, Kind::Null) {
        return Ok(ImageConfig::default());
    }
    root.to::<ImageConfig>().map_err(|e| ctx.de(e))
}
