//! The Docker Desktop-like machine (examples/docker.yml): from `osk run` to
//! Docker's API answering on the host socket, and `docker run --rm` of a
//! trivial image, cold and warm, through the host's docker CLI.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use osk_e2e::{BootOpts, Machine};

use super::{mib, size, timed_build_with, with_suffix};

const MANIFEST: &str = "examples/docker.yml";
const GUEST_SOCKET: &str = "/var/run/docker.sock";

/// One boot's numbers, in seconds.
struct Run {
    /// `osk run qemu --detach --wait-sockets` start → return (API answering).
    to_api: f64,
    /// The first `docker run --rm` of the image after `docker load`.
    cold: f64,
    /// The same again.
    warm: f64,
}

fn docker(sock: &Path, config: &Path, args: &[&str]) -> Result<f64> {
    let start = Instant::now();
    let o = Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .env("DOCKER_CONFIG", config)
        .args(args)
        .output()
        .context("running the docker CLI")?;
    ensure!(
        o.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(start.elapsed().as_secs_f64())
}

fn one_run(
    prefix: &Path,
    work: &Path,
    demo_tar: &Path,
    demo: &str,
    accel: &'static str,
) -> Result<Run> {
    let sock = work.join("docker.sock");
    let config = work.join("docker-config");
    std::fs::create_dir_all(&config)?;
    let disk = work.join("data.img");
    // A fresh disk each run: the first boot's format is part of it, as a
    // user's first start; later boots skip it.
    let _ = std::fs::remove_file(&disk);
    let start = Instant::now();
    let vm = Machine::boot(
        prefix,
        &BootOpts {
            mem_mib: 2048,
            accel,
            disks: vec![format!("{},size=2G", disk.display())],
            extra: vec![
                "--forward-socket".into(),
                format!("{}:{GUEST_SOCKET}", sock.display()),
                "--wait-sockets".into(),
                "600".into(),
            ],
            ..BootOpts::default()
        },
    )?;
    let to_api = start.elapsed().as_secs_f64();
    docker(
        &sock,
        &config,
        &["load", "-i", &demo_tar.display().to_string()],
    )?;
    let run = ["run", "--rm", demo, "/usr/bin/busybox", "true"];
    let cold = docker(&sock, &config, &run)?;
    let warm = docker(&sock, &config, &run)?;
    vm.kill();
    Ok(Run { to_api, cold, warm })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `## Docker machine` section; `floor_wall` is the floor's median
/// QEMU start→exit, the anchor of the boot row. Skipped, and said so in
/// `notes`, without a docker CLI.
pub fn section(
    cache: &Path,
    work: &Path,
    runs: usize,
    floor_wall: f64,
    notes: &mut Vec<String>,
) -> Result<String> {
    if Command::new("docker").arg("--version").output().is_err() {
        notes.push("Docker machine not measured: no docker CLI on this host".into());
        return Ok(String::new());
    }
    let out = work.join("docker-out");
    let manifest = Path::new(MANIFEST);
    timed_build_with(&[manifest], &[], &out, cache)?;
    let prefix = out.join("bench");
    // The trivial image: osk's demo package, as Docker loads it.
    let demo_tar = work.join("demo.tar");
    let demo = osk_e2e::pkg_build(cache, Path::new("pkgs/demo"), "amd64")?;
    let export = Command::new(osk_e2e::osk_bin()?)
        .args(["cache", "export", &demo, "--format", "docker-archive", "-o"])
        .arg(&demo_tar)
        .env("OSK_CACHE", cache)
        .status()?;
    ensure!(export.success(), "osk cache export {demo} failed");

    // KVM where the host has it and says it works (OSK_BENCH_KVM=1: on
    // this project's hosts /dev/kvm exists but hangs).
    let mut accels = vec![("tcg", "TCG")];
    if std::env::var_os("OSK_BENCH_KVM").is_some_and(|v| v == "1") && Path::new("/dev/kvm").exists()
    {
        accels.push(("kvm", "KVM"));
    } else {
        notes.push("Docker machine: no KVM row (set OSK_BENCH_KVM=1 where /dev/kvm works)".into());
    }
    let image = size(&with_suffix(&prefix, "-kernel")) + size(&with_suffix(&prefix, "-initrd.img"));
    let mut r = String::new();
    writeln!(r, "## Docker machine\n")?;
    writeln!(
        r,
        "`{MANIFEST}` ({} kernel + initrd), 1 vCPU, 2 GiB, a fresh 2 GiB data disk per boot (formatted at boot); the host's docker CLI through `--forward-socket`; median of {runs}.\n",
        mib(image)
    )?;
    writeln!(r, "| what | accel | time | anchor |\n|---|---|---|---|")?;
    let mut by_boot = Vec::new();
    for (accel, label) in accels {
        let mut all = Vec::new();
        for i in 0..runs.max(1) {
            eprintln!("docker machine ({label}): boot {}/{}", i + 1, runs);
            let dir = work.join(format!("docker-{accel}-{i}"));
            std::fs::create_dir_all(&dir)?;
            all.push(one_run(&prefix, &dir, &demo_tar, &demo, accel)?);
        }
        let to_api = median(all.iter().map(|r| r.to_api).collect());
        let cold = median(all.iter().map(|r| r.cold).collect());
        let warm = median(all.iter().map(|r| r.warm).collect());
        writeln!(
            r,
            "| `osk run qemu --detach --wait-sockets` → Docker API answering on the host socket | {label} | {to_api:.1} s | {:.1}× the floor's whole boot under TCG ({floor_wall:.1} s) |",
            to_api / floor_wall
        )?;
        writeln!(
            r,
            "| `docker run --rm` of osk's demo image (`busybox true`), cold: first run after `docker load` | {label} | {cold:.2} s | |"
        )?;
        writeln!(
            r,
            "| the same, warm | {label} | {warm:.2} s | {:.2}× cold |",
            warm / cold
        )?;
        by_boot.push(format!(
            "{label}: {}",
            all.iter()
                .map(|x| format!("{:.1} / {:.2} / {:.2} s", x.to_api, x.cold, x.warm))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    writeln!(
        r,
        "\nBoot by boot (to API / cold / warm): {}",
        by_boot.join("; ")
    )?;
    Ok(r)
}
