//! The end-to-end scenarios of the full stack: `osk build` from the examples,
//! osk-init, containerd and runc in a real VM under TCG, checked from the host.
//!
//! Cost control (CI builds every package cold and boots under TCG on 2 cores):
//! - one store for every test, `target/e2e-cache/store` (`OSK_E2E_CACHE`
//!   moves it), so each package is built once, by the first build needing it;
//! - `osk build`s run one at a time (a process-wide lock): they are CPU-bound,
//!   and two first-time builds of one package would race in the store;
//! - scenarios that need the same image share one boot: s1+s4 (minimal, then
//!   power it off) and s2+s3 (sshd, then kill a service). Boots run in
//!   parallel up to `--test-threads` (2 in `make e2e`);
//! - boot images are gzip-compressed (quicker to build); s6 checks the
//!   default (zstd) output, where reproducibility matters.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use osk_e2e::{ssh, ssh_keygen, ssh_ok, wait_http, wait_ssh, BootOpts, Machine};
use osk_layout::marker::Event;

/// TCG on a loaded 2-core machine: kernel, root copy, containerd and the
/// first container starts take one to three minutes.
const BOOT: Duration = Duration::from_secs(400);

const MINIMAL: &str = "examples/minimal.yml";
const CTR: &str = "test/manifests/ctr.yml";
const SSHD: &str = "examples/sshd.yml";
const NODE: &str = "examples/node.yml";

/// The line examples/minimal.yml's onshutdown container prints.
const GOODBYE: &str = "osk minimal: onshutdown ran, powering off";

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The store shared by every scenario.
fn store() -> Result<PathBuf> {
    Ok(osk_e2e::cache_dir()?.join("store"))
}

/// A scratch directory on the same file system as the store (s7 hard-links it).
fn scratch() -> Result<tempfile::TempDir> {
    let base = osk_e2e::cache_dir()?.join("tmp");
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::tempdir_in(base)?)
}

fn root(rel: &str) -> PathBuf {
    osk_e2e::workspace_root().join(rel)
}

/// `osk --cache STORE build --dir OUT --name NAME [--compress C] MANIFEST...`.
fn osk_build(
    store: &Path,
    manifests: &[PathBuf],
    out: &Path,
    name: &str,
    compress: Option<&str>,
) -> Result<Output> {
    let _serial = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut cmd = Command::new(osk_e2e::osk_bin()?);
    cmd.arg("--cache")
        .arg(store)
        .args(["build", "--dir"])
        .arg(out)
        .args(["--name", name]);
    if let Some(c) = compress {
        cmd.args(["--compress", c]);
    }
    cmd.args(manifests);
    let output = cmd.output().context("running osk build")?;
    eprintln!(
        "osk build {name} ({}) took {:.0?}",
        manifests
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        started.elapsed()
    );
    Ok(output)
}

/// Builds into `out` (gzip unless `compress` says otherwise) or fails with
/// osk's error; returns the `OUT/NAME` prefix `osk run qemu` takes.
fn build_ok(
    manifests: &[PathBuf],
    out: &Path,
    name: &str,
    compress: Option<&str>,
) -> Result<PathBuf> {
    let o = osk_build(&store()?, manifests, out, name, compress.or(Some("gzip")))?;
    ensure!(
        o.status.success(),
        "osk build {name} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out.join(name))
}

/// A fresh ssh key and an overlay manifest authorizing it: the examples
/// read `~/.ssh/id_ed25519.pub`; this `files` entry (same path) replaces theirs.
struct Key {
    _dir: tempfile::TempDir,
    private: PathBuf,
    overlay: PathBuf,
}

fn key() -> Result<Key> {
    let dir = tempfile::tempdir()?;
    let private = ssh_keygen(dir.path())?;
    let overlay = dir.path().join("key.yml");
    std::fs::write(
        &overlay,
        format!(
            "files:\n  - path: root/.ssh/authorized_keys\n    source: {}.pub\n    mode: \"0600\"\n",
            private.display()
        ),
    )?;
    Ok(Key {
        _dir: dir,
        private,
        overlay,
    })
}

/// Service names under `services:` in the given manifests (`- name: X`
/// entries), de-duplicated as merging does.
fn service_names(manifests: &[PathBuf]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for m in manifests {
        let text =
            std::fs::read_to_string(m).with_context(|| format!("reading {}", m.display()))?;
        let mut in_services = false;
        for line in text.lines() {
            if !line.starts_with([' ', '-', '#']) && !line.trim().is_empty() {
                in_services = line.starts_with("services:");
            } else if in_services {
                if let Some(n) = line.trim().strip_prefix("- name:") {
                    let n = n.trim().trim_matches('"').to_string();
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
    }
    ensure!(!names.is_empty(), "no services in {manifests:?}");
    Ok(names)
}

/// One row of `oskctl ps` (NAME STATE PID RESTARTS UPTIME).
#[derive(Debug, PartialEq)]
struct Ps {
    state: String,
    pid: Option<u32>,
    restarts: u64,
}

fn ps_row(ps: &str, service: &str) -> Result<Ps> {
    let mut lines = ps.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty oskctl ps")?
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .with_context(|| format!("oskctl ps has no {name} column:\n{ps}"))
    };
    let (state, pid, restarts) = (col("STATE")?, col("PID")?, col("RESTARTS")?);
    let row: Vec<&str> = lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.first() == Some(&service))
        .with_context(|| format!("{service} not in oskctl ps:\n{ps}"))?;
    let field = |i: usize| row.get(i).copied().context("short oskctl ps row");
    Ok(Ps {
        state: field(state)?.to_string(),
        pid: field(pid)?.parse().ok(),
        restarts: field(restarts)?
            .parse()
            .with_context(|| format!("RESTARTS of {service}:\n{ps}"))?,
    })
}

/// Waits for the boot to finish and checks that every service of
/// `manifests` printed its service-started marker.
fn wait_all_started(vm: &mut Machine, manifests: &[PathBuf]) -> Result<()> {
    vm.wait_for_marker(&Event::AllServicesStarted, BOOT)?;
    let started: Vec<Event> = vm.markers().into_iter().map(|(_, e)| e).collect();
    for s in service_names(manifests)? {
        ensure!(
            started.contains(&Event::ServiceStarted(s.clone())),
            "no service-started:{s} marker; markers: {started:?}"
        );
    }
    eprintln!(
        "all services started {:.0?} after boot",
        vm.booted_at.elapsed()
    );
    Ok(())
}

/// Scenario 1, minimal: every service starts (markers), the demo page
/// answers through `--publish`, and containerd's own view (`ctr containers
/// ls` in namespace services.osk, from the test-only ctr image merged on
/// top) lists every service. Then scenario 4, shutdown, on the same VM:
/// the ACPI power button runs the onshutdown container, whose output
/// reaches the console, and QEMU exits within 30 s.
#[test]
fn s1_minimal_and_s4_shutdown() -> Result<()> {
    let out = scratch()?;
    let manifests = [root(MINIMAL), root(CTR)];
    let prefix = build_ok(&manifests, out.path(), "minimal", None)?;
    let mut vm = Machine::boot(
        &prefix,
        &BootOpts {
            publish: vec![80],
            ..BootOpts::default()
        },
    )?;
    vm.wait_for_marker(&Event::InitStart, BOOT)?;
    vm.wait_for_marker(&Event::ContainerdReady, BOOT)?;
    wait_all_started(&mut vm, &manifests)?;

    let page = wait_http(vm.port(80), "/", Duration::from_secs(60))?;
    let demo = std::fs::read_to_string(root("pkgs/demo/index.html"))?;
    assert_eq!(page, demo, "GET / is not pkgs/demo/index.html");

    // ctr runs once demo and getty are running; its listing lands in its log.
    let deadline = Instant::now() + Duration::from_secs(60);
    let listing = loop {
        let listing = wait_http(vm.port(80), "/log/ctr.log", Duration::from_secs(30))?;
        if listing.lines().any(|l| l.starts_with("CONTAINER")) || Instant::now() > deadline {
            break listing;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let ids: Vec<&str> = listing
        .lines()
        .skip_while(|l| !l.starts_with("CONTAINER"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for s in service_names(&manifests)? {
        assert!(
            ids.contains(&s.as_str()),
            "`ctr -n services.osk containers ls` lacks {s}:\n{listing}"
        );
    }
    eprintln!("s1 passed {:.0?} after boot", vm.booted_at.elapsed());

    // s4: power button, onshutdown output, clean exit.
    let pressed = Instant::now();
    vm.monitor("system_powerdown")?;
    vm.wait_for_marker(&Event::ShutdownStart, Duration::from_secs(30))?;
    vm.wait_for_line(GOODBYE, Duration::from_secs(30))?;
    vm.wait_for_marker(&Event::OnshutdownDone, Duration::from_secs(30))?;
    vm.wait_exit(Duration::from_secs(30).saturating_sub(pressed.elapsed()))?;
    eprintln!(
        "s4: QEMU exited {:.1?} after system_powerdown",
        pressed.elapsed()
    );
    Ok(())
}

/// Scenario 2, sshd: log in with a key given to the machine through a
/// `files` entry; `oskctl ps` shows every service running. Then scenario 3,
/// restart, on the same VM: `kill -9` of demo's main process brings it back
/// within seconds with a new pid, and `oskctl ps` counts the restart. Then
/// containerd's death: `kill -9` of containerd brings a new containerd
/// within 60 s while every service keeps its pid and restart count (shims
/// hold the containers), and the supervisor watches them through the new
/// one: demo, killed again, is restarted once more. Last, `oskctl poweroff`
/// stops demo (made to depend on sshd here) before sshd, and QEMU exits.
#[test]
fn s2_sshd_and_s3_restart() -> Result<()> {
    let key = key()?;
    let out = scratch()?;
    // demo depends on sshd here, so that the power-off shows the stop order.
    let order = out.path().join("order.yml");
    std::fs::write(
        &order,
        format!(
            "services:\n  - name: demo\n    image: \"@pkg:{}\"\n    depends_on: [sshd]\n",
            root("pkgs/demo").display()
        ),
    )?;
    let manifests = [root(SSHD), key.overlay.clone(), order];
    let prefix = build_ok(&manifests, out.path(), "sshd", None)?;
    let mut vm = Machine::boot(
        &prefix,
        &BootOpts {
            publish: vec![22, 80],
            ..BootOpts::default()
        },
    )?;
    wait_all_started(&mut vm, &manifests)?;
    wait_ssh(&vm, &key.private)?;
    let ps = ssh_ok(&vm, &key.private, "oskctl ps")?;
    let services = service_names(&manifests)?;
    for s in &services {
        let row = ps_row(&ps, s)?;
        assert_eq!(row.state, "running", "{s} is not running:\n{ps}");
        assert!(row.pid.is_some(), "{s} has no pid:\n{ps}");
    }
    // Every service's task is served by one shim (osk-init groups them; the
    // shim front answers containerd's `start` for all but the first).
    let shims = ssh_ok(&vm, &key.private, SHIM_PIDS)?;
    ensure!(
        shims.split_whitespace().count() == 1,
        "{} services should share one containerd shim, found pids {shims:?}",
        services.len()
    );
    eprintln!("s2 passed {:.0?} after boot", vm.booted_at.elapsed());

    // s3: the victim is demo (sshd carries this session).
    wait_http(vm.port(80), "/", Duration::from_secs(30))?;
    let back = kill_and_wait_restart(&vm, &key.private, "demo")?;
    eprintln!("s3: demo back {back:.1?} after kill -9");
    wait_http(vm.port(80), "/", Duration::from_secs(30)).context("demo page after the restart")?;

    containerd_death(&vm, &key.private, &services)?;
    power_off_in_order(&mut vm, &key.private)
}

/// `oskctl poweroff` over ssh: demo, a dependent of sshd, is stopped before
/// sshd is; then QEMU exits.
fn power_off_in_order(vm: &mut Machine, key: &Path) -> Result<()> {
    let asked = Instant::now();
    // sshd may stop under this session: its exit status proves nothing.
    let _ = ssh(vm.port(22), key, "oskctl poweroff");
    vm.wait_for_marker(&Event::ShutdownStart, Duration::from_secs(30))?;
    vm.wait_exit(Duration::from_secs(90))?;
    let console = vm.console();
    let at = |needle: &str| {
        console
            .find(needle)
            .with_context(|| format!("no {needle:?} on the console:\n{console}"))
    };
    let demo_stopped = at("demo stopped in")?;
    let sshd_stopping = at("stopping sshd (its dependents demo stopped)")?;
    ensure!(
        demo_stopped < sshd_stopping,
        "sshd was stopped before its dependent demo:\n{console}"
    );
    for l in console.lines().filter(|l| l.contains("shutdown step")) {
        eprintln!("  {l}");
    }
    eprintln!(
        "power-off in dependency order; QEMU exited {:.1?} after oskctl poweroff",
        asked.elapsed()
    );
    Ok(())
}

/// `kill -9` of `service`'s main process; waits (30 s) until `oskctl ps`
/// shows it running again with a new pid and one more restart. Returns how
/// long that took.
fn kill_and_wait_restart(vm: &Machine, key: &Path, service: &str) -> Result<Duration> {
    let before = ps_row(&ssh_ok(vm, key, "oskctl ps")?, service)?;
    let pid = before
        .pid
        .with_context(|| format!("{service} has no pid"))?;
    ssh_ok(vm, key, &format!("kill -9 {pid}"))?;
    let killed = Instant::now();
    let after = loop {
        let ps = ssh_ok(vm, key, "oskctl ps")?;
        let row = ps_row(&ps, service)?;
        if row.state == "running" && row.pid.is_some_and(|p| p != pid) {
            break row;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("{service} not running again 30 s after kill -9 {pid}:\n{ps}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(
        after.restarts == before.restarts + 1,
        "{service}: restart not counted ({before:?} -> {after:?})"
    );
    Ok(killed.elapsed())
}

/// Pids of the processes named `containerd` (the daemon; its shims are
/// `containerd-shim*`), from /proc with shell builtins only.
const CONTAINERD_PIDS: &str = r#"for p in /proc/[0-9]*; do { read -r c < "$p/comm"; } 2>/dev/null && [ "$c" = containerd ] && echo "${p#/proc/}"; done; true"#;

/// Pids of the containerd shims (`comm` is cut to 15 bytes).
const SHIM_PIDS: &str = r#"for p in /proc/[0-9]*; do { read -r c < "$p/comm"; } 2>/dev/null && [ "$c" = containerd-shim ] && echo "${p#/proc/}"; done; true"#;

fn containerd_pid(vm: &Machine, key: &Path) -> Result<Option<u32>> {
    let out = ssh_ok(vm, key, CONTAINERD_PIDS)?;
    let pids: Vec<u32> = out
        .split_whitespace()
        .map(|p| p.parse().with_context(|| format!("pid {p:?}")))
        .collect::<Result<_>>()?;
    ensure!(pids.len() <= 1, "several containerd processes: {pids:?}");
    Ok(pids.first().copied())
}

/// osk-init's log, as sshd (which binds /var/log) sees it.
fn init_log(vm: &Machine, key: &Path) -> Result<String> {
    ssh_ok(vm, key, "busybox cat /var/log/init.log")
}

/// containerd killed: a new one within 60 s, the services untouched and
/// re-attached (see [`s2_sshd_and_s3_restart`]).
fn containerd_death(vm: &Machine, key: &Path, services: &[String]) -> Result<()> {
    let old = containerd_pid(vm, key)?.context("no containerd process in /proc")?;
    let ps_before = ssh_ok(vm, key, "oskctl ps")?;
    let log_before = init_log(vm, key)?;
    ssh_ok(vm, key, &format!("kill -9 {old}"))?;
    let killed = Instant::now();
    let limit = Duration::from_secs(60);
    let new = loop {
        if let Some(p) = containerd_pid(vm, key)?.filter(|&p| p != old) {
            break p;
        }
        ensure!(
            killed.elapsed() < limit,
            "no new containerd 60 s after kill -9 {old}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "containerd {old} killed; containerd {new} runs {:.1?} later",
        killed.elapsed()
    );
    // Every service re-attaches (init logs it) once the new one answers.
    let log = loop {
        let log = init_log(vm, key)?;
        let fresh = log.get(log_before.len()..).unwrap_or(&log).to_string();
        if services
            .iter()
            .all(|s| fresh.contains(&format!("{s}: re-attached")))
        {
            break fresh;
        }
        ensure!(
            killed.elapsed() < limit,
            "not every service re-attached 60 s after containerd died; init.log since:\n{fresh}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "every service re-attached {:.1?} after containerd died",
        killed.elapsed()
    );
    ensure!(
        log.contains("containerd exited") && log.contains("ready"),
        "init.log does not tell containerd's restart:\n{log}"
    );
    let ps_after = ssh_ok(vm, key, "oskctl ps")?;
    for s in services {
        let (a, b) = (ps_row(&ps_before, s)?, ps_row(&ps_after, s)?);
        ensure!(
            b.state == "running" && a == b,
            "{s} changed across containerd's death: {a:?} -> {b:?}\nbefore:\n{ps_before}after:\n{ps_after}"
        );
    }
    wait_http(vm.port(80), "/", Duration::from_secs(30))
        .context("demo page after containerd's restart")?;
    // Exits are seen through the new containerd: demo dies, demo returns.
    let back = kill_and_wait_restart(vm, key, "demo")
        .context("demo after containerd's restart (is the supervisor attached?)")?;
    eprintln!("demo back {back:.1?} after kill -9, through the new containerd");
    Ok(())
}

/// The hostname s5 gives its machine through metadata.
const S5_HOSTNAME: &str = "osk-e2e-node";

/// `--data` for s5: the ssh key and the hostname, LinuxKit-shaped, so they
/// reach the machine through the metadata onboot container, not the image.
fn s5_metadata(key: &Key) -> Result<String> {
    let pub_path = format!("{}.pub", key.private.display());
    let public =
        std::fs::read_to_string(&pub_path).with_context(|| format!("reading {pub_path}"))?;
    Ok(osk_e2e::metadata::linuxkit_json(&[
        ("hostname", 0o644, S5_HOSTNAME),
        ("ssh/authorized_keys", 0o600, &public),
    ]))
}

/// Scenario 5, persistence: examples/node.yml formats and mounts a data
/// disk on /var/lib; a file written there survives a power-off and a second
/// boot with the same disk. The ssh key and hostname come from `--data`
/// metadata, as on a cloud.
#[test]
fn s5_persistence() -> Result<()> {
    let key = key()?;
    let out = scratch()?;
    let manifests = [root(NODE)];
    let prefix = build_ok(&manifests, out.path(), "node", None)?;
    let disk = out.path().join("node-data.img");
    let opts = BootOpts {
        publish: vec![22],
        disks: vec![format!("{},size=256M", disk.display())],
        data: Some(s5_metadata(&key)?),
        ..BootOpts::default()
    };
    let stamp = format!("kept {}", std::process::id());
    {
        let mut vm = Machine::boot(&prefix, &opts)?;
        wait_all_started(&mut vm, &manifests)?;
        ensure!(
            vm.console()
                .contains("format: creating ext4 (osk-data) on /dev/vda"),
            "the first boot did not format the blank disk"
        );
        wait_ssh(&vm, &key.private)?;
        assert_eq!(
            ssh_ok(&vm, &key.private, "hostname")?.trim(),
            S5_HOSTNAME,
            "the hostname from metadata"
        );
        ssh_ok(
            &vm,
            &key.private,
            &format!("grep -q ' /var/lib ext4 ' /proc/mounts && echo '{stamp}' > /var/lib/e2e-file && sync"),
        )?;
        vm.monitor("system_powerdown")?;
        vm.wait_exit(Duration::from_secs(60))?;
    }
    let mut vm = Machine::boot(&prefix, &opts)?;
    wait_all_started(&mut vm, &manifests)?;
    assert!(
        vm.console()
            .contains("format: /dev/vda is labelled osk-data already"),
        "the second boot did not find the formatted disk"
    );
    wait_ssh(&vm, &key.private)?;
    assert_eq!(
        ssh_ok(&vm, &key.private, "cat /var/lib/e2e-file")?.trim(),
        stamp
    );
    vm.kill();
    Ok(())
}

/// Scenario 6, reproducibility: two builds of examples/minimal.yml with the
/// default compression, into different directories, are byte-identical.
#[test]
fn s6_reproducible() -> Result<()> {
    let (a, b) = (scratch()?, scratch()?);
    let manifests = [root(MINIMAL)];
    let pa = build_ok(&manifests, a.path(), "minimal", Some("zstd"))?;
    let pb = build_ok(&manifests, b.path(), "minimal", Some("zstd"))?;
    for suffix in ["-kernel", "-initrd.img", "-cmdline"] {
        let read = |p: &Path| {
            let f = format!("{}{suffix}", p.display());
            std::fs::read(&f).with_context(|| format!("reading {f}"))
        };
        let (x, y) = (read(&pa)?, read(&pb)?);
        assert!(!x.is_empty(), "{suffix} is empty");
        assert!(x == y, "{suffix} differs between two builds");
    }
    // The size promise: a minimal machine's kernel+initrd, with the default
    // compression, stays at or under 30 MB (LinuxKit claims 35 MB).
    let size =
        |suffix: &str| std::fs::metadata(format!("{}{suffix}", pa.display())).map(|m| m.len());
    let total = size("-kernel")? + size("-initrd.img")?;
    assert!(
        total <= 30_000_000,
        "kernel+initrd of {MINIMAL} is {total} bytes, over 30 MB"
    );
    Ok(())
}

/// Every file under `dir` (none if it does not exist).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Builds `manifests` into a fresh directory with `store`, expecting a
/// failure whose message contains every string in `expect`.
fn build_fails(store: &Path, manifests: &[PathBuf], expect: &[&str]) -> Result<()> {
    let out = scratch()?;
    let dir = out.path().join("out");
    let o = osk_build(store, manifests, &dir, "bad", Some("gzip"))?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "{manifests:?}: build succeeded");
    for e in expect {
        ensure!(
            err.contains(e),
            "{manifests:?}: the error does not name {e:?}:\n{err}"
        );
    }
    let left = files_in(&dir);
    ensure!(left.is_empty(), "{manifests:?}: failed build left {left:?}");
    eprintln!("{manifests:?}: {}", err.trim());
    Ok(())
}

/// Hard-links every blob of `from` (and its index) into `to`, a private
/// store whose blobs can be replaced without touching the shared one.
fn link_store(from: &Path, to: &Path) -> Result<()> {
    for f in ["index.json", "oci-layout"] {
        std::fs::copy(from.join(f), to.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let blobs = to.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for e in std::fs::read_dir(from.join("blobs/sha256"))? {
        let e = e?;
        std::fs::hard_link(e.path(), blobs.join(e.file_name()))?;
    }
    Ok(())
}

/// Scenario 7, bad input: an unknown key, a missing image and a corrupt blob
/// are each a clear error naming the input (file:line:col, the reference,
/// the digest), a non-zero exit, and no output files. The bad parts are
/// overlays merged on top of examples/minimal.yml.
#[test]
fn s7_bad_input() -> Result<()> {
    let dir = scratch()?;
    let minimal = root(MINIMAL);

    let unknown = dir.path().join("unknown-key.yml");
    std::fs::write(&unknown, "# a key osk does not know\nfrobnicate: true\n")?;
    build_fails(
        &store()?,
        &[minimal.clone(), unknown.clone()],
        &["frobnicate", &format!("{}:2:1", unknown.display())],
    )?;

    let missing = dir.path().join("missing-image.yml");
    let reference = "registry.osk.invalid/no/such-image:0.0";
    std::fs::write(
        &missing,
        format!("services:\n  - name: ghost\n    image: {reference}\n"),
    )?;
    build_fails(&store()?, &[minimal.clone(), missing], &[reference])?;

    // Corrupt blobs: a private store sharing the shared one's blobs, in
    // which every layer-sized blob gets one flipped byte (bit rot).
    let shared = store()?;
    // Fills `shared` with every image of minimal.yml.
    build_ok(
        std::slice::from_ref(&minimal),
        &dir.path().join("warm"),
        "warm",
        None,
    )?;
    let private = dir.path().join("store");
    std::fs::create_dir_all(&private)?;
    link_store(&shared, &private)?;
    let mut corrupted = Vec::new();
    for blob in files_in(&private.join("blobs/sha256")) {
        if blob.metadata()?.len() < 1 << 20 {
            continue;
        }
        let mut bytes = std::fs::read(&blob)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::remove_file(&blob)?; // a new inode: the shared store keeps its blob
        std::fs::write(&blob, bytes)?;
        corrupted.push(blob.file_name().unwrap().to_string_lossy().into_owned());
    }
    ensure!(
        !corrupted.is_empty(),
        "no layer blobs in {}",
        shared.display()
    );
    let out = dir.path().join("corrupt");
    let o = osk_build(&private, &[minimal], &out, "bad", Some("gzip"))?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(
        !o.status.success(),
        "a build from a corrupt store succeeded"
    );
    ensure!(
        corrupted.iter().any(|d| err.contains(d.as_str())),
        "the error names none of the corrupt blobs {corrupted:?}:\n{err}"
    );
    let left = files_in(&out);
    ensure!(left.is_empty(), "the failed build left {left:?}");
    eprintln!("corrupt store: {}", err.trim());
    Ok(())
}
