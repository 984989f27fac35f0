//! Packages in a test's store: `osk pkg build` of one, a file read back
//! from its layer.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use osk_builder::reference::Reference;
use osk_builder::store::Store;

/// `osk --cache STORE pkg build --arch ARCH PKG_DIR`; the image reference it
/// printed (`REF<TAB>ARCH<TAB>...`).
pub fn pkg_build(store: &Path, pkg: &Path, arch: &str) -> Result<String> {
    let o = Command::new(crate::osk_bin()?)
        .arg("--cache")
        .arg(store)
        .args(["pkg", "build", "--arch", arch])
        .arg(pkg)
        .output()?;
    ensure!(
        o.status.success(),
        "osk pkg build --arch {arch} {}: {}",
        pkg.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8(o.stdout)?;
    Ok(stdout
        .split('\t')
        .next()
        .filter(|r| r.contains(':'))
        .with_context(|| format!("osk pkg build printed no reference: {stdout:?}"))?
        .to_string())
}

/// `path` from the (single, gzip) layer of `reference` for `arch`, read by
/// GNU tar as any user's tools would.
pub fn package_file(store: &Path, reference: &str, arch: &str, path: &str) -> Result<Vec<u8>> {
    let store = Store::open(store)?;
    let image = store.image(&Reference::parse(reference)?, "linux", arch)?;
    let (layer, _) = &image.layers()?[0];
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(store.blob_path(layer))
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "{path} is not in {reference} ({arch}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}
