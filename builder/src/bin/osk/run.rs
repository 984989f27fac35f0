//! `osk run`: boot a build result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use osk_builder::arch::Arch;
use osk_builder::run::{
    self, Accel, Artifacts, BootImage, DiskSpec, Firmware, Follower, ForwardSocket, Forwarder,
    MetadataServer, Publish, QemuConfig, Share, ShareFs,
};

#[derive(Subcommand)]
pub enum RunCommand {
    /// Boot NAME-kernel + NAME-initrd.img (+ NAME-cmdline) in QEMU, serial console on this terminal.
    ///
    /// NAME may also be a file `osk build` wrote: an ISO (.iso) is attached as
    /// a CD-ROM (--as-disk: as a disk, the way a USB stick holding it is
    /// seen), a disk (.raw, .qcow2, .vhd, .vmdk) as a virtio disk; both boot
    /// under BIOS (SeaBIOS), or UEFI with --uefi; arm64 ones (read from the
    /// image, or --arch arm64) always through UEFI (AAVMF). A UKI (.efi) goes
    /// on a generated ESP and always boots through UEFI.
    ///
    /// Ctrl-a x quits, Ctrl-a c switches to the QEMU monitor. With --detach
    /// QEMU runs in the background: the console goes to STATE/console.log, the
    /// monitor listens on STATE/monitor.sock, the pid is in STATE/qemu.pid.
    Qemu(Box<QemuArgs>),
    /// Internal: the host half of a detached VM's --forward-socket; ends,
    /// removing its sockets, when the VM's QEMU does.
    #[command(hide = true)]
    Forward {
        /// The VM's state directory.
        #[arg(long)]
        state: PathBuf,
        /// The forwarded Docker socket whose containers' ports to follow (its guest path).
        #[arg(long, value_name = "GUEST_PATH")]
        follow_ports: Option<String>,
    },
    /// Internal: QEMU runs this per guest connection to the metadata
    /// service (`--metadata-server`), the connection on stdin and stdout.
    #[command(hide = true)]
    MetadataRelay {
        /// The server on the host, HOST:PORT.
        address: String,
    },
}

#[derive(Args)]
pub struct QemuArgs {
    /// Prefix of the build result (`out/minimal` boots out/minimal-kernel, out/minimal-initrd.img),
    /// or an ISO, disk image or UKI file (`out/minimal.iso`, `out/minimal.qcow2`, `out/minimal.efi`).
    #[arg(required_unless_present = "stop")]
    name: Option<PathBuf>,
    /// Stop the detached VM whose state directory is STATE instead of
    /// booting one: system_powerdown, up to --stop-timeout for the guest to
    /// shut down, then quit, then SIGKILL; then its forward helper and
    /// sockets go. A VM that already stopped is not an error.
    #[arg(long, value_name = "STATE", conflicts_with_all = [
        "name", "as_disk", "cpus", "mem", "disk", "publish", "forward_socket", "wait_sockets",
        "follow_ports", "share", "share_fs", "virtiofsd", "uefi", "data", "data_file", "metadata_server", "state", "qemu",
        "arch", "append", "detach", "no_reboot", "timeout", "print_command",
    ])]
    stop: Option<PathBuf>,
    /// With --stop: how long the guest has to power down before QEMU is told to quit [default: 60].
    #[arg(long, value_name = "SECONDS")]
    stop_timeout: Option<u64>,
    /// Attach the ISO given as NAME as a disk instead of a CD-ROM: the USB-stick path.
    #[arg(long)]
    as_disk: bool,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = QemuConfig::DEFAULT_CPUS)]
    cpus: u32,
    /// Memory, in MiB or with a K/M/G suffix.
    #[arg(long, default_value = "1024", value_parser = parse_mem)]
    mem: u64,
    /// Disk as [PATH][,size=SIZE][,format=raw|qcow2]; created if missing (default STATE/diskN.raw, 1G). Repeatable.
    #[arg(long, value_parser = parse_from::<DiskSpec>)]
    disk: Vec<DiskSpec>,
    /// Forward a host port to the guest: [HOSTIP:]HOST:GUEST[/tcp|/udp] (HOSTIP defaults to 127.0.0.1). Repeatable.
    #[arg(long, value_parser = parse_from::<Publish>)]
    publish: Vec<Publish>,
    /// Make a guest unix socket a unix socket on the host, mode 0600:
    /// HOST_PATH:GUEST_PATH. The guest runs the `sockfwd` package. Repeatable.
    #[arg(long, value_parser = parse_from::<ForwardSocket>, value_name = "HOST_PATH:GUEST_PATH")]
    forward_socket: Vec<ForwardSocket>,
    /// Wait up to SECONDS until every --forward-socket's guest socket
    /// answers. With --detach a socket still silent then is an error, and
    /// the VM is stopped; in the foreground it is logged.
    #[arg(long, value_name = "SECONDS", requires = "forward_socket")]
    wait_sockets: Option<u64>,
    /// Make the ports Docker's containers publish (`docker run -p 8080:80`)
    /// reachable on the host's 127.0.0.1, for as long as each container
    /// runs. GUEST_PATH is the guest path of the --forward-socket of
    /// Docker's API (/var/run/docker.sock). With --detach the forward helper
    /// does it.
    #[arg(long, value_name = "GUEST_PATH", requires = "forward_socket")]
    follow_ports: Option<String>,
    /// Share a host folder: HOST_DIR[:GUEST_DIR][,ro], over virtiofs or
    /// virtio-9p (see --share-fs). It is mounted in the guest at GUEST_DIR,
    /// by default the host path itself. Repeatable.
    #[arg(long, value_parser = parse_from::<Share>, value_name = "HOST_DIR[:GUEST_DIR][,ro]")]
    share: Vec<Share>,
    /// How --share folders reach the guest: virtiofs (a virtiofsd per
    /// share, started and ended with the VM), 9p (built into QEMU), or auto:
    /// virtiofs when a usable virtiofsd is found, else 9p. A read-only share
    /// goes over 9p unless the virtiofsd enforces read-only itself.
    #[arg(long, env = "OSK_SHARE_FS", default_value = "auto", value_parser = parse_from::<ShareFs>)]
    share_fs: ShareFs,
    /// The virtiofsd to run [default: virtiofsd on PATH, /usr/libexec/virtiofsd, /usr/lib/qemu/virtiofsd].
    #[arg(long, env = "OSK_VIRTIOFSD", value_name = "PATH")]
    virtiofsd: Option<PathBuf>,
    /// Accelerator: auto picks kvm when /dev/kvm is usable, else tcg.
    #[arg(long, env = "OSK_QEMU_ACCEL", default_value = "auto", value_parser = parse_from::<Accel>)]
    accel: Accel,
    /// Boot through UEFI firmware (Debian's ovmf, or qemu-efi-aarch64 for arm64) instead of BIOS.
    #[arg(long)]
    uefi: bool,
    /// Metadata for the guest, attached as a CD-ROM (ISO 9660, label CIDATA, files config and user-data).
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// Like --data, read from a file.
    #[arg(long)]
    data_file: Option<PathBuf>,
    /// Be a cloud: the guest reaches this server on the host (http://HOST[:PORT]/ or
    /// HOST:PORT) as the metadata service at 169.254.169.254, and its network moves
    /// to 169.254.169.0/24. See docs/openstack.md.
    #[arg(long, value_parser = parse_from::<MetadataServer>, value_name = "URL")]
    metadata_server: Option<MetadataServer>,
    /// Directory for disks, the monitor socket, console log and pid file [default: NAME-state].
    #[arg(long)]
    state: Option<PathBuf>,
    /// QEMU binary (a path, or a name looked up on PATH) [default: qemu-system-x86_64,
    /// or qemu-system-aarch64 for an arm64 guest].
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// The guest's architecture, amd64 or arm64 [default: read from NAME-kernel, or
    /// from the boot image's UEFI loader].
    #[arg(long)]
    arch: Option<Arch>,
    /// Extra kernel command-line arguments, after NAME-cmdline's.
    #[arg(long, allow_hyphen_values = true)]
    append: Option<String>,
    /// Run in the background (see above).
    #[arg(long)]
    detach: bool,
    /// Make a guest reboot exit QEMU instead of restarting the VM.
    #[arg(long)]
    no_reboot: bool,
    /// Stop the VM after this many seconds (foreground only).
    #[arg(long, conflicts_with = "detach")]
    timeout: Option<u64>,
    /// Print the QEMU command line before starting it.
    #[arg(long)]
    print_command: bool,
}

fn parse_from<T: std::str::FromStr<Err = run::Error>>(s: &str) -> Result<T, run::Error> {
    s.parse()
}

/// What `kernel` was built for; amd64 when it is missing (`prepare` says so).
fn kernel_arch(kernel: &Path) -> anyhow::Result<Arch> {
    let mut head = Vec::with_capacity(0x1000);
    match std::fs::File::open(kernel) {
        Ok(f) => {
            use std::io::Read;
            f.take(0x1000)
                .read_to_end(&mut head)
                .with_context(|| format!("reading {}", kernel.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arch::Amd64),
        Err(e) => return Err(e).with_context(|| format!("reading {}", kernel.display())),
    }
    Ok(
        Arch::of_kernel(&head).ok_or_else(|| run::Error::UnknownKernel {
            path: kernel.to_path_buf(),
        })?,
    )
}

fn parse_mem(s: &str) -> anyhow::Result<u64> {
    run::parse_size(s)
        .map(|b| b >> 20)
        .filter(|&mib| mib > 0)
        .ok_or_else(|| {
            anyhow::anyhow!("{s:?} is not a memory size (MiB, or a number with K/M/G suffix)")
        })
}

pub fn run(cmd: RunCommand) -> anyhow::Result<()> {
    match cmd {
        RunCommand::Qemu(args) => qemu(*args),
        RunCommand::Forward {
            state,
            follow_ports,
        } => forward_helper(&state, follow_ports.as_deref()),
        RunCommand::MetadataRelay { address } => {
            // stderr is the guest's connection too: nothing may be logged.
            let _ = run::relay(&address, std::io::stdin(), std::io::stdout().lock());
            // The guest's half may stay open: do not wait for it.
            std::process::exit(0)
        }
    }
}

fn qemu(args: QemuArgs) -> anyhow::Result<()> {
    if let Some(state) = &args.stop {
        return stop(state, Duration::from_secs(args.stop_timeout.unwrap_or(60)));
    }
    // clap drops `requires = "stop"` since --stop conflicts with NAME.
    anyhow::ensure!(
        args.stop_timeout.is_none(),
        "--stop-timeout goes with --stop STATE; to stop a booting VM after some time, use --timeout"
    );
    let name = args.name.clone().context("NAME is required")?;
    if let Some(guest) = &args.follow_ports {
        run::api_socket(&args.forward_socket, guest)?;
    }
    let image = if name.is_file() {
        let image = BootImage::detect(&name)?;
        Some(if args.as_disk { image.as_disk() } else { image })
    } else {
        anyhow::ensure!(
            !args.as_disk,
            "--as-disk needs an ISO file as NAME, and {} is not a file",
            name.display()
        );
        None
    };
    let state = args.state.clone().unwrap_or_else(|| {
        // out/minimal.qcow2 keeps its state in out/minimal-state, as out/minimal does.
        let base = match image {
            Some(_) => name.with_extension(""),
            None => name.clone(),
        };
        let mut s = base.into_os_string();
        s.push("-state");
        PathBuf::from(s)
    });
    let mut uefi = args.uefi;
    if let Some(image) = &image {
        anyhow::ensure!(
            args.append.is_none(),
            "--append cannot change {}: its kernel command line is built in (osk build's kernel.cmdline)",
            name.display()
        );
        if !uefi && matches!(image, BootImage::Uki(_)) {
            tracing::info!(
                "{} is a UKI, which only UEFI firmware starts",
                name.display()
            );
            uefi = true;
        }
        tracing::debug!("boot image {image:?}");
    }
    let artifacts = Artifacts::from_prefix(&name);
    let arch = match (args.arch, &image) {
        (Some(a), _) => a,
        (None, Some(image)) => image.arch()?.unwrap_or(Arch::Amd64),
        (None, None) => kernel_arch(&artifacts.kernel)?,
    };
    if image.is_some() && !uefi && !arch.has_bios() {
        tracing::info!(
            "{} is for {arch}, whose firmware is UEFI (AAVMF)",
            name.display()
        );
        uefi = true;
    }
    let qemu = args
        .qemu
        .clone()
        .unwrap_or_else(|| PathBuf::from(arch.qemu_system()));
    let mut cfg = QemuConfig::new(artifacts, state)
        .arch(arch)
        .qemu(&qemu)
        .cpus(args.cpus)
        .mem_mib(args.mem)
        .accel(args.accel)
        .detach(args.detach)
        .reboot(!args.no_reboot);
    if uefi {
        cfg = cfg.firmware(Firmware::debian_uefi(arch));
    }
    if let Some(image) = image {
        cfg = cfg.image(image);
    }
    for d in args.disk {
        cfg = cfg.disk(d);
    }
    for p in args.publish {
        cfg = cfg.publish(p);
    }
    for s in args.share {
        cfg = cfg.share(s);
    }
    cfg = cfg.share_fs(args.share_fs, args.virtiofsd);
    for f in args.forward_socket {
        cfg = cfg.forward_socket(f);
    }
    if let Some(a) = args.append {
        cfg = cfg.append(a);
    }
    if let Some(server) = args.metadata_server {
        let me =
            std::env::current_exe().context("locating this osk binary (the metadata relay)")?;
        cfg = cfg.metadata_server(server, me);
    }
    if let Some(d) = args.data {
        cfg = cfg.data(d.into_bytes());
    } else if let Some(path) = &args.data_file {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading --data-file {}", path.display()))?;
        cfg = cfg.data(bytes);
    }

    let prepared = run::prepare(cfg)?;
    tracing::info!(
        accel = %prepared.config.accel,
        state = %prepared.config.state_dir.display(),
        "booting {}",
        name.display()
    );
    if args.print_command {
        eprintln!("{}", prepared.display());
    }
    if args.detach {
        let vm = run::run_detached(&prepared)?;
        println!("pid {}", vm.pid);
        println!("console {}", vm.console_log.display());
        println!("monitor {}", vm.monitor_socket.display());
        let follow = args.follow_ports.as_deref();
        if let Err(e) = start_forwards(&prepared.config, &vm, args.wait_sockets, follow) {
            // Nothing is left running: QEMU goes, and the helper with it.
            stop_detached(&vm);
            return Err(e);
        }
        print!("{}", prepared.config.reach());
        return Ok(());
    }
    // In the foreground the forwards are threads of this process.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forwarder = if prepared.config.forwards.is_empty() {
        None
    } else {
        let f = Forwarder::bind(
            &prepared.config.forward_pairs(),
            prepared.config.forward_transport,
        )?;
        let d = done.clone();
        Some(std::thread::spawn(move || {
            f.serve_while(|| !d.load(std::sync::atomic::Ordering::SeqCst))
        }))
    };
    if let Some(guest) = &args.follow_ports {
        let api = run::api_socket(&prepared.config.forwards, guest)?.to_path_buf();
        let ready = api_answers(
            &prepared.config.forward_pairs(),
            prepared.config.forward_transport,
            guest,
        );
        let mut follower = Follower::new(api, prepared.config.monitor_socket()).ready_when(ready);
        let d = done.clone();
        std::thread::spawn(move || follower.run(|| !d.load(std::sync::atomic::Ordering::SeqCst)));
    }
    if let Some(seconds) = args.wait_sockets {
        let (forwards, console) = (
            prepared.config.forward_pairs(),
            PathBuf::from("the console"),
        );
        let transport = prepared.config.forward_transport;
        let d = done.clone();
        std::thread::spawn(move || {
            let alive = || !d.load(std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = run::wait_answering(
                &forwards,
                transport,
                Duration::from_secs(seconds),
                alive,
                &console,
            ) {
                tracing::warn!("{e}");
            }
        });
    }
    let exit = run::run_attached(&prepared, args.timeout.map(Duration::from_secs));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(t) = forwarder {
        let _ = t.join();
    }
    let exit = exit?;
    anyhow::ensure!(
        !exit.timed_out,
        "VM stopped after --timeout {} s",
        args.timeout.unwrap_or_default()
    );
    anyhow::ensure!(exit.status.success(), "QEMU exited with {}", exit.status);
    Ok(())
}

/// `osk run qemu --stop STATE`.
fn stop(state: &Path, timeout: Duration) -> anyhow::Result<()> {
    let how = run::stop(state, timeout)?;
    let what = match how {
        run::Stopped::PoweredDown => "the guest powered down",
        run::Stopped::Quit => "QEMU quit (the guest did not power down in time)",
        run::Stopped::Killed => "QEMU was killed (it ignored quit)",
        run::Stopped::AlreadyStopped => "no VM was running (already stopped)",
    };
    println!("stopped {}: {what}", state.display());
    Ok(())
}

/// Starts the forward helper of a detached VM, then with `wait` waits that
/// long for the guest sockets to answer.
fn start_forwards(
    cfg: &QemuConfig,
    vm: &run::Detached,
    wait: Option<u64>,
    follow_ports: Option<&str>,
) -> anyhow::Result<()> {
    if cfg.forwards.is_empty() {
        return Ok(());
    }
    start_forward_helper(cfg, follow_ports)?;
    if let Some(seconds) = wait {
        run::wait_answering(
            &cfg.forward_pairs(),
            cfg.forward_transport,
            Duration::from_secs(seconds),
            || vm.is_running(),
            &vm.console_log,
        )?;
    }
    Ok(())
}

/// Stops a detached VM and waits (a few seconds) for its forward helper,
/// which ends with QEMU, to remove its sockets.
fn stop_detached(vm: &run::Detached) {
    vm.kill();
    let helper = vm.state_dir.join(run::FORWARD_PID);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while helper.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // It tells how to reach a VM that is not there.
    let _ = std::fs::remove_file(vm.state_dir.join(run::REACH));
}

/// Starts `osk run forward` for a detached VM, and returns once its host
/// sockets listen, so that the caller can use them at once.
fn start_forward_helper(cfg: &QemuConfig, follow_ports: Option<&str>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().context("locating this osk binary (the forward helper)")?;
    let log_path = cfg.state_dir.join(run::FORWARD_LOG);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(me);
    cmd.args(["run", "forward", "--state"]).arg(&cfg.state_dir);
    if let Some(guest) = follow_ports {
        cmd.args(["--follow-ports", guest]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for this command spares it.
        .process_group(0)
        .spawn()
        .context("starting the forward helper")?;
    // The helper writes its pid once every socket listens. Connecting to a
    // socket instead would be a client the guest cannot answer yet.
    let pid_path = cfg.state_dir.join(run::FORWARD_PID);
    let me = child.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_path).map_or(true, |p| p.trim() != me) {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the forward helper exited ({status}) before its sockets listened; see {}",
                log_path.display()
            );
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the forward helper's sockets did not listen within 10 s; see {}",
            log_path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Whether the guest socket at `guest` answers the handshake: the
/// follower's probe before it connects.
fn api_answers(
    forwards: &[(ForwardSocket, u16)],
    transport: run::Transport,
    guest: &str,
) -> impl Fn() -> bool + Send + 'static {
    let port = forwards
        .iter()
        .find(|(f, _)| f.guest == guest)
        .map(|(_, p)| *p);
    move || port.is_some_and(|p| run::handshake(transport, p, Duration::from_secs(5)).is_ok())
}

/// Writes `text` to `path` whole: under another name, then renamed.
fn write_replacing(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `osk run forward`: serves a detached VM's forwards, and with
/// `follow_ports` follows its containers' ports, while its QEMU runs.
fn forward_helper(state: &std::path::Path, follow_ports: Option<&str>) -> anyhow::Result<()> {
    let table_path = state.join(run::FORWARD_TABLE);
    let text = std::fs::read_to_string(&table_path)
        .with_context(|| format!("reading {}", table_path.display()))?;
    let (pairs, transport) = run::parse_helper_table(&text)
        .with_context(|| format!("{} is not a forward table", table_path.display()))?;
    let pid_path = state.join(run::PID_FILE);
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .with_context(|| format!("reading {}", pid_path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", pid_path.display()))?;
    let api = match follow_ports {
        Some(guest) => {
            let forwards: Vec<ForwardSocket> = pairs.iter().map(|(f, _)| f.clone()).collect();
            Some((guest, run::api_socket(&forwards, guest)?.to_path_buf()))
        }
        None => None,
    };
    let forwarder = Forwarder::bind(&pairs, transport)?;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if let Some((guest, api)) = api {
        // STATE/reach: what `osk run qemu --detach` wrote, then the ports
        // that follow the containers.
        let reach = state.join(run::REACH);
        let fixed = std::fs::read_to_string(&reach).unwrap_or_default();
        let ready = api_answers(&pairs, transport, guest);
        let mut follower = Follower::new(api, state.join(run::MONITOR_SOCKET))
            .ready_when(ready)
            .on_change(move |ports| {
                let text: String = std::iter::once(fixed.clone())
                    .chain(ports.iter().map(|p| p.reach_line()))
                    .collect();
                if let Err(e) = write_replacing(&reach, &text) {
                    tracing::warn!("updating {}: {e}", reach.display());
                }
            });
        let p = proc.clone();
        std::thread::spawn(move || follower.run(|| p.exists()));
    }
    let own = state.join(run::FORWARD_PID);
    std::fs::write(&own, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", own.display()))?;
    forwarder.serve_while(|| proc.exists());
    let _ = std::fs::remove_file(&own);
    Ok(())
}
