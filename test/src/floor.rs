//! The floor: Debian's own kernel with a busybox-only initramfs. It is both
//! the smallest thing `osk run qemu` can boot today and the baseline the
//! benchmark compares osk's boot against.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};

use crate::cpio::Archive;

/// Where the static busybox from Debian's `busybox-static` lives.
pub const BUSYBOX: &str = "/bin/busybox";

/// A Debian kernel package unpacked in the cache: its vmlinuz and the
/// extracted modules tree (only the modules asked for so far).
#[derive(Debug, Clone)]
pub struct DebianKernel {
    pub package: String,
    pub deb: PathBuf,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` under the unpack directory.
    pub modules_dir: PathBuf,
}

static FETCH: Mutex<()> = Mutex::new(());

/// Fetches (once, into the cache) the kernel `linux-image-amd64` currently
/// depends on, e.g. `linux-image-6.1.0-56-amd64`, and unpacks its vmlinuz.
/// `OSK_E2E_KERNEL_DEB` may name a .deb to use instead of downloading.
pub fn debian_kernel() -> Result<DebianKernel> {
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let cache = crate::cache_dir()?.join("kernel");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let deb = match std::env::var_os("OSK_E2E_KERNEL_DEB") {
        Some(p) => PathBuf::from(p),
        None => download_kernel_deb(&cache)?,
    };
    let package = deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').next())
        .context("kernel .deb has no package_version_arch.deb name")?
        .to_string();
    let root = cache.join(&package);
    let release = package
        .strip_prefix("linux-image-")
        .context("kernel package name does not start with linux-image-")?
        .to_string();
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        extract(&deb, &root, &[format!("./boot/vmlinuz-{release}")])?;
    }
    ensure!(
        vmlinuz.is_file(),
        "{} holds no {}",
        deb.display(),
        vmlinuz.display()
    );
    Ok(DebianKernel {
        package,
        deb,
        vmlinuz,
        modules_dir: root.join(format!("lib/modules/{release}")),
    })
}

fn download_kernel_deb(cache: &Path) -> Result<PathBuf> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache (is this Debian?)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!(
                "`apt-cache depends linux-image-amd64` names no kernel package (run `apt-get update`?): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?
        .to_string();
    let existing = |cache: &Path| -> Option<PathBuf> {
        fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = existing(cache) {
        return Ok(deb);
    }
    // Download into a scratch directory, then rename: a killed run leaves no partial .deb.
    let tmp = tempfile::tempdir_in(cache)?;
    let status = Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(tmp.path())
        .status()
        .context("running apt-get download")?;
    ensure!(
        status.success(),
        "`apt-get download {package}` failed ({status})"
    );
    let deb = existing(tmp.path())
        .with_context(|| format!("apt-get download {package} wrote no .deb"))?;
    let dest = cache.join(deb.file_name().unwrap());
    fs::rename(&deb, &dest)?;
    Ok(dest)
}

/// Extracts `members` (tar paths like `./boot/vmlinuz-...`, wildcards allowed)
/// of a .deb's data into `root`.
fn extract(deb: &Path, root: &Path, members: &[String]) -> Result<()> {
    fs::create_dir_all(root)?;
    let script = format!(
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards {}",
        members
            .iter()
            .map(|m| format!("'{m}'"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(deb)
        .arg(root)
        .status()
        .context("running dpkg-deb | tar")?;
    ensure!(
        status.success(),
        "extracting {members:?} from {} failed",
        deb.display()
    );
    Ok(())
}

impl DebianKernel {
    /// Paths of the named modules (`button`, `evdev`...) and, recursively,
    /// what they depend on, in load order (dependencies first).
    pub fn modules(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let mut order = Vec::new();
        for name in names {
            self.add_module(name, &mut order)?;
        }
        Ok(order)
    }

    fn add_module(&self, name: &str, order: &mut Vec<PathBuf>) -> Result<()> {
        let ko = self.find_module(name)?;
        if order.contains(&ko) {
            return Ok(());
        }
        let info = osk_layout::modinfo::from_bytes(&fs::read(&ko)?)
            .with_context(|| format!("reading {}", ko.display()))?;
        for dep in osk_layout::modinfo::depends(&info) {
            self.add_module(&dep, order)?;
        }
        if !order.contains(&ko) {
            order.push(ko);
        }
        Ok(())
    }

    fn find_module(&self, name: &str) -> Result<PathBuf> {
        let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
        // Module names use `_` where file names may use `-`.
        let mut file_names = vec![format!("{name}.ko")];
        if name.contains('_') {
            file_names.push(format!("{}.ko", name.replace('_', "-")));
        }
        for attempt in 0..2 {
            if let Some(p) = find_file(&self.modules_dir, &file_names) {
                return Ok(p);
            }
            if attempt == 0 {
                let root = self.modules_dir.ancestors().nth(3).unwrap().to_path_buf();
                // One pattern for both spellings: tar fails on a member that
                // matches nothing, and the lookup below reports a missing one.
                let member = format!("*/{}.ko", name.replace('_', "[-_]"));
                let _ = extract(&self.deb, &root, &[member]);
            }
        }
        bail!("module {name} not found in {}", self.deb.display())
    }
}

fn find_file(dir: &Path, names: &[String]) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(p) = find_file(&path, names) {
                return Some(p);
            }
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| names.iter().any(|x| x == n))
        {
            return Some(path);
        }
    }
    None
}

/// A busybox initramfs: `/init` is `body` run by busybox sh after /proc,
/// /sys and /dev are mounted and the applets installed; `modules` are put
/// in /lib/modules/ and loaded in the given order first.
pub fn busybox_initramfs(body: &str, modules: &[PathBuf]) -> Result<Vec<u8>> {
    let busybox = fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX}: install it with `apt-get install busybox-static`")
    })?;
    busybox_initramfs_of(busybox, body, modules)
}

/// [`busybox_initramfs`] around the given static busybox (another
/// architecture's, for instance).
pub fn busybox_initramfs_of(busybox: Vec<u8>, body: &str, modules: &[PathBuf]) -> Result<Vec<u8>> {
    let mut a = Archive::new();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
        "mnt",
    ] {
        a.dir(d);
    }
    // Without /dev/console in the archive the kernel gives /init no stdout.
    a.char_dev("dev/console", 0o600, 5, 1);
    a.file("bin/busybox", 0o755, busybox);
    a.symlink("bin/sh", "busybox");
    let mut init = String::from(INIT_PROLOGUE);
    for ko in modules {
        let name = ko.file_name().unwrap().to_string_lossy();
        a.file(&format!("lib/modules/{name}"), 0o644, fs::read(ko)?);
        init.push_str(&format!("insmod /lib/modules/{name}\n"));
    }
    init.push_str(body);
    a.file("init", 0o755, init);
    Ok(a.to_bytes())
}

const INIT_PROLOGUE: &str = r#"#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
uptime_s() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "OSK-MARK $(uptime_s) $1"; }
"#;

/// The floor's /init: report uptime, print a marker, power off.
pub const FLOOR_INIT: &str = r#"echo "floor: /init reached at uptime $(uptime_s) s"
mark init-start
poweroff -f
"#;

/// Writes `DIR/NAME-kernel`, `-initrd.img` and `-cmdline`, the files
/// `osk build` produces, so `osk run qemu DIR/NAME` boots them.
pub fn write_artifacts(prefix: &Path, kernel: &Path, initrd: &[u8], cmdline: &str) -> Result<()> {
    let with = |suffix: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    if let Some(dir) = prefix.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(kernel, with("-kernel")).with_context(|| format!("copying {}", kernel.display()))?;
    fs::write(with("-initrd.img"), initrd)?;
    fs::write(with("-cmdline"), cmdline)?;
    Ok(())
}

/// The floor image in `dir`: returns its prefix (`DIR/floor`).
pub fn floor_image(dir: &Path) -> Result<PathBuf> {
    let kernel = debian_kernel()?;
    let prefix = dir.join("floor");
    write_artifacts(
        &prefix,
        &kernel.vmlinuz,
        &busybox_initramfs(FLOOR_INIT, &[])?,
        "console=ttyS0 panic=-1",
    )?;
    Ok(prefix)
}
