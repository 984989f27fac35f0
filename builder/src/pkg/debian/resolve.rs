//! Dependency closure over a set of `Packages` indexes.
//!
//! Follows Pre-Depends and Depends only (never Recommends, never Essential
//! packages nobody depends on), takes the first satisfiable alternative,
//! resolves virtual packages through Provides, keeps one version per
//! package (the highest that satisfies the first request for it).

use std::collections::{BTreeMap, VecDeque};

use super::index::{Atom, Dependency, Package};
use super::Error;

/// All packages known from the indexes, by name.
pub struct Universe {
    by_name: BTreeMap<String, Vec<Package>>,
    providers: BTreeMap<String, Vec<(String, usize)>>,
}

impl Universe {
    pub fn new(packages: impl IntoIterator<Item = Package>, arch: &str) -> Universe {
        let mut by_name: BTreeMap<String, Vec<Package>> = BTreeMap::new();
        for p in packages {
            if p.architecture != arch && p.architecture != "all" {
                continue;
            }
            let list = by_name.entry(p.name.clone()).or_default();
            if !list.iter().any(|q| q.version == p.version) {
                list.push(p);
            }
        }
        let mut providers: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
        for (name, list) in &mut by_name {
            // Highest version first, so "first satisfying" is "highest satisfying".
            list.sort_by(|a, b| b.version.cmp(&a.version));
            for (i, p) in list.iter().enumerate() {
                for prov in &p.provides {
                    providers
                        .entry(prov.name.clone())
                        .or_default()
                        .push((name.clone(), i));
                }
            }
        }
        Universe { by_name, providers }
    }

    pub fn get(&self, name: &str) -> Option<&[Package]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    fn package(&self, name: &str, i: usize) -> &Package {
        &self.by_name[name][i]
    }
}

fn satisfies(p: &Package, atom: &Atom) -> bool {
    if p.name == atom.name
        && atom
            .constraint
            .as_ref()
            .is_none_or(|c| c.relation.holds(&p.version, &c.version))
    {
        return true;
    }
    p.provides.iter().any(|prov| {
        prov.name == atom.name
            && match (&atom.constraint, &prov.constraint) {
                (None, _) => true,
                // Only `Provides: x (= v)` can satisfy a versioned dependency.
                (Some(want), Some(have)) => want.relation.holds(&have.version, &want.version),
                (Some(_), None) => false,
            }
    })
}

fn describe(dep: &Dependency) -> String {
    dep.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Resolves `requests` to the closure of packages to install, sorted by name.
/// Dependencies on a name in `skip` count as met and are not installed.
pub fn resolve(
    universe: &Universe,
    requests: &[Atom],
    skip: &[String],
) -> Result<Vec<Package>, Error> {
    // name -> (index into universe list, who pulled it in)
    let mut selected: BTreeMap<String, (usize, Option<String>)> = BTreeMap::new();
    let mut queue: VecDeque<(Dependency, Option<String>)> =
        requests.iter().map(|a| (vec![a.clone()], None)).collect();

    let chain = |selected: &BTreeMap<String, (usize, Option<String>)>, from: &Option<String>| {
        let mut parts = Vec::new();
        let mut cur = from.clone();
        while let Some(name) = cur {
            if parts.contains(&name) {
                break;
            }
            cur = selected.get(&name).and_then(|(_, p)| p.clone());
            parts.push(name);
        }
        parts.push("(requested)".to_string());
        parts.join(" <- ")
    };

    while let Some((dep, parent)) = queue.pop_front() {
        let is_satisfied = dep.iter().any(|atom| {
            skip.contains(&atom.name)
                || selected
                    .iter()
                    .any(|(n, (i, _))| satisfies(universe.package(n, *i), atom))
        });
        if is_satisfied {
            continue;
        }
        let mut choice: Option<(String, usize)> = None;
        'alts: for atom in &dep {
            // A real package of that name, unless another version is already chosen.
            if let Some(list) = universe.get(&atom.name) {
                if !selected.contains_key(&atom.name) {
                    if let Some(i) = list.iter().position(|p| satisfies(p, atom)) {
                        choice = Some((atom.name.clone(), i));
                        break 'alts;
                    }
                }
            }
            // A provider; the candidate list is in name order, highest version first.
            let mut provs: Vec<&(String, usize)> = universe
                .providers
                .get(&atom.name)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            provs.sort();
            for (name, i) in provs {
                if !selected.contains_key(name)
                    && !skip.contains(name)
                    && satisfies(universe.package(name, *i), atom)
                {
                    choice = Some((name.clone(), *i));
                    break 'alts;
                }
            }
        }
        let Some((name, i)) = choice else {
            let mut known = Vec::new();
            for atom in &dep {
                if let Some((n, (i, _))) = selected.get_key_value(&atom.name) {
                    known.push(format!(
                        "{n} {} is already chosen",
                        universe.package(n, *i).version
                    ));
                } else if let Some(list) = universe.get(&atom.name) {
                    let vs: Vec<String> = list.iter().map(|p| p.version.to_string()).collect();
                    known.push(format!("{} has only {}", atom.name, vs.join(", ")));
                }
            }
            return Err(Error::Unresolvable {
                dependency: describe(&dep),
                chain: chain(&selected, &parent),
                detail: if known.is_empty() {
                    "no package of that name and no provider in the indexes".to_string()
                } else {
                    known.join("; ")
                },
            });
        };
        let pkg = universe.package(&name, i);
        tracing::debug!(
            "selected {} {} for {}",
            pkg.name,
            pkg.version,
            describe(&dep)
        );
        for d in &pkg.depends {
            queue.push_back((d.clone(), Some(name.clone())));
        }
        selected.insert(name, (i, parent));
    }
    Ok(selected
        .iter()
        .map(|(n, (i, _))| universe.package(n, *i).clone())
        .collect())
}
