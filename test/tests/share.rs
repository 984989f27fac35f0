//! `osk run qemu --share`: host folders in the guest over virtio-9p. A host
//! folder is mounted at its own path by default and read-write; another at a
//! path of its own, read-only. Containers bind both: an onboot container
//! copies a read-only file into the read-write share and fails to write the
//! read-only one; the demo service serves a page from the read-write share.
//! Everything is checked from the host, on the host's files.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use osk_e2e::{wait_http, BootOpts, Machine};
use osk_layout::marker::Event;

const BOOT: Duration = Duration::from_secs(400);

/// The overlay on examples/minimal.yml: a writer onboot, and demo serving
/// the shared `www` folder. `rw` is the read-write share's path on both sides.
fn overlay(rw: &Path) -> String {
    let demo = osk_e2e::workspace_root().join("pkgs/demo");
    let rw = rw.display();
    format!(
        r#"onboot:
  - name: share-writer
    image: "@pkg:{demo}"
    command:
      - /bin/sh
      - -c
      - "cat /ro/in.txt > {rw}/copied.txt && echo written-by-guest >> {rw}/copied.txt; if echo x > /ro/forbidden; then touch {rw}/ro-was-writable; fi"
    binds: ["{rw}:{rw}", "/ro:/ro"]
services:
  - name: demo
    image: "@pkg:{demo}"
    binds.add: ["{rw}/www:/www:ro"]
"#,
        demo = demo.display()
    )
}

#[test]
fn shared_folders_are_read_and_written_from_the_guest() -> Result<()> {
    let cache = osk_e2e::cache_dir()?;
    // Under /tmp: a short path, the same in the guest.
    let work = tempfile::Builder::new().prefix("osk-share-").tempdir()?;
    let rw = work.path().join("rw");
    let ro = work.path().join("ro");
    std::fs::create_dir_all(rw.join("www"))?;
    std::fs::create_dir_all(&ro)?;
    let page = format!("served from a host folder {}\n", std::process::id());
    std::fs::write(rw.join("www/index.html"), &page)?;
    std::fs::write(ro.join("in.txt"), "read-only input\n")?;
    let manifest = work.path().join("share.yml");
    std::fs::write(&manifest, overlay(&rw))?;

    let out = work.path().join("out");
    let o = Command::new(osk_e2e::osk_bin()?)
        .arg("--cache")
        .arg(cache.join("store"))
        .args(["build", "--compress", "gzip", "--name", "share", "--dir"])
        .arg(&out)
        .arg(osk_e2e::workspace_root().join("examples/minimal.yml"))
        .arg(&manifest)
        .output()
        .context("running osk build")?;
    ensure!(
        o.status.success(),
        "osk build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let prefix = out.join("share");

    // A folder that does not exist is named, and no VM starts.
    let missing = work.path().join("no-such-folder");
    let state = work.path().join("bad-state");
    let o = Command::new(osk_e2e::osk_bin()?)
        .args(["run", "qemu", "--detach", "--accel", "tcg", "--share"])
        .arg(&missing)
        .arg("--state")
        .arg(&state)
        .arg(&prefix)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "--share of a missing folder succeeded");
    ensure!(
        err.contains(&missing.display().to_string()) && err.contains("no such folder"),
        "the error does not name the missing folder: {err}"
    );
    ensure!(
        !state.join(osk_builder::run::PID_FILE).exists(),
        "a VM started anyway"
    );

    let mut vm = Machine::boot(
        &prefix,
        &BootOpts {
            publish: vec![80],
            extra: vec![
                "--share".into(),
                rw.display().to_string(),
                "--share".into(),
                format!("{}:/ro,ro", ro.display()),
            ],
            ..BootOpts::default()
        },
    )?;
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;

    // Read through the share by a service, from the host's file.
    let got = wait_http(vm.port(80), "/index.html", Duration::from_secs(60))?;
    ensure!(
        got == page,
        "GET /index.html gave {got:?}, not the host's {page:?}"
    );
    // Written by the onboot container, from the read-only share's file.
    let copied = std::fs::read_to_string(rw.join("copied.txt"))
        .context("the guest's file did not appear in the host folder")?;
    ensure!(
        copied == "read-only input\nwritten-by-guest\n",
        "copied.txt holds {copied:?}"
    );
    ensure!(
        !ro.join("forbidden").exists() && !rw.join("ro-was-writable").exists(),
        "the read-only share was writable from the guest"
    );
    Ok(())
}
