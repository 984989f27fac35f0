//! The kernel image form: `/kernel` (vmlinuz; arm64's Image gzip'd, as
//! LinuxKit's are) and `/kernel.tar` holding the
//! chosen modules plus their `depends=` closure, a matching `modules.dep`
//! and osk's list of modules to load at every boot (`kernel.boot`, in load
//! order; osk-init loads device drivers and on-demand modules itself), and
//! the device trees `build.yml` names as `/dtbs/NAME.dtb` (for board formats).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use osk_layout::{modinfo, KERNEL_BINARY, KERNEL_DTBS, KERNEL_TAR, MODULES_LIST};

use super::debian::deb::with_data_tar;
use super::tree::{normalise, Node, Tree};
use super::Error;

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

/// A module `kernel.modules` (or a dependency) wants that the package lacks.
#[derive(Debug, thiserror::Error)]
#[error("module `{module}` (needed by {via}) is not in the package (built in? then drop it from `modules`)")]
pub struct MissingModule {
    pub module: String,
    pub via: String,
}

/// Builds the kernel image tree from a linux-image .deb.
///
/// The data tar is walked twice with [`for_each_entry`]: first for every
/// module's dependencies, then for the bytes of the kept ones. Holding every
/// module's bytes from a single walk would cost hundreds of MB of memory.
pub fn kernel_tree(
    deb: &Path,
    wanted: &[String],
    boot: &[String],
    dtbs: &[String],
    mtime: u64,
) -> Result<Tree, Error> {
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
            let info = modinfo::from_bytes(&read()?).map_err(|e| bad(format!("{path}: {e}")))?;
            let deps = modinfo::depends(&info);
            let name = modinfo::normalize(file.rsplit('/').next().unwrap_or(file));
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
    ) -> Result<(), MissingModule> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let (_, deps) = modules.get(name).ok_or_else(|| MissingModule {
            module: name.into(),
            via: via.into(),
        })?;
        for d in deps {
            visit(d, name, modules, seen, order)?;
        }
        order.push(name.to_string());
        Ok(())
    }
    for m in wanted {
        visit(
            &modinfo::normalize(m),
            "build.yml",
            &modules,
            &mut seen,
            &mut order,
        )
        .map_err(|e| bad(e.to_string()))?;
    }
    let keep: BTreeSet<&str> = order.iter().map(|m| modules[m].0.as_str()).collect();
    let mut at_boot = BTreeSet::new();
    for b in boot {
        let b = modinfo::normalize(b);
        if !seen.contains(&b) {
            return Err(bad(format!(
                "`kernel.boot` lists `{b}`, which is not shipped: add it to `kernel.modules`"
            )));
        }
        at_boot.extend(closure_of(&b, &modules));
    }
    let boot_order: Vec<&String> = order.iter().filter(|m| at_boot.contains(*m)).collect();

    // Pass 2: the kernel, the kept modules' and device trees' bytes.
    let put = |t: &mut Tree, path: &str, node: Node| {
        t.insert(path, node)
            .map_err(|e| bad(format!("cannot put {path} in the image: it {e}")))
    };
    let mut modtree = Tree::default();
    let mut vmlinuz = None;
    let dtb_dir = format!("usr/lib/linux-image-{version}/");
    let mut found_dtbs: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let moddir = format!("lib/modules/{version}");
    let kernel = format!("boot/vmlinuz-{version}");
    // modules.builtin tells osk-init's modprobe what needs no loading.
    // modules.order is cut to the modules kept (the whole kernel's list is
    // 160 kB); modules.builtin.modinfo (46 kB) has no reader in the image.
    let builtin = format!("{moddir}/modules.builtin");
    let order_file = format!("{moddir}/modules.order");
    for_each_entry(deb, &bad, |path, read| {
        if path == kernel {
            vmlinuz = Some(read()?);
        } else if let Some(d) = (path.strip_prefix(&dtb_dir))
            .and_then(|rel| dtbs.iter().find(|d| d.trim_matches('/') == rel))
        {
            found_dtbs.insert(d, read()?);
        } else if path == order_file {
            let all = read()?;
            let kept: Vec<&[u8]> = all
                .split(|b| *b == b'\n')
                .filter(|l| {
                    std::str::from_utf8(l)
                        .is_ok_and(|l| keep.contains(format!("{moddir}/{l}").as_str()))
                })
                .collect();
            let mut text = kept.join(&b'\n');
            if !text.is_empty() {
                text.push(b'\n');
            }
            put(
                &mut modtree,
                &format!("usr/{path}"),
                Node::file(text, 0o644),
            )?;
        } else if keep.contains(path) || path == builtin {
            // Modules live under /usr/lib on a merged-/usr root.
            put(
                &mut modtree,
                &format!("usr/{path}"),
                Node::file(read()?, 0o644),
            )?;
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
    put(
        &mut modtree,
        &format!("usr/{moddir}/modules.dep"),
        Node::file(dep.into_bytes(), 0o644),
    )?;
    put(
        &mut modtree,
        MODULES_LIST,
        Node::file(
            boot_order
                .iter()
                .map(|m| format!("{m}\n"))
                .collect::<String>()
                .into_bytes(),
            0o644,
        ),
    )?;

    let mut vmlinuz = vmlinuz.ok_or_else(|| bad("vmlinuz vanished".into()))?;
    if crate::arch::Arch::of_kernel(&vmlinuz) == Some(crate::arch::Arch::Arm64)
        && !crate::arch::is_gzip(&vmlinuz)
    {
        vmlinuz = gzip_image(&vmlinuz).map_err(|e| bad(format!("gzip of {kernel}: {e}")))?;
    }
    let mut tree = Tree::default();
    put(&mut tree, KERNEL_BINARY, Node::file(vmlinuz, 0o644))?;
    let tar = super::image::layer_tar(&modtree, mtime).map_err(|e| bad(e.to_string()))?;
    put(&mut tree, KERNEL_TAR, Node::file(tar, 0o644))?;
    for d in dtbs {
        let data = found_dtbs.remove(d.as_str()).ok_or_else(|| {
            bad(format!(
                "`kernel.dtbs` lists `{d}`, which is not in {dtb_dir} of the package"
            ))
        })?;
        let name = d.rsplit('/').next().unwrap_or(d);
        put(
            &mut tree,
            &format!("{KERNEL_DTBS}/{name}"),
            Node::file(data, 0o644),
        )?;
    }
    tracing::info!(
        "kernel {version}: {} modules ({} requested)",
        order.len(),
        wanted.len()
    );
    Ok(tree)
}

/// arm64's uncompressed `Image` as `Image.gz`: half the size, and what QEMU's
/// `-kernel`, U-Boot's `booti` and GRUB load. Reproducible: no name, mtime 0,
/// a fixed level.
fn gzip_image(image: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut gz = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(image.len() / 2),
        flate2::Compression::best(),
    );
    gz.write_all(image)?;
    gz.finish()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A module whose `.modinfo` holds `fields`, `;`-separated.
    fn fake_ko(fields: &str) -> Vec<u8> {
        modinfo::synthetic_module(fields.replace(';', "\0").as_bytes())
    }

    /// A .deb whose data.tar holds a vmlinuz and three modules: a needs b.
    fn fake_deb(dir: &Path) -> std::path::PathBuf {
        let mut tar = tar::Builder::new(Vec::new());
        let v = "6.1.0-9-amd64";
        let mut add = |path: String, data: Vec<u8>| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, path, data.as_slice()).unwrap();
        };
        add(format!("./boot/vmlinuz-{v}"), b"kernel".to_vec());
        add(
            format!("./usr/lib/linux-image-{v}/broadcom/board.dtb"),
            b"\xd0\x0d\xfe\xed".to_vec(),
        );
        let m = format!("./lib/modules/{v}/kernel");
        add(format!("{m}/a.ko"), fake_ko("alias=fs-a;depends=b;"));
        add(format!("{m}/b.ko"), fake_ko("depends=;"));
        add(format!("{m}/c-d.ko"), fake_ko("depends=;"));
        let data = tar.into_inner().unwrap();
        let deb = dir.join("linux-image.deb");
        let mut ar = ar::Builder::new(std::fs::File::create(&deb).unwrap());
        ar.append(
            &ar::Header::new(b"data.tar".to_vec(), data.len() as u64),
            data.as_slice(),
        )
        .unwrap();
        deb
    }

    #[test]
    fn boot_list_holds_the_boot_modules_after_their_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        let deb = fake_deb(dir.path());
        let wanted = ["a".to_string(), "c_d".to_string()];
        let tree = kernel_tree(&deb, &wanted, &["a".into()], &[], 0).unwrap();
        let tar = tree.bytes(KERNEL_TAR).unwrap();
        let mut list = String::new();
        let mut shipped = Vec::new();
        for e in tar::Archive::new(tar).entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if p == MODULES_LIST {
                e.read_to_string(&mut list).unwrap();
            } else if p.ends_with(".ko") {
                shipped.push(p.rsplit('/').next().unwrap().to_string());
            }
        }
        shipped.sort();
        assert_eq!(shipped, ["a.ko", "b.ko", "c-d.ko"]);
        assert_eq!(list, "b\na\n");
        // Nothing at boot: an empty list, every module still shipped.
        let tree = kernel_tree(&deb, &wanted, &[], &[], 0).unwrap();
        let n = tar::Archive::new(tree.bytes(KERNEL_TAR).unwrap())
            .entries()
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().unwrap().ends_with(MODULES_LIST))
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_boot_module_that_is_not_shipped_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let deb = fake_deb(dir.path());
        let e = kernel_tree(&deb, &["c-d".into()], &["a".into()], &[], 0).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("kernel.boot") && msg.contains("`a`"), "{msg}");
    }

    #[test]
    fn named_device_trees_are_kept_under_dtbs_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let deb = fake_deb(dir.path());
        let tree = kernel_tree(&deb, &[], &[], &["broadcom/board.dtb".into()], 0).unwrap();
        assert_eq!(tree.bytes("dtbs/board.dtb").unwrap(), b"\xd0\x0d\xfe\xed");
        let tree = kernel_tree(&deb, &[], &[], &[], 0).unwrap();
        assert!(tree.bytes("dtbs/board.dtb").is_none());
        let e = kernel_tree(&deb, &[], &[], &["broadcom/other.dtb".into()], 0).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("kernel.dtbs") && msg.contains("broadcom/other.dtb"),
            "{msg}"
        );
    }
}
