//! Helpers for osk end-to-end tests: build images, boot QEMU, watch the console.
//!
//! Every VM runs through the real `osk run qemu --detach --accel tcg` and is
//! killed when its [`Machine`] is dropped, so a failing test leaves no QEMU behind.

pub mod cpio;
pub mod floor;
mod machine;
pub mod metadata;
mod net;
mod package;

pub use machine::{ssh_ok, wait_ssh, BootOpts, Machine};
pub use net::{free_port, http_get, ssh, ssh_keygen, wait_http};
pub use package::{package_file, pkg_build};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};

/// The workspace root (this crate is `<root>/test`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test/ has a parent")
        .to_path_buf()
}

/// The cargo profile directory the running test or bench binary lives in
/// (`target/debug`), found from its own path so CARGO_TARGET_DIR is honoured.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Downloads and test images are kept here between runs: `OSK_E2E_CACHE`,
/// else `target/e2e-cache`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OSK_E2E_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let profile = profile_dir()?;
    Ok(profile.parent().unwrap_or(&profile).join("e2e-cache"))
}

/// The `osk` binary under test: `OSK_BIN` if set, else built now with cargo
/// (a no-op when up to date) in the same target directory and profile as
/// this test, so a test never runs a stale `osk`.
pub fn osk_bin() -> Result<PathBuf> {
    // anyhow::Error is not Clone: every caller gets the first failure's text.
    static BIN: OnceLock<Result<PathBuf, std::sync::Arc<anyhow::Error>>> = OnceLock::new();
    BIN.get_or_init(|| build_bin("osk-builder", "osk", "OSK_BIN").map_err(std::sync::Arc::new))
        .clone()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// The host's `oskctl` (`OSKCTL_BIN`, else built like [`osk_bin`]), for
/// talking to a guest's control socket forwarded to the host.
pub fn oskctl_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, std::sync::Arc<anyhow::Error>>> = OnceLock::new();
    BIN.get_or_init(|| build_bin("osk-init", "oskctl", "OSKCTL_BIN").map_err(std::sync::Arc::new))
        .clone()
        .map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// `$env` if set, else `cargo build -p package --bin bin` into this test's profile.
fn build_bin(package: &str, bin: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let profile = profile_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(workspace_root());
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo build -p {package}"))?;
    ensure!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed ({status})"
    );
    let path = profile.join(bin);
    ensure!(
        path.is_file(),
        "{} missing after cargo build",
        path.display()
    );
    Ok(path)
}

/// `osk --cache E2E_STORE build ARGS... --dir OUT MANIFEST` into an emptied
/// `out`; an error naming the command and quoting osk's stderr if it fails.
pub fn build_into(out: &Path, args: &[&str], manifest: &Path) -> Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let store = cache_dir()?.join("store");
    let mut all = vec![
        "--cache",
        store.to_str().context("store path is not UTF-8")?,
        "build",
    ];
    all.extend(args);
    all.extend(["--dir", out.to_str().context("output path is not UTF-8")?]);
    all.push(manifest.to_str().context("manifest path is not UTF-8")?);
    let o = osk(&all)?;
    ensure!(
        o.status.success(),
        "osk build {} {}: {}",
        args.join(" "),
        manifest.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// Runs `osk ARGS...` to completion and returns its output (stdout, stderr, status).
pub fn osk(args: &[&str]) -> Result<std::process::Output> {
    let bin = osk_bin()?;
    Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

/// Whether `osk run qemu` can run a virtiofsd on this host: the Rust one on
/// PATH or in /usr/libexec, or QEMU's C one (Debian 12's
/// qemu-system-common), which needs root. Tests expect virtiofs shares then.
pub fn virtiofsd_here() -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("virtiofsd").is_file()));
    // /proc/self belongs to this process's effective uid.
    let root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    on_path
        || Path::new("/usr/libexec/virtiofsd").is_file()
        || (root && Path::new("/usr/lib/qemu/virtiofsd").is_file())
}
