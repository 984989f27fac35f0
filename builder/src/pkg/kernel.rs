//! The kernel image form: `/kernel` (vmlinuz) and `/kernel.tar` holding the
//! chosen modules plus their `depends=` closure, a matching `modules.dep`
//! and osk's load-order list.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use osk_layout::{KERNEL_BINARY, KERNEL_TAR, MODULES_LIST};

use super::deb::with_data_tar;
use super::tree::{normalise, Node, Tree};
use super::Error;

/// Module names treat `-` and `_` alike, as the kernel does.
fn canon(name: &str) -> String {
    name.replace('-', "_")
}

/// The `depends=` field of a module's `.modinfo` ELF section.
pub fn modinfo_depends(ko: &[u8]) -> Option<Vec<String>> {
    let modinfo = elf_section(ko, ".modinfo")?;
    for field in modinfo.split(|b| *b == 0) {
        if let Some(v) = field.strip_prefix(b"depends=") {
            let v = std::str::from_utf8(v).ok()?;
            return Some(v.split(',').filter(|s| !s.is_empty()).map(canon).collect());
        }
    }
    Some(Vec::new())
}

fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    // ELF64 little-endian only: x86_64 modules.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?) as usize);
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3a)?;
    let shnum = u16_at(0x3c)?;
    let shstrndx = u16_at(0x3e)?;
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        Some((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = elf.get(stroff..stroff + strsize)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = strtab.get(name..)?;
        let n = &n[..n.iter().position(|b| *b == 0)?];
        if n == wanted.as_bytes() {
            return elf.get(off..off + size);
        }
    }
    None
}

/// Calls `f` with each entry of the .deb's data tar, its path normalised
/// (no merged-/usr rewrite) and a reader of its content.
fn for_each_entry(
    deb: &Path,
    bad: &impl Fn(String) -> Error,
    mut f: impl FnMut(&str, &mut dyn FnMut() -> Result<Vec<u8>, Error>) -> Result<(), Error>,
) -> Result<(), Error> {
    with_data_tar(deb, |ar| {
        for e in ar.entries().map_err(|e| bad(e.to_string()))? {
            let mut e = e.map_err(|e| bad(e.to_string()))?;
            let raw = e
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .to_string();
            let Some(path) = normalise(&raw, false) else {
                continue;
            };
            let mut read = || {
                let mut d = Vec::new();
                e.read_to_end(&mut d)
                    .map_err(|err| bad(format!("{path}: {err}")))?;
                Ok(d)
            };
            f(&path, &mut read)?;
        }
        Ok(())
    })
}

/// Builds the kernel image tree from a linux-image .deb.
///
/// The data tar is walked twice with [`for_each_entry`]: first for every
/// module's dependencies, then for the bytes of the kept ones. Holding every
/// module's bytes from a single walk would cost hundreds of MB of memory.
pub fn kernel_tree(deb: &Path, wanted: &[String], mtime: u64) -> Result<Tree, Error> {
    let bad = |m: String| Error::Kernel {
        file: deb.display().to_string(),
        message: m,
    };
    // Pass 1: every module's path and dependencies (contents are dropped).
    let mut modules: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    let mut version = None;
    for_each_entry(deb, &bad, |path, read| {
        if let Some(v) = path.strip_prefix("boot/vmlinuz-") {
            version = Some(v.to_string());
        }
        if let Some(file) = path.strip_suffix(".ko") {
            let deps =
                modinfo_depends(&read()?).ok_or_else(|| bad(format!("{path}: no .modinfo")))?;
            let name = canon(file.rsplit('/').next().unwrap_or(file));
            modules.insert(name, (path.to_string(), deps));
        } else if path.ends_with(".ko.xz") || path.ends_with(".ko.zst") || path.ends_with(".ko.gz")
        {
            return Err(bad(format!(
                "{path}: compressed modules are not supported yet"
            )));
        }
        Ok(())
    })?;
    let version = version.ok_or_else(|| bad("no boot/vmlinuz-* in the package".into()))?;

    // Closure, and a load order where dependencies come first.
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        via: &str,
        modules: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (_, deps) = modules
            .get(name)
            .ok_or_else(|| format!("module `{name}` (needed by {via}) is not in the package (built in? then drop it from `modules`)"))?;
        for d in deps {
            visit(d, name, modules, seen, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
    for m in wanted {
        visit(&canon(m), "build.yml", &modules, &mut seen, &mut order).map_err(bad)?;
    }
    let keep: BTreeSet<&str> = order.iter().map(|m| modules[m].0.as_str()).collect();

    // Pass 2: the kernel and the kept modules' bytes.
    let mut modtree = Tree::default();
    let mut vmlinuz = None;
    let moddir = format!("lib/modules/{version}");
    let kernel = format!("boot/vmlinuz-{version}");
    let meta = [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ]
    .map(|f| format!("{moddir}/{f}"));
    for_each_entry(deb, &bad, |path, read| {
        if path == kernel {
            vmlinuz = Some(read()?);
        } else if keep.contains(path) || meta.iter().any(|m| m == path) {
            // Modules live under /usr/lib on a merged-/usr root.
            modtree.insert(format!("usr/{path}"), Node::file(read()?, 0o644));
        }
        Ok(())
    })?;
    let rel = |p: &str| {
        p.strip_prefix(&format!("{moddir}/"))
            .unwrap_or(p)
            .to_string()
    };
    let mut dep = String::new();
    for m in &order {
        let (path, _) = &modules[m];
        let deps: Vec<String> = closure_of(m, &modules)
            .iter()
            .filter(|d| *d != m)
            .map(|d| rel(&modules[d].0))
            .collect();
        dep.push_str(&format!(
            "{}:{}{}\n",
            rel(path),
            if deps.is_empty() { "" } else { " " },
            deps.join(" ")
        ));
    }
    modtree.insert(
        format!("usr/{moddir}/modules.dep"),
        Node::file(dep.into_bytes(), 0o644),
    );
    modtree.insert(
        MODULES_LIST.to_string(),
        Node::file(format!("{}\n", order.join("\n")).into_bytes(), 0o644),
    );

    let mut tree = Tree::default();
    tree.insert(
        KERNEL_BINARY.to_string(),
        Node::file(
            vmlinuz.ok_or_else(|| bad("vmlinuz vanished".into()))?,
            0o644,
        ),
    );
    let tar = super::image::layer_tar(&modtree, mtime).map_err(|e| bad(e.to_string()))?;
    tree.insert(KERNEL_TAR.to_string(), Node::file(tar, 0o644));
    tracing::info!(
        "kernel {version}: {} modules ({} requested)",
        order.len(),
        wanted.len()
    );
    Ok(tree)
}

/// `name` and every module it needs, transitively (modules.dep lists the
/// whole closure after the colon).
fn closure_of(name: &str, modules: &BTreeMap<String, (String, Vec<String>)>) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![name.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(n) = stack.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        out.push(n.clone());
        if let Some((_, deps)) = modules.get(&n) {
            stack.extend(deps.iter().rev().cloned());
        }
    }
    out
}
