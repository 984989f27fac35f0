//! `osk run qemu --forward-socket`: a guest unix socket as a unix socket on
//! the host. The guest's own control socket is forwarded (the `sockfwd`
//! service joins it to QEMU's user network), and the host's `oskctl` talks
//! to osk-init through it. Then: the socket is 0600; a second VM asking for
//! the same host path is refused, naming it, and starts nothing; when QEMU
//! exits, the helper `--detach` left behind ends and removes the socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use osk_e2e::{BootOpts, Machine};
use osk_layout::marker::Event;

const BOOT: Duration = Duration::from_secs(400);

fn overlay() -> String {
    let pkg = osk_e2e::workspace_root().join("pkgs/sockfwd");
    format!(
        r#"services:
  - name: sockfwd
    image: "@pkg:{}"
    binds.add: ["/run/osk:/run/osk"]
"#,
        pkg.display()
    )
}

#[test]
fn a_guest_socket_is_reachable_from_the_host_and_only_while_the_vm_runs() -> Result<()> {
    let cache = osk_e2e::cache_dir()?;
    let work = tempfile::Builder::new().prefix("osk-fwd-").tempdir()?;
    let manifest = work.path().join("sockfwd.yml");
    std::fs::write(&manifest, overlay())?;
    let out = work.path().join("out");
    let o = Command::new(osk_e2e::osk_bin()?)
        .arg("--cache")
        .arg(cache.join("store"))
        .args(["build", "--compress", "gzip", "--name", "fwd", "--dir"])
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
    let prefix = out.join("fwd");
    let sock = work.path().join("host/control.sock");
    let forward = format!("{}:{}", sock.display(), osk_layout::CONTROL_SOCKET);

    let mut vm = Machine::boot(
        &prefix,
        &BootOpts {
            extra: vec!["--forward-socket".into(), forward.clone()],
            ..BootOpts::default()
        },
    )?;
    let mode = std::fs::metadata(&sock)
        .context("the host socket is missing after osk run --detach returned")?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o600, "the host socket has mode {mode:o}");
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;

    // The host's oskctl, through the forwarded socket, lists the services.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listing = loop {
        let o = Command::new(osk_e2e::oskctl_bin()?)
            .arg("--socket")
            .arg(&sock)
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

    // The same host path for a second VM is refused before it starts.
    let state = work.path().join("second");
    let o = Command::new(osk_e2e::osk_bin()?)
        .args([
            "run",
            "qemu",
            "--detach",
            "--accel",
            "tcg",
            "--forward-socket",
        ])
        .arg(&forward)
        .arg("--state")
        .arg(&state)
        .arg(&prefix)
        .output()?;
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

    // QEMU exits: the helper goes, and its socket with it.
    let helper_pid: u32 =
        std::fs::read_to_string(vm.state_dir().join(osk_builder::run::FORWARD_PID))?
            .trim()
            .parse()?;
    vm.monitor("quit").ok();
    vm.wait_exit(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{helper_pid}")).exists() || sock.exists() {
        ensure!(
            Instant::now() < deadline,
            "10 s after QEMU exited the forward helper (pid {helper_pid}) or {} is still there",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
