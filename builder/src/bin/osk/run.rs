//! `osk run`: boot a build result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use osk_builder::arch::Arch;
use osk_builder::run::{
    self, Accel, Artifacts, BootImage, DiskSpec, Firmware, MetadataServer, Publish, QemuConfig,
    Share,
};

#[derive(Subcommand)]
pub enum RunCommand {
    /// Boot NAME-kernel + NAME-initrd.img (+ NAME-cmdline) in QEMU, serial console on this terminal.
    ///
    /// NAME may also be a file `osk build` wrote: a disk (.raw, .qcow2, .vhd,
    /// .vmdk) is attached as a virtio disk, a UKI (.efi) on a generated ESP;
    /// both boot through UEFI (OVMF), since their BIOS boot is still to come.
    ///
    /// Ctrl-a x quits, Ctrl-a c switches to the QEMU monitor. With --detach
    /// QEMU runs in the background: the console goes to STATE/console.log, the
    /// monitor listens on STATE/monitor.sock, the pid is in STATE/qemu.pid.
    Qemu(Box<QemuArgs>),
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
    /// or a disk image or UKI file (`out/minimal.qcow2`, `out/minimal.efi`).
    name: PathBuf,
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
    /// Share a host folder: HOST_DIR[:GUEST_DIR][,ro], over virtio-9p. It is
    /// mounted in the guest at GUEST_DIR, by default the host path itself. Repeatable.
    #[arg(long, value_parser = parse_from::<Share>, value_name = "HOST_DIR[:GUEST_DIR][,ro]")]
    share: Vec<Share>,
    /// Accelerator: auto picks kvm when /dev/kvm is usable, else tcg.
    #[arg(long, env = "OSK_QEMU_ACCEL", default_value = "auto", value_parser = parse_from::<Accel>)]
    accel: Accel,
    /// Boot through UEFI firmware (Debian's ovmf package) instead of BIOS.
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
    /// The guest's architecture, amd64 or arm64 [default: read from NAME-kernel].
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
    let mut head = Vec::with_capacity(0x240);
    match std::fs::File::open(kernel) {
        Ok(f) => {
            use std::io::Read;
            f.take(0x240)
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
        RunCommand::MetadataRelay { address } => {
            // stderr is the guest's connection too: nothing may be logged.
            let _ = run::relay(&address, std::io::stdin(), std::io::stdout().lock());
            // The guest's half may stay open: do not wait for it.
            std::process::exit(0)
        }
    }
}

fn qemu(args: QemuArgs) -> anyhow::Result<()> {
    let image = if args.name.is_file() {
        Some(BootImage::detect(&args.name)?)
    } else {
        None
    };
    let state = args.state.clone().unwrap_or_else(|| {
        // out/minimal.qcow2 keeps its state in out/minimal-state, as out/minimal does.
        let base = match image {
            Some(_) => args.name.with_extension(""),
            None => args.name.clone(),
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
            args.name.display()
        );
        if !uefi {
            tracing::info!(
                "{} boots through UEFI only for now (BIOS boot of osk's disks is still to come): using OVMF",
                args.name.display()
            );
            uefi = true;
        }
        tracing::debug!("boot image {image:?}");
    }
    let artifacts = Artifacts::from_prefix(&args.name);
    let arch = match (args.arch, &image) {
        (Some(a), _) => a,
        (None, Some(_)) => Arch::Amd64,
        (None, None) => kernel_arch(&artifacts.kernel)?,
    };
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
        cfg = cfg.firmware(Firmware::debian_ovmf());
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
        args.name.display()
    );
    if args.print_command {
        eprintln!("{}", prepared.display());
    }
    if args.detach {
        let vm = run::run_detached(&prepared)?;
        println!("pid {}", vm.pid);
        println!("console {}", vm.console_log.display());
        println!("monitor {}", vm.monitor_socket.display());
        return Ok(());
    }
    let exit = run::run_attached(&prepared, args.timeout.map(Duration::from_secs))?;
    anyhow::ensure!(
        !exit.timed_out,
        "VM stopped after --timeout {} s",
        args.timeout.unwrap_or_default()
    );
    anyhow::ensure!(exit.status.success(), "QEMU exited with {}", exit.status);
    Ok(())
}
