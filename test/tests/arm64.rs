//! arm64 built on this (amd64) host: osk's own binaries cross-compiled into
//! arm64 package images.

use anyhow::{ensure, Context, Result};
use osk_builder::reference::Reference;
use osk_builder::store::Store;

/// `ELF` class 64, little-endian, e_machine 183 (AArch64), and no PT_INTERP:
/// a static arm64 executable.
fn is_static_aarch64(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    if u16_at(18) != 183 {
        return false;
    }
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    (0..phnum as usize).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3: a dynamic loader would be needed.
        elf.get(o..o + 4) != Some(&3u32.to_le_bytes()[..])
    })
}

#[test]
fn arm64_metadata_package_holds_a_static_aarch64_osk_metadata() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store_dir = tmp.path().join("store");
    let pkg = osk_e2e::workspace_root().join("pkgs/metadata");
    let o = osk_e2e::osk(&[
        "--cache",
        store_dir.to_str().unwrap(),
        "pkg",
        "build",
        "--arch",
        "arm64",
        pkg.to_str().unwrap(),
    ])?;
    ensure!(
        o.status.success(),
        "osk pkg build --arch arm64 pkgs/metadata: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8(o.stdout)?;
    let reference = stdout.split('\t').next().context("no reference printed")?;
    let store = Store::open(&store_dir)?;
    let image = store.image(&Reference::parse(reference)?, "linux", "arm64")?;
    let (layer, _) = &image.layers()?[0];
    // GNU tar reads the layer as any user's tools would.
    let out = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(store.blob_path(layer))
        .arg("usr/bin/osk-metadata")
        .output()?;
    ensure!(
        out.status.success(),
        "usr/bin/osk-metadata is not in {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        is_static_aarch64(&out.stdout),
        "usr/bin/osk-metadata is not a static AArch64 executable"
    );
    Ok(())
}
