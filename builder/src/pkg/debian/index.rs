//! Debian control-file paragraphs (deb822), `Packages` indexes and
//! dependency fields.

use std::collections::BTreeMap;

use super::version::{Relation, Version};
use super::Error;

/// One deb822 paragraph: field name (as written) to value, continuation
/// lines joined with `\n`.
pub type Paragraph = BTreeMap<String, String>;

/// Splits deb822 text into paragraphs. `#` comment lines are skipped.
pub fn paragraphs(text: &str) -> Vec<Paragraph> {
    let mut out = Vec::new();
    let mut cur = Paragraph::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A version constraint: `(>= 1.0)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub relation: Relation,
    pub version: Version,
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({} {})", self.relation, self.version)
    }
}

/// One alternative of a dependency: `name [(rel version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atom {
    pub name: String,
    pub constraint: Option<Constraint>,
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            Some(c) => write!(f, "{} {c}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A dependency: alternatives separated by `|`.
pub type Dependency = Vec<Atom>;

/// A dependency field that does not parse; each variant carries the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtomError {
    #[error("unsupported dependency syntax `{0}`")]
    Unsupported(String),
    #[error("unclosed `(` in `{0}`")]
    Unclosed(String),
    #[error("missing version in `{0}`")]
    NoVersion(String),
    #[error("bad relation in `{0}`")]
    Relation(String),
    #[error("bad version in `{0}`")]
    Version(String),
    #[error("empty package name in `{0}`")]
    NoName(String),
}

/// Parses one atom such as `libc6 (>= 2.34)` or `python3:any`.
pub fn parse_atom(s: &str) -> Result<Atom, AtomError> {
    let s = s.trim();
    // Architecture restrictions `[amd64]` and build profiles `<!nocheck>` do
    // not occur in binary Packages; refuse them rather than misread them.
    if s.contains('[') || s.contains('<') && !s.contains('(') {
        return Err(AtomError::Unsupported(s.into()));
    }
    let (name, constraint) = match s.split_once('(') {
        Some((name, rest)) => {
            let inner = rest
                .strip_suffix(')')
                .ok_or_else(|| AtomError::Unclosed(s.into()))?
                .trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .ok_or_else(|| AtomError::NoVersion(s.into()))?;
            let relation =
                Relation::parse(&inner[..split]).ok_or_else(|| AtomError::Relation(s.into()))?;
            let version = Version::parse(inner[split..].trim())
                .ok_or_else(|| AtomError::Version(s.into()))?;
            (name.trim(), Some(Constraint { relation, version }))
        }
        None => (s, None),
    };
    // `:any` / `:native` qualifiers: one architecture here, so drop them.
    let name = name.split(':').next().unwrap_or(name).trim();
    if name.is_empty() {
        return Err(AtomError::NoName(s.into()));
    }
    Ok(Atom {
        name: name.to_string(),
        constraint,
    })
}

/// Parses a Depends-style field.
pub fn parse_depends(field: &str) -> Result<Vec<Dependency>, AtomError> {
    field
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|dep| dep.split('|').map(parse_atom).collect())
        .collect()
}

/// One binary package from a `Packages` index.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub architecture: String,
    pub depends: Vec<Dependency>,
    pub provides: Vec<Atom>,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub essential: bool,
}

/// Parses a whole `Packages` file. `origin` names it in errors.
pub fn parse_packages(text: &str, origin: &str) -> Result<Vec<Package>, Error> {
    let mut out = Vec::new();
    for p in paragraphs(text) {
        let get = |k: &str| p.get(k).map(String::as_str);
        let name = get("Package").unwrap_or_default().to_string();
        let bad = |what: String| Error::Index {
            origin: origin.to_string(),
            package: name.clone(),
            message: what,
        };
        let need = |k: &str| get(k).ok_or_else(|| bad(format!("missing {k}")));
        let version =
            Version::parse(need("Version")?).ok_or_else(|| bad("bad Version".to_string()))?;
        let mut depends = Vec::new();
        for field in ["Pre-Depends", "Depends"] {
            if let Some(v) = get(field) {
                depends.extend(parse_depends(v).map_err(|e| bad(format!("{field}: {e}")))?);
            }
        }
        let provides = match get("Provides") {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(parse_atom)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("Provides: {e}")))?,
            None => Vec::new(),
        };
        let sha256 = need("SHA256")?.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("bad SHA256".to_string()));
        }
        out.push(Package {
            version,
            architecture: need("Architecture")?.to_string(),
            depends,
            provides,
            filename: need("Filename")?.to_string(),
            size: need("Size")?
                .parse()
                .map_err(|_| bad("bad Size".to_string()))?,
            sha256,
            essential: get("Essential") == Some("yes"),
            name: name.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_alternatives_and_constraints() {
        let deps =
            parse_depends("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any").unwrap();
        assert_eq!(deps.len(), 3);
        assert_eq!(deps[1].len(), 2);
        assert_eq!(deps[1][0].name, "debconf");
        assert_eq!(
            deps[1][0].constraint.as_ref().unwrap().relation,
            Relation::Ge
        );
        assert_eq!(deps[1][1].name, "debconf-2.0");
        assert_eq!(deps[2].name(), "python3");
    }

    trait Name {
        fn name(&self) -> &str;
    }
    impl Name for Dependency {
        fn name(&self) -> &str {
            &self[0].name
        }
    }

    #[test]
    fn rejects_broken_constraint() {
        assert!(parse_depends("libc6 (>= 2.34").is_err());
        assert!(parse_depends("libc6 (~ 2)").is_err());
    }

    #[test]
    fn paragraphs_join_continuations() {
        let ps = paragraphs("A: 1\nB: x\n y\n\n# c\nA: 2\n");
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0]["B"], "x\ny");
        assert_eq!(ps[1]["A"], "2");
    }
}
