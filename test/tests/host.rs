//! The host's side of a development VM, in one boot of examples/minimal.yml
//! with an overlay (one build, one boot: CI runs on 2 cores):
//!
//! - `--share`: a host folder at its own path, read-write, and another at
//!   `/ro`, read-only. An onboot container copies a read-only file into the
//!   read-write share and fails to write the read-only one; the demo service
//!   serves a page from the read-write share. Checked on the host's files.
//! - `--forward-socket`: osk-init's control socket appears on the host (the
//!   `sockfwd` service joins it to QEMU's user network), mode 0600, and the
//!   host's `oskctl` lists the services through it. A second VM asking for
//!   the same host path is refused, naming it. Booting into the running
//!   VM's state is refused and leaves it alone. `osk run qemu --stop STATE`
//!   powers the guest down; the helper `--detach` left behind ends, and no
//!   socket or pid file is left.
//! - A `--share` of a missing folder is named, and no VM starts.
//! - virtiofs: where this host can run a virtiofsd (the Rust one on PATH,
//!   or QEMU's C one as root), the boot asks `--share-fs virtiofs`: the
//!   read-write share is mounted over virtiofs and the read-only one over
//!   whatever enforces read-only on the host (9p with the C daemon). The
//!   daemon ends with the VM, its socket with it. A missing `--virtiofsd`
//!   is named and no VM starts. Without one, `--share-fs virtiofs` says
//!   what to install, and the boot uses 9p.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use osk_e2e::{wait_http, BootOpts, Machine};
use osk_layout::marker::Event;

const BOOT: Duration = Duration::from_secs(400);

/// The overlay: a writer onboot and demo serving the shared `www` folder
/// (`rw` is the read-write share's path on both sides), and sockfwd.
fn overlay(rw: &Path) -> String {
    let pkgs = osk_e2e::workspace_root().join("pkgs");
    let pkgs = pkgs.display();
    let rw = rw.display();
    format!(
        r#"onboot:
  - name: share-writer
    image: "@pkg:{pkgs}/demo"
    command:
      - /bin/sh
      - -c
      - "cat /ro/in.txt > {rw}/copied.txt && echo written-by-guest >> {rw}/copied.txt; if echo x > /ro/forbidden; then touch {rw}/ro-was-writable; fi"
    binds: ["{rw}:{rw}", "/ro:/ro"]
services:
  - name: demo
    image: "@pkg:{pkgs}/demo"
    binds.add: ["{rw}/www:/www:ro"]
  - name: sockfwd
    image: "@pkg:{pkgs}/sockfwd"
    binds.add: ["/run/osk:/run/osk"]
"#
    )
}

fn osk(args: &[&std::ffi::OsStr]) -> Result<Output> {
    Ok(Command::new(osk_e2e::osk_bin()?).args(args).output()?)
}

#[test]
fn shared_folders_and_forwarded_sockets() -> Result<()> {
    let cache = osk_e2e::cache_dir()?;
    // Under /tmp: short paths, the same in the guest.
    let work = tempfile::Builder::new().prefix("osk-host-").tempdir()?;
    let rw = work.path().join("rw");
    let ro = work.path().join("ro");
    std::fs::create_dir_all(rw.join("www"))?;
    std::fs::create_dir_all(&ro)?;
    let page = format!("served from a host folder {}\n", std::process::id());
    std::fs::write(rw.join("www/index.html"), &page)?;
    std::fs::write(ro.join("in.txt"), "read-only input\n")?;
    let manifest = work.path().join("host.yml");
    std::fs::write(&manifest, overlay(&rw))?;

    let out = work.path().join("out");
    let o = Command::new(osk_e2e::osk_bin()?)
        .arg("--cache")
        .arg(cache.join("store"))
        .args(["build", "--compress", "gzip", "--name", "host", "--dir"])
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
    let prefix = out.join("host");

    // A folder that does not exist is named, and no VM starts.
    let missing = work.path().join("no-such-folder");
    let state = work.path().join("bad-state");
    let err = refused(&state, &prefix, &["--share".as_ref(), missing.as_os_str()])?;
    ensure!(
        err.contains(&missing.display().to_string()) && err.contains("no such folder"),
        "the error does not name the missing folder: {err}"
    );

    // virtiofs when this host has a daemon for it; else its absence is named.
    let virtiofs = osk_e2e::virtiofsd_here();
    let share_virtiofs = [
        "--share".as_ref(),
        rw.as_os_str(),
        "--share-fs".as_ref(),
        "virtiofs".as_ref(),
    ];
    let mut with_missing = share_virtiofs.to_vec();
    with_missing.extend(["--virtiofsd".as_ref(), missing.as_os_str()]);
    let err = refused(&state, &prefix, &with_missing)?;
    ensure!(
        err.contains("--share-fs") && err.contains(&missing.display().to_string()),
        "a missing --virtiofsd was not named: {err}"
    );
    let share_fs = if virtiofs {
        "virtiofs"
    } else {
        let err = refused(&state, &prefix, &share_virtiofs)?;
        ensure!(
            err.contains("cargo install virtiofsd"),
            "--share-fs virtiofs without a usable virtiofsd does not say what to install: {err}"
        );
        "9p"
    };

    let sock = work.path().join("host/control.sock");
    let forward = format!("{}:{}", sock.display(), osk_layout::CONTROL_SOCKET);
    let mut vm = Machine::boot(
        &prefix,
        &BootOpts {
            publish: vec![80],
            extra: vec![
                "--share".into(),
                rw.display().to_string(),
                "--share".into(),
                format!("{}:/ro,ro", ro.display()),
                "--share-fs".into(),
                share_fs.into(),
                "--forward-socket".into(),
                forward.clone(),
            ],
            ..BootOpts::default()
        },
    )?;
    let mode = std::fs::metadata(&sock)
        .context("the host socket is missing after osk run --detach returned")?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o600, "the host socket has mode {mode:o}");
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;

    shares_work(&vm, &rw, &ro, &page)?;
    let console = vm.console();
    let mounted = format!(
        "shared folder osk0 ({share_fs}) mounted on {}",
        rw.display()
    );
    ensure!(
        console.contains(&mounted),
        "the console does not say {mounted:?}"
    );
    let daemons: Vec<u32> = if virtiofs {
        let pid = std::fs::read_to_string(vm.state_dir().join("virtiofs0.pid"))
            .context("no virtiofs0.pid for the virtiofs share")?;
        vec![pid.trim().parse()?]
    } else {
        Vec::new()
    };
    oskctl_through(&sock)?;
    second_vm_refused(&forward, &sock, &work.path().join("second"), &prefix)?;

    // Booting into the running VM's state is refused, and leaves it alone.
    let state = vm.state_dir().to_path_buf();
    let o = osk(&[
        "run".as_ref(),
        "qemu".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        prefix.as_os_str(),
    ])?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        !o.status.success() && err.contains("in use by a running VM"),
        "a second boot into {} was not refused: {err}",
        state.display()
    );
    let monitor = state.join(osk_builder::run::MONITOR_SOCKET);
    ensure!(
        monitor.exists(),
        "the refused boot removed {}",
        monitor.display()
    );

    // `osk run qemu --stop`: the guest powers down (osk-init's ACPI button),
    // QEMU exits, the helper goes, and every socket with it.
    let helper_pid: u32 = std::fs::read_to_string(state.join(osk_builder::run::FORWARD_PID))?
        .trim()
        .parse()?;
    let stop = |what: &str| -> Result<()> {
        let o = osk(&[
            "run".as_ref(),
            "qemu".as_ref(),
            "--stop".as_ref(),
            state.as_os_str(),
        ])?;
        let out = String::from_utf8_lossy(&o.stdout);
        ensure!(
            o.status.success() && out.contains(what),
            "osk run qemu --stop {} ({}): {out}{}",
            state.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    };
    stop("the guest powered down")?;
    ensure!(!vm.is_running(), "QEMU runs after --stop returned");
    // A zombie (an empty command line) has ended.
    let helper = std::fs::read(format!("/proc/{helper_pid}/cmdline"));
    ensure!(
        !helper.is_ok_and(|c| !c.is_empty()),
        "the forward helper (pid {helper_pid}) runs after --stop"
    );
    for pid in daemons {
        let line = std::fs::read(format!("/proc/{pid}/cmdline"));
        ensure!(
            !line.is_ok_and(|c| !c.is_empty()),
            "the virtiofsd (pid {pid}) runs after --stop"
        );
    }
    for gone in [
        &state.join("virtiofs0.sock"),
        &state.join("virtiofs0.pid"),
        &sock,
        &monitor,
        &state.join(osk_builder::run::PID_FILE),
        &state.join(osk_builder::run::FORWARD_PID),
    ] {
        ensure!(!gone.exists(), "{} is left after --stop", gone.display());
    }
    stop("already stopped")?;
    Ok(())
}

/// `osk run qemu --detach EXTRA --state STATE PREFIX` must fail and start no
/// VM; returns its stderr.
fn refused(state: &Path, prefix: &Path, extra: &[&std::ffi::OsStr]) -> Result<String> {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["run".as_ref(), "qemu".as_ref(), "--detach".as_ref()];
    args.extend(extra);
    args.extend(["--state".as_ref(), state.as_os_str(), prefix.as_os_str()]);
    let o = osk(&args)?;
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ensure!(!o.status.success(), "osk run qemu {extra:?} succeeded");
    ensure!(
        !state.join(osk_builder::run::PID_FILE).exists(),
        "osk run qemu {extra:?} failed, but a VM started anyway"
    );
    Ok(err)
}

fn shares_work(vm: &Machine, rw: &Path, ro: &Path, page: &str) -> Result<()> {
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

/// The host's oskctl, through the forwarded socket, lists the services.
fn oskctl_through(sock: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let listing = loop {
        let o = Command::new(osk_e2e::oskctl_bin()?)
            .arg("--socket")
            .arg(sock)
            .arg("ps")
            .output()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && text.contains("sockfwd") {
            break text;
        }
        ensure!(
            Instant::now() < deadline,
            "oskctl ps through {} failed: {}{}",
            sock.display(),
            text,
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    ensure!(
        listing.contains("demo"),
        "oskctl ps lists no demo: {listing}"
    );
    Ok(())
}

/// The same host path for a second VM is refused before it starts.
fn second_vm_refused(forward: &str, sock: &Path, state: &Path, prefix: &Path) -> Result<()> {
    let o = osk(&[
        "run".as_ref(),
        "qemu".as_ref(),
        "--detach".as_ref(),
        "--forward-socket".as_ref(),
        forward.as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        prefix.as_os_str(),
    ])?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "a second VM took a socket in use");
    ensure!(
        err.contains(&sock.display().to_string()) && err.contains("in use"),
        "the error does not name the socket in use: {err}"
    );
    ensure!(
        !state.join(osk_builder::run::PID_FILE).exists(),
        "a second VM started"
    );
    Ok(())
}
