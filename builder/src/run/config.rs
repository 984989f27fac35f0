//! Options of a VM and the QEMU argv they make. Pure: nothing here touches the
//! file system, so the argv of every flag combination is unit-tested.

use std::ffi::OsString;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::names::{
    CONSOLE_LOG, METADATA_ISO, MONITOR_SOCKET, PID_FILE, SHARE_TABLE, SOCKET_TABLE, UEFI_VARS,
};
use super::{Error, Result};
use crate::arch::Arch;

/// The CPU under TCG: every extension QEMU emulates (so x86-64-v2/v3
/// binaries run), except fast `rep movsb`/`rep stosb` (ERMS, FSRM). TCG runs
/// a `rep` string instruction one element per iteration; told the CPU has
/// them, the kernel and glibc copy and clear memory a byte at a time.
/// Measured: the kernel unpacks a 96 MB initramfs 0.6-0.9 s faster without.
pub const TCG_CPU: &str = "max,-erms,-fsrm";

/// Where Debian's `ovmf` package puts the UEFI firmware.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// The pristine UEFI variable store each VM gets a copy of.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// The same for arm64 guests, from Debian's `qemu-efi-aarch64` (AAVMF).
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// The files `osk build` writes for the `kernel+initrd` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Path of `NAME-cmdline` (may be absent: then the command line is empty).
    pub cmdline: PathBuf,
}

impl Artifacts {
    /// The artifacts of `osk build --name NAME` in a directory, given as the
    /// prefix `DIR/NAME` (so `out/minimal` means `out/minimal-kernel`, ...).
    pub fn from_prefix(prefix: &Path) -> Artifacts {
        let with = |suffix: &str| {
            let mut s = prefix.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        Artifacts {
            kernel: with("-kernel"),
            initrd: with("-initrd.img"),
            cmdline: with("-cmdline"),
        }
    }
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` can be opened read-write, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for Accel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Accel> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(invalid("--accel", s, "expected auto, kvm or tcg")),
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Disk image formats `osk run` can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFormat {
    /// A sparse file; created without any tool.
    #[default]
    Raw,
    /// Created with `qemu-img`.
    Qcow2,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// One `--disk [PATH][,size=SIZE][,format=raw|qcow2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Without a path the disk is `STATE/diskN.FORMAT`.
    pub path: Option<PathBuf>,
    /// Bytes, used only when the disk has to be created.
    pub size: u64,
    pub format: DiskFormat,
}

impl DiskSpec {
    /// Size of a disk created without `size=`.
    pub const DEFAULT_SIZE: u64 = 1 << 30;
}

impl FromStr for DiskSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<DiskSpec> {
        let mut spec = DiskSpec {
            path: None,
            size: DiskSpec::DEFAULT_SIZE,
            format: DiskFormat::Raw,
        };
        for (i, part) in s.split(',').enumerate() {
            match part.split_once('=') {
                Some(("size", v)) => {
                    spec.size = parse_size(v).ok_or_else(|| {
                        invalid("--disk", s, "size= wants a number with an optional K, M, G or T suffix (no suffix: MiB)")
                    })?
                }
                Some(("format", "raw")) => spec.format = DiskFormat::Raw,
                Some(("format", "qcow2")) => spec.format = DiskFormat::Qcow2,
                Some(("format", _)) => return Err(invalid("--disk", s, "format= must be raw or qcow2")),
                Some((key, _)) => {
                    return Err(invalid("--disk", s, &format!("unknown key {key:?} (known: size, format)")))
                }
                None if i == 0 && !part.is_empty() => spec.path = Some(PathBuf::from(part)),
                None => return Err(invalid("--disk", s, "only the first field may be a bare path")),
            }
        }
        Ok(spec)
    }
}

/// Parses `512`, `512M`, `2G`, `1T`, `64K` (a bare number is MiB) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        (i, 'T' | 't') => (&s[..i], 40),
        _ => (s, 20),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift).filter(|&b| b > 0)
}

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One `--publish [HOSTIP:]HOST:GUEST[/tcp|/udp]`: a QEMU user-network port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// Host address to listen on; loopback unless given, so a dev VM is not
    /// reachable from the network by accident.
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

impl FromStr for Publish {
    type Err = Error;
    fn from_str(s: &str) -> Result<Publish> {
        let bad = |why: &str| invalid("--publish", s, why);
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad("protocol must be tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let fields: Vec<&str> = ports.split(':').collect();
        let (ip, host, guest) = match fields[..] {
            [h, g] => (Ipv4Addr::LOCALHOST, h, g),
            [ip, h, g] => (
                ip.parse()
                    .map_err(|_| bad("host address must be an IPv4 address"))?,
                h,
                g,
            ),
            _ => return Err(bad("expected [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]")),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
        Ok(Publish {
            host_ip: ip,
            host_port: port(host).ok_or_else(|| bad("host port must be 1-65535"))?,
            guest_port: port(guest).ok_or_else(|| bad("guest port must be 1-65535"))?,
            protocol,
        })
    }
}

impl Publish {
    /// The `port` line of `STATE/reach`.
    pub fn reach_line(&self) -> String {
        format!(
            "port\t{}:{}\t{}/{}\n",
            self.host_ip,
            self.host_port,
            self.guest_port,
            self.protocol.as_str()
        )
    }

    fn hostfwd(&self) -> String {
        format!(
            "hostfwd={}:{}:{}-:{}",
            self.protocol.as_str(),
            self.host_ip,
            self.host_port,
            self.guest_port
        )
    }
}

/// The user network's range when a metadata server is forwarded: libslirp
/// forwards guest connections only to addresses inside its network, and
/// the clouds' metadata service is at 169.254.169.254.
pub const METADATA_NET: &str = "169.254.169.0/24";
/// Where clouds serve metadata, as the guest sees it.
pub const METADATA_ADDR: &str = "169.254.169.254:80";

/// One `--metadata-server http://HOST[:PORT][/]` or `HOST:PORT`: a server on
/// the host the guest reaches as the cloud metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataServer {
    pub host: String,
    pub port: u16,
}

impl FromStr for MetadataServer {
    type Err = Error;
    fn from_str(s: &str) -> Result<MetadataServer> {
        let bad = |why: &str| invalid("--metadata-server", s, why);
        let (authority, default_port) =
            match s.split_once("://") {
                Some(("http", rest)) => (rest.strip_suffix('/').unwrap_or(rest), Some(80)),
                Some(_) => return Err(bad(
                    "only http:// is forwarded (the guest speaks plain HTTP to 169.254.169.254)",
                )),
                None => (s, None),
            };
        if authority.contains(['/', '?', '#', '@', ','])
            || authority.chars().any(char::is_whitespace)
        {
            return Err(bad(
                "give the server's root: http://HOST[:PORT]/ or HOST:PORT, without a path",
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("port must be 1-65535"))?,
            ),
            _ => (
                authority,
                default_port.ok_or_else(|| bad("expected HOST:PORT or http://HOST[:PORT]/"))?,
            ),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(MetadataServer {
            host: host.to_string(),
            port,
        })
    }
}

impl MetadataServer {
    /// `HOST:PORT`, as the relay connects to it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Firmware the VM starts with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Firmware {
    /// QEMU's SeaBIOS loading `-kernel` directly.
    #[default]
    Bios,
    /// OVMF; the kernel is still passed with `-kernel` and booted through its EFI stub.
    Uefi {
        code: PathBuf,
        /// Template copied to `STATE/OVMF_VARS.fd` so the VM may write to it.
        vars_template: PathBuf,
    },
}

impl Firmware {
    /// OVMF from Debian's `ovmf` package.
    pub fn debian_ovmf() -> Firmware {
        Firmware::Uefi {
            code: OVMF_CODE.into(),
            vars_template: OVMF_VARS.into(),
        }
    }

    /// Debian's UEFI firmware for `arch`: OVMF, or AAVMF for arm64.
    pub fn debian_uefi(arch: Arch) -> Firmware {
        match arch {
            Arch::Amd64 => Firmware::debian_ovmf(),
            Arch::Arm64 => Firmware::Uefi {
                code: AAVMF_CODE.into(),
                vars_template: AAVMF_VARS.into(),
            },
        }
    }
}

/// Everything needed to start one VM. Build it with [`QemuConfig::new`] and
/// the setters, then [`crate::run::prepare`] it.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub artifacts: Artifacts,
    /// Contents of `NAME-cmdline`, read by `prepare`.
    pub cmdline: String,
    /// Extra kernel arguments appended after the built command line.
    pub append: Option<String>,
    pub state_dir: PathBuf,
    pub cpus: u32,
    pub mem_mib: u64,
    /// Must be resolved (`Kvm` or `Tcg`) before [`QemuConfig::argv`]; `Auto` means TCG there.
    pub accel: Accel,
    pub firmware: Firmware,
    pub disks: Vec<DiskSpec>,
    pub publish: Vec<Publish>,
    /// Host folders over virtio-9p or virtiofs (`--share`).
    pub shares: Vec<super::Share>,
    /// `--share-fs`: decided per share by `prepare`.
    pub share_fs: super::ShareFs,
    /// `--virtiofsd`: the daemon to use instead of looking for one.
    pub virtiofsd_program: Option<PathBuf>,
    /// The daemon the virtiofs shares use; found by `prepare`.
    pub virtiofsd: Option<super::Virtiofsd>,
    /// Guest unix sockets on the host (`--forward-socket`).
    pub forwards: Vec<super::ForwardSocket>,
    /// The port the host dials for each forward (a loopback port, or the
    /// guest's vsock port); chosen by `prepare`.
    pub forward_ports: Vec<u16>,
    /// How the host reaches the guest's sockfwd; chosen by `prepare`.
    pub forward_transport: super::Transport,
    /// Metadata for the guest, written to `STATE/metadata.iso` and attached as a CD-ROM.
    pub data: Option<Vec<u8>>,
    pub detach: bool,
    /// Let a guest reboot restart the VM; when false a reboot makes QEMU exit.
    pub reboot: bool,
    /// Boot this disk image or UKI through the firmware instead of `artifacts`.
    pub image: Option<super::BootImage>,
    /// Forward the guest's 169.254.169.254:80 to this server on the host.
    pub metadata_server: Option<MetadataServer>,
    /// The program QEMU runs per forwarded connection: this `osk`, as
    /// `osk run metadata-relay HOST:PORT`.
    pub relay_program: PathBuf,
    /// The guest's architecture: QEMU's machine, CPU and serial console follow it.
    pub arch: Arch,
}

impl QemuConfig {
    pub const DEFAULT_CPUS: u32 = 1;
    pub const DEFAULT_MEM_MIB: u64 = 1024;

    pub fn new(artifacts: Artifacts, state_dir: impl Into<PathBuf>) -> QemuConfig {
        QemuConfig {
            qemu: PathBuf::from(super::names::QEMU_BINARY),
            artifacts,
            cmdline: String::new(),
            append: None,
            state_dir: state_dir.into(),
            cpus: Self::DEFAULT_CPUS,
            mem_mib: Self::DEFAULT_MEM_MIB,
            accel: Accel::Auto,
            firmware: Firmware::Bios,
            disks: Vec::new(),
            publish: Vec::new(),
            shares: Vec::new(),
            share_fs: super::ShareFs::default(),
            virtiofsd_program: None,
            virtiofsd: None,
            forwards: Vec::new(),
            forward_ports: Vec::new(),
            forward_transport: super::Transport::UserNet,
            data: None,
            detach: false,
            reboot: true,
            image: None,
            metadata_server: None,
            relay_program: PathBuf::from("osk"),
            arch: Arch::Amd64,
        }
    }

    /// The guest's architecture (also picks the QEMU binary unless `--qemu` named one).
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// Forwards the guest's metadata service to `server`, through
    /// `relay_program` (the running `osk`).
    pub fn metadata_server(
        mut self,
        server: MetadataServer,
        relay_program: impl Into<PathBuf>,
    ) -> Self {
        self.metadata_server = Some(server);
        self.relay_program = relay_program.into();
        self
    }

    pub fn image(mut self, image: super::BootImage) -> Self {
        self.image = Some(image);
        self
    }

    pub fn qemu(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu = path.into();
        self
    }
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }
    pub fn mem_mib(mut self, mib: u64) -> Self {
        self.mem_mib = mib;
        self
    }
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }
    pub fn firmware(mut self, fw: Firmware) -> Self {
        self.firmware = fw;
        self
    }
    pub fn disk(mut self, disk: DiskSpec) -> Self {
        self.disks.push(disk);
        self
    }
    pub fn share(mut self, s: super::Share) -> Self {
        self.shares.push(s);
        self
    }

    pub fn share_fs(mut self, fs: super::ShareFs, virtiofsd: Option<PathBuf>) -> Self {
        self.share_fs = fs;
        self.virtiofsd_program = virtiofsd;
        self
    }

    pub fn forward_socket(mut self, f: super::ForwardSocket) -> Self {
        self.forwards.push(f);
        self
    }

    /// Each forward's host socket and loopback port, once `prepare` chose the ports.
    pub fn forward_pairs(&self) -> Vec<(super::ForwardSocket, u16)> {
        self.forwards
            .iter()
            .cloned()
            .zip(self.forward_ports.iter().copied())
            .collect()
    }

    /// How to reach the VM from the host, as `STATE/reach` holds it: one
    /// line per forwarded socket (`socket HOST_PATH GUEST_PATH`) and per
    /// published port (`port HOSTIP:PORT GUESTPORT/PROTO`), fields separated
    /// by tabs.
    pub fn reach(&self) -> String {
        let mut out = String::new();
        for (f, _) in self.forward_pairs() {
            out.push_str(&format!("socket\t{}\t{}\n", f.host.display(), f.guest));
        }
        for p in &self.publish {
            out.push_str(&p.reach_line());
        }
        out
    }

    /// The file holding the guest's share table (see `osk_layout::share`).
    pub fn share_table(&self) -> PathBuf {
        self.state_dir.join(SHARE_TABLE)
    }

    pub fn publish(mut self, p: Publish) -> Self {
        self.publish.push(p);
        self
    }
    pub fn data(mut self, data: Vec<u8>) -> Self {
        self.data = Some(data);
        self
    }
    pub fn append(mut self, args: impl Into<String>) -> Self {
        self.append = Some(args.into());
        self
    }
    pub fn detach(mut self, yes: bool) -> Self {
        self.detach = yes;
        self
    }
    pub fn reboot(mut self, yes: bool) -> Self {
        self.reboot = yes;
        self
    }

    /// Where the `index`-th disk lives: its own path, or `STATE/diskN.FORMAT`.
    pub fn disk_path(&self, index: usize) -> PathBuf {
        let d = &self.disks[index];
        d.path.clone().unwrap_or_else(|| {
            self.state_dir
                .join(format!("disk{index}.{}", d.format.as_str()))
        })
    }

    pub fn monitor_socket(&self) -> PathBuf {
        self.state_dir.join(MONITOR_SOCKET)
    }
    pub fn console_log(&self) -> PathBuf {
        self.state_dir.join(CONSOLE_LOG)
    }
    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join(PID_FILE)
    }

    /// The kernel command line: the built one, then `--append`; a serial
    /// console is added when neither names one, since that is where `osk run`
    /// shows the guest. An arm64 guest's serial port is the PL011 `ttyAMA0`:
    /// it is added last (the console programs write to) when the line names
    /// only x86's `ttyS0`, as manifests written for amd64 do.
    pub fn kernel_cmdline(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        let built = self.cmdline.trim();
        let extra = self.append.as_deref().map(str::trim).unwrap_or("");
        let consoles: Vec<&str> = built
            .split_whitespace()
            .chain(extra.split_whitespace())
            .filter_map(|a| a.strip_prefix("console="))
            .collect();
        let serial = match self.arch {
            Arch::Amd64 => "console=ttyS0",
            Arch::Arm64 => "console=ttyAMA0",
        };
        if consoles.is_empty() {
            parts.push(serial);
        }
        parts.extend([built, extra].into_iter().filter(|s| !s.is_empty()));
        if self.arch == Arch::Arm64
            && crate::arch::names_only_x86_serial(&format!("{built} {extra}"))
        {
            parts.push(serial);
        }
        parts.join(" ")
    }

    /// The command line libslirp runs per forwarded connection. It splits
    /// it as a shell would (without running one), so the path is quoted.
    fn relay_command(&self, server: &MetadataServer) -> OsString {
        let mut c = OsString::from(shell_quote(&self.relay_program.to_string_lossy()));
        c.push(" run metadata-relay ");
        c.push(shell_quote(&server.address()));
        c
    }

    /// The QEMU arguments (without the program).
    pub fn argv(&self) -> Vec<OsString> {
        let mut a = Argv::default();
        let (accel, cpu) = match (self.accel, self.arch) {
            (Accel::Kvm, _) => ("kvm", "host"),
            (Accel::Tcg | Accel::Auto, Arch::Amd64) => ("tcg", TCG_CPU),
            (Accel::Tcg | Accel::Auto, Arch::Arm64) => ("tcg", "max"),
        };
        // -nodefaults: every device is listed below, nothing QEMU adds by
        // itself. q35 still builds in an AHCI controller and an SMBus: the
        // AHCI one only carries the metadata CD. Without it the guest does
        // not load and probe its storage stack (scsi_mod, libata, ahci:
        // 1.2 s of a TCG boot).
        let cd = matches!(self.image, Some(super::BootImage::Cd(_)));
        let machine = match self.arch {
            // virt: PCIe (virtio-*-pci below), PL011 serial, PL031 clock, a GPIO power key.
            Arch::Arm64 => "virt",
            Arch::Amd64 if self.data.is_some() || cd => "q35,smbus=off",
            Arch::Amd64 => "q35,sata=off,smbus=off",
        };
        let memory = super::share::memory_backend(&self.shares, self.mem_mib);
        let machine = match memory {
            Some(_) => format!("{machine},memory-backend={}", super::share::MEMORY_ID),
            None => machine.to_string(),
        };
        a.args(["-nodefaults", "-no-user-config", "-machine"]);
        a.arg(machine);
        a.args(["-accel", accel]);
        if let Some(object) = memory {
            a.arg("-object").arg(object);
        }
        a.args(["-cpu", cpu]);
        a.arg("-smp").arg(self.cpus.to_string());
        a.arg("-m").arg(format!("{}M", self.mem_mib));
        a.args(["-display", "none"]);
        if !self.reboot {
            a.arg("-no-reboot");
        }

        if let Firmware::Uefi { code, .. } = &self.firmware {
            a.arg("-drive")
                .arg(drive_opt("if=pflash,format=raw,unit=0,readonly=on", code));
            a.arg("-drive").arg(drive_opt(
                "if=pflash,format=raw,unit=1",
                &self.state_dir.join(UEFI_VARS),
            ));
        }

        // arm64's virt machine has no IDE/AHCI: CD-ROMs go on virtio-scsi.
        let scsi = self.arch == Arch::Arm64 && (cd || self.data.is_some());
        if scsi {
            a.args(["-device", "virtio-scsi-pci,id=scsi0"]);
        }
        match &self.image {
            None => {
                a.arg("-kernel").path(&self.artifacts.kernel);
                a.arg("-initrd").path(&self.artifacts.initrd);
                a.arg("-append").arg(self.kernel_cmdline());
            }
            Some(super::BootImage::Cd(path)) => {
                // On the AHCI controller's first port; the metadata CD takes the second.
                a.arg("-drive").arg(drive_opt(
                    "if=none,id=boot,format=raw,media=cdrom,readonly=on",
                    path,
                ));
                a.args(if scsi {
                    ["-device", "scsi-cd,drive=boot,bus=scsi0.0,bootindex=0"]
                } else {
                    ["-device", "ide-cd,drive=boot,bus=ide.0,bootindex=0"]
                });
            }
            Some(image) => {
                let (path, format) = match image {
                    super::BootImage::Disk { path, format } => (path.clone(), format.as_str()),
                    super::BootImage::Uki(_) => (self.state_dir.join(super::UKI_ESP), "raw"),
                    super::BootImage::Cd(_) => unreachable!("matched above"),
                };
                a.arg("-drive").arg(drive_opt(
                    &format!("if=none,id=boot,format={format}"),
                    &path,
                ));
                a.args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
            }
        }

        for i in 0..self.disks.len() {
            let opts = format!(
                "if=none,id=disk{i},format={}",
                self.disks[i].format.as_str()
            );
            a.arg("-drive").arg(drive_opt(&opts, &self.disk_path(i)));
            a.arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk{i}"));
        }
        if self.data.is_some() {
            a.arg("-drive").arg(drive_opt(
                "if=none,id=metadata,format=raw,media=cdrom,readonly=on",
                &self.state_dir.join(METADATA_ISO),
            ));
            a.args(if scsi {
                ["-device", "scsi-cd,drive=metadata,bus=scsi0.0"]
            } else {
                ["-device", "ide-cd,drive=metadata,bus=ide.1"]
            });
        }

        a.0.extend(super::share::argv(
            &self.shares,
            &self.share_table(),
            &self.state_dir,
        ));
        if !self.forwards.is_empty() {
            a.0.extend(super::forward::fw_cfg(&self.state_dir.join(SOCKET_TABLE)));
        }

        let mut netdev = OsString::from("user,id=net0");
        if let Some(server) = &self.metadata_server {
            netdev.push(format!(
                ",net={METADATA_NET},guestfwd=tcp:{METADATA_ADDR}-cmd:"
            ));
            netdev.push(escape_commas(Path::new(&self.relay_command(server))));
        }
        for p in &self.publish {
            netdev.push(",");
            netdev.push(p.hostfwd());
        }
        if self.forward_transport == super::Transport::UserNet {
            for f in super::forward::hostfwds(&self.forward_ports) {
                netdev.push(",");
                netdev.push(f);
            }
        }
        a.arg("-netdev").arg(netdev);
        a.args(["-device", "virtio-net-pci,netdev=net0"]);
        if let super::Transport::Vsock { cid } = self.forward_transport {
            a.arg("-device")
                .arg(format!("vhost-vsock-pci,guest-cid={cid}"));
        }
        // Entropy for the guest's early crypto (sshd host keys, TLS).
        a.args(["-device", "virtio-rng-pci"]);

        a.arg("-monitor").arg(socket_opt(
            "unix:",
            &self.monitor_socket(),
            ",server=on,wait=off",
        ));
        if self.detach {
            a.arg("-chardev")
                .arg(socket_opt("file,id=console,path=", &self.console_log(), ""));
            a.args(["-serial", "chardev:console", "-daemonize"]);
            a.arg("-pidfile").path(&self.pid_file());
        } else {
            // mon:stdio: Ctrl-a x quits, Ctrl-a c switches to the monitor.
            a.args(["-serial", "mon:stdio"]);
        }
        a.0
    }
}

/// `s` in single quotes, as a POSIX shell (and GLib's argv parser) reads them.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn invalid(flag: &'static str, value: &str, reason: &str) -> Error {
    Error::InvalidFlag {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A `-drive` option string; commas in the path are doubled as QEMU requires.
fn drive_opt(opts: &str, path: &Path) -> OsString {
    socket_opt(&format!("{opts},file="), path, "")
}

fn socket_opt(before: &str, path: &Path, after: &str) -> OsString {
    let mut s = OsString::from(before);
    s.push(escape_commas(path));
    s.push(after);
    s
}

pub(super) fn escape_commas(path: &Path) -> OsString {
    let raw = path.as_os_str();
    match raw.to_str() {
        Some(s) if s.contains(',') => s.replace(',', ",,").into(),
        _ => raw.to_owned(),
    }
}

#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn arg(&mut self, a: impl Into<OsString>) -> &mut Self {
        self.0.push(a.into());
        self
    }
    fn args<const N: usize>(&mut self, a: [&str; N]) -> &mut Self {
        self.0.extend(a.iter().map(OsString::from));
        self
    }
    fn path(&mut self, p: &Path) -> &mut Self {
        self.0.push(p.as_os_str().to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> QemuConfig {
        let mut c = QemuConfig::new(Artifacts::from_prefix(Path::new("out/minimal")), "/st")
            .accel(Accel::Tcg);
        c.cmdline = "console=ttyS0 quiet\n".into();
        c
    }

    fn argv(c: &QemuConfig) -> Vec<String> {
        c.argv()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    /// The value following `flag`, for every occurrence.
    fn values(v: &[String], flag: &str) -> Vec<String> {
        v.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn a_boot_image_replaces_the_kernel_with_a_boot_disk() {
        use crate::run::{BootImage, ImageFormat};
        let c = base().image(BootImage::Disk {
            path: "out/minimal.vhd".into(),
            format: ImageFormat::Vpc,
        });
        let v = argv(&c);
        assert!(values(&v, "-kernel").is_empty());
        assert!(values(&v, "-append").is_empty());
        assert_eq!(
            values(&v, "-drive"),
            ["if=none,id=boot,format=vpc,file=out/minimal.vhd"]
        );
        let v = argv(&base().image(BootImage::Uki("out/minimal.efi".into())));
        assert_eq!(
            values(&v, "-drive"),
            ["if=none,id=boot,format=raw,file=/st/uki-esp.raw"]
        );
        // An ISO is a CD on the AHCI controller, which must then stay on.
        let v = argv(&base().image(BootImage::Cd("out/minimal.iso".into())));
        assert_eq!(
            values(&v, "-drive"),
            ["if=none,id=boot,format=raw,media=cdrom,readonly=on,file=out/minimal.iso"]
        );
        assert_eq!(
            values(&v, "-device")[0],
            "ide-cd,drive=boot,bus=ide.0,bootindex=0"
        );
        assert_eq!(values(&v, "-machine"), ["q35,smbus=off"]);
    }

    #[test]
    fn artifacts_from_prefix() {
        let a = Artifacts::from_prefix(Path::new("out/minimal"));
        assert_eq!(a.kernel, Path::new("out/minimal-kernel"));
        assert_eq!(a.initrd, Path::new("out/minimal-initrd.img"));
        assert_eq!(a.cmdline, Path::new("out/minimal-cmdline"));
    }

    #[test]
    fn attached_defaults() {
        let v = argv(&base());
        assert_eq!(values(&v, "-kernel"), ["out/minimal-kernel"]);
        assert_eq!(values(&v, "-initrd"), ["out/minimal-initrd.img"]);
        assert_eq!(values(&v, "-append"), ["console=ttyS0 quiet"]);
        assert_eq!(values(&v, "-accel"), ["tcg"]);
        assert_eq!(values(&v, "-cpu"), ["max,-erms,-fsrm"]);
        assert_eq!(values(&v, "-machine"), ["q35,sata=off,smbus=off"]);
        assert_eq!(values(&v, "-smp"), ["1"]);
        assert_eq!(values(&v, "-m"), ["1024M"]);
        assert_eq!(values(&v, "-serial"), ["mon:stdio"]);
        assert_eq!(
            values(&v, "-monitor"),
            ["unix:/st/monitor.sock,server=on,wait=off"]
        );
        assert_eq!(values(&v, "-netdev"), ["user,id=net0"]);
        assert!(v.contains(&"-nodefaults".to_string()));
        assert!(!v.contains(&"-daemonize".to_string()));
        assert!(!v.contains(&"-no-reboot".to_string()));
        assert!(values(&v, "-drive").is_empty());
    }

    #[test]
    fn detached_writes_console_log_and_pidfile() {
        let v = argv(&base().detach(true).reboot(false));
        assert_eq!(
            values(&v, "-chardev"),
            ["file,id=console,path=/st/console.log"]
        );
        assert_eq!(values(&v, "-serial"), ["chardev:console"]);
        assert_eq!(values(&v, "-pidfile"), ["/st/qemu.pid"]);
        assert!(v.contains(&"-daemonize".to_string()));
        assert!(v.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let v = argv(&base().accel(Accel::Kvm).cpus(4).mem_mib(2048));
        assert_eq!(values(&v, "-accel"), ["kvm"]);
        assert_eq!(values(&v, "-cpu"), ["host"]);
        assert_eq!(values(&v, "-smp"), ["4"]);
        assert_eq!(values(&v, "-m"), ["2048M"]);
    }

    #[test]
    fn disks_publish_and_data() {
        let c = base()
            .disk("/d/a.img,size=2G".parse().unwrap())
            .disk("size=10M,format=qcow2".parse().unwrap())
            .publish("8080:80".parse().unwrap())
            .publish("0.0.0.0:5353:53/udp".parse().unwrap())
            .data(b"{}".to_vec());
        let v = argv(&c);
        assert_eq!(
            values(&v, "-drive"),
            [
                "if=none,id=disk0,format=raw,file=/d/a.img",
                "if=none,id=disk1,format=qcow2,file=/st/disk1.qcow2",
                "if=none,id=metadata,format=raw,media=cdrom,readonly=on,file=/st/metadata.iso",
            ]
        );
        assert_eq!(
            values(&v, "-device"),
            [
                "virtio-blk-pci,drive=disk0",
                "virtio-blk-pci,drive=disk1",
                "ide-cd,drive=metadata,bus=ide.1",
                "virtio-net-pci,netdev=net0",
                "virtio-rng-pci",
            ]
        );
        // The CD hangs off q35's built-in AHCI controller.
        assert_eq!(values(&v, "-machine"), ["q35,smbus=off"]);
        assert_eq!(
            values(&v, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53"]
        );
    }

    #[test]
    fn reach_lists_sockets_then_ports() {
        let mut c = base()
            .publish("8080:80".parse().unwrap())
            .publish("0.0.0.0:5353:53/udp".parse().unwrap())
            .forward_socket("/h/docker.sock:/var/run/docker.sock".parse().unwrap());
        c.forward_ports = vec![40001];
        assert_eq!(
            c.reach(),
            "socket\t/h/docker.sock\t/var/run/docker.sock\n\
             port\t127.0.0.1:8080\t80/tcp\n\
             port\t0.0.0.0:5353\t53/udp\n"
        );
    }

    #[test]
    fn forwards_ride_the_user_network_or_vsock() {
        let mut c = base().forward_socket("/h/d.sock:/var/run/docker.sock".parse().unwrap());
        c.forward_ports = vec![40001];
        let v = argv(&c);
        assert_eq!(
            values(&v, "-netdev"),
            ["user,id=net0,hostfwd=tcp:127.0.0.1:40001-:2390"]
        );
        assert!(!values(&v, "-device").iter().any(|d| d.contains("vsock")));
        // With vhost-vsock the host dials the guest's port directly: no
        // loopback port at all, and the guest learns to listen on vsock.
        c.forward_ports = vec![2390];
        c.forward_transport = crate::run::Transport::Vsock { cid: 4242 };
        let v = argv(&c);
        assert_eq!(values(&v, "-netdev"), ["user,id=net0"]);
        assert_eq!(
            values(&v, "-device")[..],
            [
                "virtio-net-pci,netdev=net0",
                "vhost-vsock-pci,guest-cid=4242",
                "virtio-rng-pci"
            ]
        );
        assert_eq!(
            crate::run::forward::guest_table(&c.forwards, c.forward_transport),
            "vsock:2390\t/var/run/docker.sock\n"
        );
    }

    #[test]
    fn metadata_server_moves_the_network_and_forwards_the_service() {
        let c = base()
            .publish("2222:22".parse().unwrap())
            .metadata_server("http://127.0.0.1:8775/".parse().unwrap(), "/opt/my osk/osk");
        assert_eq!(
            values(&argv(&c), "-netdev"),
            ["user,id=net0,net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-cmd:'/opt/my osk/osk' run metadata-relay '127.0.0.1:8775',hostfwd=tcp:127.0.0.1:2222-:22"]
        );
        let c = base().metadata_server("h:1".parse().unwrap(), "/a,b/it's");
        assert_eq!(
            values(&argv(&c), "-netdev"),
            [
                r"user,id=net0,net=169.254.169.0/24,guestfwd=tcp:169.254.169.254:80-cmd:'/a,,b/it'\''s' run metadata-relay 'h:1'"
            ]
        );
    }

    #[test]
    fn parses_metadata_servers() {
        let m = |s: &str| s.parse::<MetadataServer>().map(|m| m.address());
        assert_eq!(m("127.0.0.1:8775").unwrap(), "127.0.0.1:8775");
        assert_eq!(m("http://localhost").unwrap(), "localhost:80");
        assert_eq!(m("http://10.1.2.3:8080/").unwrap(), "10.1.2.3:8080");
        assert_eq!(m("http://[::1]:81").unwrap(), "[::1]:81");
        for bad in [
            "localhost",
            "https://x:443",
            "http://x/openstack",
            "x:0",
            "x:http",
            ":80",
            "http://a,b:1",
        ] {
            let e = m(bad).unwrap_err().to_string();
            assert!(
                e.contains("--metadata-server") && e.contains(bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn uefi_uses_pflash_and_a_private_vars_copy() {
        let v = argv(&base().firmware(Firmware::debian_ovmf()));
        assert_eq!(
            values(&v, "-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
                "if=pflash,format=raw,unit=1,file=/st/OVMF_VARS.fd",
            ]
        );
        // The kernel is still loaded directly; OVMF boots it through its EFI stub.
        assert_eq!(values(&v, "-kernel"), ["out/minimal-kernel"]);
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        // --disk cannot spell such a path, but a library caller can.
        let c = base().disk(DiskSpec {
            path: Some("/d/a,b.img".into()),
            size: 1,
            format: DiskFormat::Raw,
        });
        assert_eq!(
            values(&argv(&c), "-drive"),
            ["if=none,id=disk0,format=raw,file=/d/a,,b.img"]
        );
    }

    #[test]
    fn cmdline_gets_console_and_append() {
        let mut c = base();
        c.cmdline = String::new();
        assert_eq!(c.kernel_cmdline(), "console=ttyS0");
        let c = c.append("osk.debug=1");
        assert_eq!(c.kernel_cmdline(), "console=ttyS0 osk.debug=1");
        let c = c.append("console=tty0");
        assert_eq!(c.kernel_cmdline(), "console=tty0");
        let c = base().append(" panic=1 ");
        assert_eq!(c.kernel_cmdline(), "console=ttyS0 quiet panic=1");
    }

    #[test]
    fn parses_disk_specs() {
        let d: DiskSpec = "/x.img".parse().unwrap();
        assert_eq!(d.path.as_deref(), Some(Path::new("/x.img")));
        assert_eq!(d.size, DiskSpec::DEFAULT_SIZE);
        let d: DiskSpec = "x.qcow2,format=qcow2,size=512".parse().unwrap();
        assert_eq!((d.format, d.size), (DiskFormat::Qcow2, 512 << 20));
        let d: DiskSpec = "size=4G".parse().unwrap();
        assert_eq!((d.path, d.size), (None, 4 << 30));
        for bad in [
            "",
            "x,format=vdi",
            "x,size=big",
            "x,color=red",
            "x,y",
            "x,size=0",
        ] {
            let err = bad.parse::<DiskSpec>().unwrap_err().to_string();
            assert!(err.contains("--disk") && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_publish_specs() {
        let p: Publish = "2222:22".parse().unwrap();
        assert_eq!(
            p,
            Publish {
                host_ip: Ipv4Addr::LOCALHOST,
                host_port: 2222,
                guest_port: 22,
                protocol: Protocol::Tcp
            }
        );
        let p: Publish = "10.0.0.1:53:53/udp".parse().unwrap();
        assert_eq!(
            (p.host_ip, p.protocol),
            ("10.0.0.1".parse().unwrap(), Protocol::Udp)
        );
        for bad in [
            "80",
            "80:0",
            "a:80",
            "80:80/sctp",
            "x:1:2",
            "1:2:3:4",
            "70000:80",
        ] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1024"), Some(1 << 30));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1t"), Some(1 << 40));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn an_arm64_guest_boots_through_aavmf() {
        let v = argv(
            &base()
                .arch(Arch::Arm64)
                .firmware(Firmware::debian_uefi(Arch::Arm64)),
        );
        assert_eq!(
            values(&v, "-drive"),
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
                "if=pflash,format=raw,unit=1,file=/st/OVMF_VARS.fd",
            ]
        );
        assert_eq!(values(&v, "-machine"), ["virt"]);
    }

    #[test]
    fn an_arm64_iso_and_metadata_cd_go_on_virtio_scsi() {
        let v = argv(
            &base()
                .arch(Arch::Arm64)
                .image(crate::run::BootImage::Cd("out/m.iso".into()))
                .data(b"x".to_vec()),
        );
        assert_eq!(
            values(&v, "-device")[..3],
            [
                "virtio-scsi-pci,id=scsi0",
                "scsi-cd,drive=boot,bus=scsi0.0,bootindex=0",
                "scsi-cd,drive=metadata,bus=scsi0.0",
            ]
        );
        assert!(!v.iter().any(|a| a.contains("ide")), "{v:?}");
    }

    #[test]
    fn an_arm64_guest_gets_virt_max_and_its_serial_console() {
        let mut c = base().arch(Arch::Arm64);
        c.cmdline = "console=ttyS0\n".into();
        let v = argv(&c);
        assert_eq!(values(&v, "-machine"), ["virt"]);
        assert_eq!(values(&v, "-cpu"), ["max"]);
        assert_eq!(values(&v, "-accel"), ["tcg"]);
        // The manifest's x86 console stays; the PL011 comes last, as /dev/console.
        assert_eq!(values(&v, "-append"), ["console=ttyS0 console=ttyAMA0"]);
        c.cmdline = String::new();
        assert_eq!(c.kernel_cmdline(), "console=ttyAMA0");
        c.cmdline = "console=ttyAMA0,115200 quiet".into();
        assert_eq!(c.kernel_cmdline(), "console=ttyAMA0,115200 quiet");
        // amd64 as before.
        let mut x = base();
        x.cmdline = "console=ttyS0".into();
        assert_eq!(x.kernel_cmdline(), "console=ttyS0");
    }

    #[test]
    fn parses_accel() {
        assert_eq!("kvm".parse::<Accel>().unwrap(), Accel::Kvm);
        assert_eq!("auto".parse::<Accel>().unwrap().to_string(), "auto");
        assert!("hvf".parse::<Accel>().is_err());
    }
}
