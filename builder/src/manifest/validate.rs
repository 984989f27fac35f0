//! Checks that need the whole merged manifest.

use std::collections::BTreeMap;

use super::model::{FileEntry, ImageEntry, Manifest, Origin, Volume};
use super::node::Pos;
use super::ManifestError;

fn err(origin: &Origin, pos: Pos, msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        file: origin.file.to_string(),
        pos: Some(pos),
        msg: msg.into(),
    }
}

pub(crate) fn validate(m: &Manifest) -> Result<(), ManifestError> {
    dependencies(&m.services)?;
    for f in &m.files {
        file(f)?;
    }
    for v in &m.volumes {
        volume(v)?;
    }
    Ok(())
}

fn dependencies(services: &[ImageEntry]) -> Result<(), ManifestError> {
    let index: BTreeMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for s in services {
        for (i, dep) in s.depends_on.iter().enumerate() {
            let pos = s.origin.at(&format!("depends_on[{i}]"));
            if dep == &s.name {
                return Err(err(
                    &s.origin,
                    pos,
                    format!("service `{dep}` depends on itself"),
                ));
            }
            if !index.contains_key(dep.as_str()) {
                let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                let hint = match super::suggest::nearest(dep, names.iter().copied()) {
                    Some(n) => format!(" (did you mean `{n}`?)"),
                    None => String::new(),
                };
                return Err(err(
                    &s.origin,
                    pos,
                    format!(
                        "service `{}` depends on `{dep}`, which is not a service{hint}",
                        s.name
                    ),
                ));
            }
        }
    }

    // Depth-first search; a grey node met again closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        White,
        Grey,
        Black,
    }
    fn visit(
        i: usize,
        services: &[ImageEntry],
        index: &BTreeMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Result<(), ManifestError> {
        marks[i] = Mark::Grey;
        stack.push(i);
        let s = &services[i];
        for (d, dep) in s.depends_on.iter().enumerate() {
            let j = index[dep.as_str()];
            match marks[j] {
                Mark::Black => {}
                Mark::White => visit(j, services, index, marks, stack)?,
                Mark::Grey => {
                    let start = stack.iter().position(|x| *x == j).unwrap_or(0);
                    let mut names: Vec<&str> = stack[start..]
                        .iter()
                        .map(|x| services[*x].name.as_str())
                        .collect();
                    names.push(&services[j].name);
                    return Err(err(
                        &s.origin,
                        s.origin.at(&format!("depends_on[{d}]")),
                        format!("dependency cycle: {}", names.join(" -> ")),
                    ));
                }
            }
        }
        stack.pop();
        marks[i] = Mark::Black;
        Ok(())
    }
    let mut marks = vec![Mark::White; services.len()];
    for i in 0..services.len() {
        if marks[i] == Mark::White {
            visit(i, services, &index, &mut marks, &mut Vec::new())?;
        }
    }
    Ok(())
}

/// LinuxKit's rules for what a file entry may combine.
fn file(f: &FileEntry) -> Result<(), ManifestError> {
    let o = &f.origin;
    let at = |k: &str| o.at(k);
    if f.key().is_empty() {
        return Err(err(o, at("path"), "file entry needs a non-empty `path`"));
    }
    f.mode_bits()
        .map_err(|e| err(o, at("mode"), e.to_string()))?;
    if let Some(md) = &f.metadata {
        if md != "yaml" && md != "json" {
            return Err(err(
                o,
                at("metadata"),
                super::suggest::unknown_value(md, ["yaml", "json"]),
            ));
        }
    }
    let given = f.directory || f.symlink.is_some() || f.contents.is_some();
    if given {
        for (key, set) in [
            ("source", f.source.is_some()),
            ("metadata", f.metadata.is_some()),
        ] {
            if set {
                return Err(err(
                    o,
                    at(key),
                    format!(
                        "file `{}`: `{key}` cannot be combined with `directory`, `symlink` or `contents`",
                        f.path
                    ),
                ));
            }
        }
        let kinds = [f.directory, f.symlink.is_some(), f.contents.is_some()];
        if kinds.iter().filter(|x| **x).count() > 1 {
            return Err(err(
                o,
                o.pos,
                format!(
                    "file `{}`: set only one of `directory`, `symlink` and `contents`",
                    f.path
                ),
            ));
        }
    } else {
        match (&f.source, &f.metadata) {
            (None, None) => {
                return Err(err(
                    o,
                    o.pos,
                    format!(
                        "file `{}` has no content: set `contents`, `source`, `metadata`, `symlink` or `directory`",
                        f.path
                    ),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    o,
                    at("metadata"),
                    format!("file `{}`: set `source` or `metadata`, not both", f.path),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

fn volume(v: &Volume) -> Result<(), ManifestError> {
    let ok = !v.name.is_empty()
        && v.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(err(
            &v.origin,
            v.origin.at("name"),
            format!(
                "invalid volume name `{}`: use lowercase letters, digits, `_` and `-`",
                v.name
            ),
        ));
    }
    Ok(())
}
