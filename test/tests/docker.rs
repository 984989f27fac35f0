//! The Docker Desktop-like machine, examples/docker.yml, driven by the
//! host's own `docker` CLI (one build, one machine booted twice: CI runs on
//! 2 cores):
//!
//! - `osk run qemu --wait-sockets 1` names the Docker socket that did not
//!   answer, and leaves no QEMU, helper or socket behind.
//! - Booted with a data disk, a shared folder, the Docker API and osk's
//!   control socket forwarded and `--follow-ports`, `osk run` returns once
//!   the API answers on the host socket; then, from the host:
//!   1. `docker version` shows the server; `docker info` warns of nothing.
//!   2. `docker load` of osk's demo package (`osk cache export --format
//!      docker-archive`), `docker build` FROM it, `docker run --rm`.
//!   3. A container reads a host file through the share and writes one the
//!      host reads back.
//!   4. `docker run -d -p P:80`: the host's 127.0.0.1:P answers; after
//!      `docker rm -f`, it is closed.
//!   5. An arm64 image (the demo package built `--arch arm64`) runs with
//!      `--platform linux/arm64` through binfmt.
//!   6. `kill -9` of dockerd inside the machine: the API answers again and
//!      a running container kept running (live-restore); `oskctl restart
//!      docker` through the forwarded control socket brings it back too.
//!   7. After a power-off and a second boot on the same disk, the image
//!      built in 2 is still there.
//!   8. When QEMU exits, the forward helper and the host sockets go.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use osk_e2e::{free_port, wait_http, BootOpts, Machine};

const DOCKER_GUEST: &str = "/var/run/docker.sock";
/// Boot to the Docker API answering, under TCG, on a loaded 2-core host.
const WAIT_API_S: u64 = 600;

/// The host's docker CLI against `sock`, with a config of its own (the
/// user's ~/.docker is not read) and the classic builder (the same with
/// Debian's CLI and newer ones without buildx).
fn docker(sock: &Path, config: &Path, args: &[&str]) -> Result<Output> {
    Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .env("DOCKER_CONFIG", config)
        .env("DOCKER_BUILDKIT", "0")
        .args(args)
        .output()
        .context("running the docker CLI (.ci/host-packages.sh installs it)")
}

/// [`docker`] that must succeed; returns its trimmed stdout.
fn docker_ok(sock: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let o = docker(sock, config, args)?;
    ensure!(
        o.status.success(),
        "docker {} failed ({}): {}{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Polls `docker version` until the server answers.
fn wait_api(sock: &Path, config: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let o = docker(
            sock,
            config,
            &["version", "--format", "{{.Server.Version}}"],
        )?;
        if o.status.success() {
            return Ok(String::from_utf8_lossy(&o.stdout).trim().to_string());
        }
        ensure!(
            Instant::now() < deadline,
            "the Docker API did not answer on {} within {timeout:?}: {}",
            sock.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn osk_ok(args: &[&std::ffi::OsStr]) -> Result<String> {
    let o = Command::new(osk_e2e::osk_bin()?).args(args).output()?;
    ensure!(
        o.status.success(),
        "osk {:?} failed: {}",
        args,
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Builds pkgs/demo for `arch` and writes it as a docker-archive; returns
/// its reference.
fn demo_archive(store: &Path, arch: &str, out: &Path) -> Result<String> {
    let pkg = osk_e2e::workspace_root().join("pkgs/demo");
    let reference = osk_e2e::pkg_build(store, &pkg, arch)?;
    osk_ok(&[
        "--cache".as_ref(),
        store.as_os_str(),
        "cache".as_ref(),
        "export".as_ref(),
        reference.as_ref(),
        "--arch".as_ref(),
        arch.as_ref(),
        "--format".as_ref(),
        "docker-archive".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ])?;
    Ok(reference)
}

/// Host paths of one machine's forwards.
struct Sockets {
    docker: PathBuf,
    control: PathBuf,
}

fn boot(prefix: &Path, state: &Path, work: &Path, shared: &Path, s: &Sockets) -> Result<Machine> {
    let started = Instant::now();
    let vm = Machine::boot(
        prefix,
        &BootOpts {
            mem_mib: 2048,
            disks: vec![format!(
                "{},size=2G",
                work.join("docker-data.img").display()
            )],
            state_dir: Some(state.to_path_buf()),
            extra: vec![
                "--share".into(),
                shared.display().to_string(),
                "--forward-socket".into(),
                format!("{}:{DOCKER_GUEST}", s.docker.display()),
                "--forward-socket".into(),
                format!("{}:{}", s.control.display(), osk_layout::CONTROL_SOCKET),
                "--follow-ports".into(),
                DOCKER_GUEST.into(),
                "--wait-sockets".into(),
                WAIT_API_S.to_string(),
            ],
            ..BootOpts::default()
        },
    )?;
    eprintln!(
        "osk run qemu returned with the Docker API answering after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(vm)
}

/// Stops the machine and checks that its forwards went with it.
fn power_off(vm: &Machine, s: &Sockets) -> Result<()> {
    let helper: Option<u32> =
        std::fs::read_to_string(vm.state_dir().join(osk_builder::run::FORWARD_PID))
            .ok()
            .and_then(|p| p.trim().parse().ok());
    vm.monitor("system_powerdown")?;
    vm.wait_exit(Duration::from_secs(180))
        .context("the machine did not power off within 180 s")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let helper_alive = helper.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        let left: Vec<&PathBuf> = [&s.docker, &s.control]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
        if !helper_alive && left.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "10 s after QEMU exited: forward helper {helper:?} alive: {helper_alive}; sockets left: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_hosts_docker_cli_drives_dockerd_in_an_osk_machine() -> Result<()> {
    let store = osk_e2e::cache_dir()?.join("store");
    // Under /tmp: short socket paths; the shared folder has the same path
    // in the guest.
    let work = tempfile::Builder::new().prefix("osk-docker-").tempdir()?;
    let work = work.path();
    let config = work.join("docker-config");
    let shared = work.join("shared");
    std::fs::create_dir_all(&config)?;
    std::fs::create_dir_all(&shared)?;

    let out = work.join("out");
    osk_ok(&[
        "--cache".as_ref(),
        store.as_os_str(),
        "build".as_ref(),
        "--dir".as_ref(),
        out.as_os_str(),
        osk_e2e::workspace_root()
            .join("examples/docker.yml")
            .as_os_str(),
    ])?;
    let prefix = out.join("docker");
    let demo_tar = work.join("demo.tar");
    let demo_arm64_tar = work.join("demo-arm64.tar");
    let demo = demo_archive(&store, "amd64", &demo_tar)?;
    let demo_arm64 = demo_archive(&store, "arm64", &demo_arm64_tar)?;

    // 8 (bad input): a Docker socket that does not answer in time is
    // named, and nothing is left running.
    let bad_sock = work.join("bad/docker.sock");
    let bad_state = work.join("bad-state");
    let o = Command::new(osk_e2e::osk_bin()?)
        .args(["run", "qemu", "--detach", "--accel", "tcg", "--mem", "2048"])
        .arg("--state")
        .arg(&bad_state)
        .arg("--forward-socket")
        .arg(format!("{}:{DOCKER_GUEST}", bad_sock.display()))
        .args(["--wait-sockets", "1"])
        .arg(&prefix)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "--wait-sockets 1 succeeded");
    ensure!(
        err.contains(DOCKER_GUEST) && err.contains("did not answer"),
        "the error does not name the silent guest socket: {err}"
    );
    std::thread::sleep(Duration::from_secs(2));
    ensure!(!bad_sock.exists(), "{} was left behind", bad_sock.display());
    let pids: Vec<String> = [osk_builder::run::PID_FILE, osk_builder::run::FORWARD_PID]
        .iter()
        .filter_map(|f| std::fs::read_to_string(bad_state.join(f)).ok())
        .map(|p| p.trim().to_string())
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    ensure!(pids.is_empty(), "processes left running: {pids:?}");

    let socks = Sockets {
        docker: work.join("host/docker.sock"),
        control: work.join("host/osk.sock"),
    };
    let state = work.join("state");
    let vm = boot(&prefix, &state, work, &shared, &socks)?;
    let sock = &socks.docker;

    // 1. The server, and no warnings about missing kernel features.
    let version = docker_ok(
        sock,
        &config,
        &["version", "--format", "{{.Server.Version}}"],
    )?;
    ensure!(version.starts_with("20.10."), "server version {version:?}");
    let info = docker(sock, &config, &["info"])?;
    let info_err = String::from_utf8_lossy(&info.stderr);
    ensure!(
        info.status.success() && !info_err.contains("WARNING"),
        "docker info warns: {info_err}"
    );

    // 2. load, build, run.
    let loaded = docker_ok(
        sock,
        &config,
        &["load", "-i", &demo_tar.display().to_string()],
    )?;
    ensure!(loaded.contains(&demo), "docker load said {loaded:?}");
    let ctx = work.join("build");
    std::fs::create_dir_all(&ctx)?;
    let greeting = format!("built by docker in osk {}", std::process::id());
    std::fs::write(ctx.join("hello.txt"), format!("{greeting}\n"))?;
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {demo}\nCOPY hello.txt /hello.txt\nCMD [\"/usr/bin/busybox\", \"cat\", \"/hello.txt\"]\n"
        ),
    )?;
    docker_ok(
        sock,
        &config,
        &["build", "-t", "e2e/hello", &ctx.display().to_string()],
    )?;
    let said = docker_ok(sock, &config, &["run", "--rm", "e2e/hello"])?;
    ensure!(said == greeting, "e2e/hello said {said:?}");

    // The swap file (a 2 GiB machine is under the example's 4 GiB
    // threshold): /proc/swaps is the kernel's, whoever reads it.
    let swaps = docker_ok(
        sock,
        &config,
        &[
            "run",
            "--rm",
            &demo,
            "/usr/bin/busybox",
            "cat",
            "/proc/swaps",
        ],
    )?;
    ensure!(
        swaps.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && f[1] == "file" && f[2].parse::<u64>().is_ok_and(|kib| kib > 1_000_000)
        }),
        "no 1 GiB swap file in /proc/swaps: {swaps}"
    );

    // 3. The shared folder, at its host path on both sides.
    std::fs::write(shared.join("in.txt"), "from the host\n")?;
    let dir = shared.display().to_string();
    docker_ok(
        sock,
        &config,
        &[
            "run",
            "--rm",
            "-v",
            &format!("{dir}:{dir}"),
            &demo,
            "/bin/sh",
            "-c",
            &format!("cat {dir}/in.txt > {dir}/out.txt && echo from-a-container >> {dir}/out.txt"),
        ],
    )?;
    let back = std::fs::read_to_string(shared.join("out.txt"))
        .context("the container's file did not appear in the host folder")?;
    ensure!(
        back == "from the host\nfrom-a-container\n",
        "out.txt holds {back:?}"
    );
    // Over virtiofs where this host has a virtiofsd (`--share-fs auto`).
    let mounts = docker_ok(
        sock,
        &config,
        &[
            "run",
            "--rm",
            "-v",
            &format!("{dir}:{dir}"),
            &demo,
            "/usr/bin/busybox",
            "cat",
            "/proc/mounts",
        ],
    )?;
    let want = if osk_e2e::virtiofsd_here() {
        "virtiofs"
    } else {
        "9p"
    };
    ensure!(
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 2 && f[1] == dir && f[2] == want
        }),
        "the container does not see {dir} as {want}: {mounts}"
    );

    // 4. A published port follows its container.
    let port = free_port()?;
    docker_ok(
        sock,
        &config,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &format!("{port}:80"),
            &demo,
        ],
    )?;
    let page = wait_http(port, "/", Duration::from_secs(60))
        .with_context(|| format!("127.0.0.1:{port} (docker run -p {port}:80)"))?;
    ensure!(
        page.contains("osk demo"),
        "127.0.0.1:{port} served {page:?}"
    );
    docker_ok(sock, &config, &["rm", "-f", "web"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        ensure!(
            Instant::now() < deadline,
            "127.0.0.1:{port} still accepts 30 s after docker rm -f"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // 5. arm64 through binfmt.
    docker_ok(
        sock,
        &config,
        &["load", "-i", &demo_arm64_tar.display().to_string()],
    )?;
    let machine = docker_ok(
        sock,
        &config,
        &[
            "run",
            "--rm",
            "--platform",
            "linux/arm64",
            &demo_arm64,
            "/usr/bin/busybox",
            "uname",
            "-m",
        ],
    )?;
    ensure!(machine == "aarch64", "the arm64 container says {machine:?}");

    // 6. kill -9 of dockerd: back, and a running container kept running.
    docker_ok(
        sock,
        &config,
        &[
            "run",
            "-d",
            "--name",
            "keep",
            &demo,
            "/usr/bin/busybox",
            "sleep",
            "100000",
        ],
    )?;
    let before = docker_ok(sock, &config, &["inspect", "-f", "{{.State.Pid}}", "keep"])?;
    // dockerd's pid namespace is the docker service's: --pid host.
    // The client may lose its connection as dockerd dies; what counts is
    // that dockerd comes back.
    let _ = docker(
        sock,
        &config,
        &[
            "run",
            "--rm",
            "--pid",
            "host",
            "--privileged",
            &demo,
            "/bin/sh",
            "-c",
            "busybox kill -9 $(busybox pidof dockerd)",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(1));
    wait_api(sock, &config, Duration::from_secs(120))?;
    let after = docker_ok(
        sock,
        &config,
        &["inspect", "-f", "{{.State.Running}} {{.State.Pid}}", "keep"],
    )?;
    ensure!(
        after == format!("true {before}"),
        "after dockerd's restart, keep is {after:?} (was running as pid {before})"
    );
    let o = Command::new(osk_e2e::oskctl_bin()?)
        .arg("--socket")
        .arg(&socks.control)
        .args(["restart", "docker"])
        .output()?;
    ensure!(
        o.status.success(),
        "oskctl restart docker: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    wait_api(sock, &config, Duration::from_secs(300)).context("after oskctl restart docker")?;

    // 7. Power off, boot again on the same disk: the image is still there.
    power_off(&vm, &socks)?;
    drop(vm);
    let vm = boot(&prefix, &state, work, &shared, &socks)?;
    let images = docker_ok(sock, &config, &["image", "ls", "-q", "e2e/hello"])?;
    ensure!(
        !images.is_empty(),
        "e2e/hello is gone after a reboot; docker images: {}",
        docker_ok(sock, &config, &["image", "ls"])?
    );

    // 8. QEMU exits: nothing of osk run stays.
    power_off(&vm, &socks)?;
    if vm.is_running() {
        bail!("QEMU still runs after power-off");
    }
    Ok(())
}
