//! Making a [`QemuConfig`] real: the state directory and what goes in it,
//! finding QEMU, starting it attached to the terminal or in the background,
//! and talking to a background VM through its monitor socket.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::config::{Accel, DiskFormat, Firmware, QemuConfig};
use super::names::{MAX_SOCKET_PATH, METADATA_ISO, UEFI_VARS};
use super::{iso, Error, Result};
use crate::arch::Arch;

/// A config whose files exist, ready to start.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub config: QemuConfig,
    /// The resolved QEMU binary.
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Prepared {
    /// The command as a shell would show it, for logs and `--dry-run`-like output.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(self.args.iter().map(|a| a.as_os_str()))
            .map(|a| {
                let s = a.to_string_lossy();
                if s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=,./:+@".contains(c))
                {
                    s.into_owned()
                } else {
                    format!("'{}'", s.replace('\'', r"'\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Resolves `Accel::Auto`: KVM when `/dev/kvm` opens read-write, else TCG.
pub fn detect_accel(choice: Accel) -> Accel {
    match choice {
        Accel::Auto => {
            let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm");
            if kvm.is_ok() {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
        other => other,
    }
}

/// Finds the QEMU binary for `arch`: `qemu` itself when it contains a `/`, else on PATH.
pub fn find_qemu(qemu: &Path, arch: Arch) -> Result<PathBuf> {
    find_program(qemu).ok_or_else(|| Error::QemuNotFound {
        package: arch.qemu_package(),
        looked_for: if qemu.components().count() > 1 {
            format!("{} does not exist", qemu.display())
        } else {
            format!("looked for {} on PATH", qemu.display())
        },
    })
}

fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Checks the artifacts, resolves QEMU and the accelerator, and creates the
/// state directory with the disks, metadata ISO and UEFI variable store the
/// argv refers to. Files of a previous run (console log, pid file, monitor
/// socket) are removed so nothing stale is mistaken for this run's.
pub fn prepare(mut config: QemuConfig) -> Result<Prepared> {
    // First, before anything in it changes: its files are a running VM's.
    super::check_state_free(&config.state_dir)?;
    if config.image.is_none() {
        for path in [&config.artifacts.kernel, &config.artifacts.initrd] {
            if !path.is_file() {
                return Err(Error::MissingArtifact { path: path.clone() });
            }
        }
        let cmdline_path = &config.artifacts.cmdline;
        match fs::read_to_string(cmdline_path) {
            Ok(s) => config.cmdline = s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(cmdline_path)(e)),
        }
    }
    let program = find_qemu(&config.qemu, config.arch)?;
    config.accel = if config.arch == Arch::host() {
        detect_accel(config.accel)
    } else {
        // KVM runs only the host's own architecture.
        match config.accel {
            Accel::Kvm => {
                return Err(Error::InvalidFlag {
                    flag: "--accel",
                    value: "kvm".into(),
                    reason: format!(
                        "KVM cannot run an {} guest on this {} host; use tcg",
                        config.arch,
                        Arch::host()
                    ),
                })
            }
            _ => Accel::Tcg,
        }
    };

    let state = config.state_dir.clone();
    fs::create_dir_all(&state).map_err(Error::io(&state))?;
    let socket = config.monitor_socket();
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::InvalidFlag {
            flag: "--state",
            value: state.display().to_string(),
            reason: format!(
                "the monitor socket path {} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows; choose a shorter state directory",
                socket.display()
            ),
        });
    }
    for stale in [
        socket,
        config.console_log(),
        config.pid_file(),
        state.join(super::REACH),
    ] {
        match fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(stale)(e)),
        }
    }

    for i in 0..config.disks.len() {
        let path = config.disk_path(i);
        if !path.exists() {
            let d = &config.disks[i];
            create_disk(&path, d.size, d.format)?;
        }
    }
    if let Some(data) = &config.data {
        iso::write_metadata_iso(&state.join(METADATA_ISO), data)?;
    }
    if !config.forwards.is_empty() {
        for f in &config.forwards {
            super::forward::claim(&f.host)?;
        }
        config.forward_transport = super::forward::pick_transport();
        config.forward_ports = match config.forward_transport {
            super::Transport::UserNet => config
                .forwards
                .iter()
                .map(|_| super::forward::free_loopback_port())
                .collect::<Result<_>>()?,
            super::Transport::Vsock { .. } => (0..config.forwards.len())
                .map(super::forward::guest_port)
                .collect(),
        };
        let table = state.join(super::SOCKET_TABLE);
        let guest = super::forward::guest_table(&config.forwards, config.forward_transport);
        fs::write(&table, guest).map_err(Error::io(&table))?;
        let helper = state.join(super::FORWARD_TABLE);
        let text = super::forward::helper_table(&config.forward_pairs(), config.forward_transport);
        fs::write(&helper, text).map_err(Error::io(&helper))?;
    }
    if !config.shares.is_empty() {
        for s in &config.shares {
            s.check()?;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        config.virtiofsd = super::virtiofs::plan(
            config.share_fs,
            config.virtiofsd_program.as_deref(),
            root,
            &mut config.shares,
        )?;
        super::virtiofs::check_sockets(&state, &config.shares)?;
        let table = config.share_table();
        fs::write(&table, super::guest_table(&config.shares)).map_err(Error::io(&table))?;
    }
    if let Some(super::BootImage::Uki(uki)) = &config.image {
        super::write_uki_esp(uki, &state.join(super::UKI_ESP))?;
    }
    if let Firmware::Uefi {
        code,
        vars_template,
    } = &config.firmware
    {
        for fw in [code, vars_template] {
            if !fw.is_file() {
                return Err(Error::FirmwareNotFound {
                    path: fw.clone(),
                    package: match config.arch {
                        Arch::Amd64 => "ovmf",
                        Arch::Arm64 => "qemu-efi-aarch64",
                    },
                });
            }
        }
        let vars = state.join(UEFI_VARS);
        if !vars.exists() {
            fs::copy(vars_template, &vars).map_err(Error::io(&vars))?;
        }
    }

    let args = config.argv();
    Ok(Prepared {
        config,
        program,
        args,
    })
}

fn create_disk(path: &Path, size: u64, format: DiskFormat) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    tracing::info!(path = %path.display(), size, format = format.as_str(), "creating disk");
    match format {
        DiskFormat::Raw => {
            // A sparse file is a raw disk; no tool needed.
            let tmp = tmp_name(path);
            let f = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
            f.set_len(size).map_err(Error::io(&tmp))?;
            fs::rename(&tmp, path).map_err(Error::io(path))
        }
        DiskFormat::Qcow2 => {
            let qemu_img =
                find_program(Path::new("qemu-img")).ok_or_else(|| Error::QemuImgNotFound {
                    path: path.to_path_buf(),
                    format: format.as_str().into(),
                })?;
            let tmp = tmp_name(path);
            let out = Command::new(&qemu_img)
                .args(["create", "-q", "-f", format.as_str()])
                .arg(&tmp)
                .arg(size.to_string())
                .output()
                .map_err(Error::io(&qemu_img))?;
            if !out.status.success() {
                let _ = fs::remove_file(&tmp);
                return Err(Error::Command {
                    program: qemu_img.display().to_string(),
                    message: format!(
                        "creating {} failed ({}): {}",
                        path.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            fs::rename(&tmp, path).map_err(Error::io(path))
        }
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// How a foreground VM ended.
#[derive(Debug, Clone, Copy)]
pub struct AttachedExit {
    pub status: ExitStatus,
    /// The timeout was reached and osk stopped the VM.
    pub timed_out: bool,
}

/// Runs QEMU in the foreground with the serial console on this terminal and
/// returns its exit status. With a timeout, the VM is told to `quit` through
/// its monitor when the time is up (and killed if that fails).
pub fn run_attached(p: &Prepared, timeout: Option<Duration>) -> Result<AttachedExit> {
    let mut daemons = start_daemons(p)?;
    tracing::debug!(command = %p.display(), "starting QEMU");
    let child = Command::new(&p.program).args(&p.args).spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            daemons.kill();
            return Err(Error::io(&p.program)(e));
        }
    };
    let exit = wait_attached(p, child, timeout);
    // They end once QEMU has closed their sockets.
    daemons.reap(Duration::from_secs(5));
    exit
}

/// The virtiofsds of `p`'s virtiofs shares, started before QEMU connects to them.
fn start_daemons(p: &Prepared) -> Result<super::Daemons> {
    let c = &p.config;
    super::virtiofs::start(c.virtiofsd.as_ref(), &c.shares, &c.state_dir)
}

fn wait_attached(
    p: &Prepared,
    mut child: std::process::Child,
    timeout: Option<Duration>,
) -> Result<AttachedExit> {
    let exit = |status, timed_out| AttachedExit { status, timed_out };
    let Some(timeout) = timeout else {
        let status = child.wait().map_err(Error::io(&p.program))?;
        return Ok(exit(status, false));
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(Error::io(&p.program))? {
            return Ok(exit(status, false));
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                seconds = timeout.as_secs(),
                "timeout reached, stopping the VM"
            );
            // quit lets QEMU restore the terminal; SIGKILL would leave it raw.
            let _ = monitor_command(&p.config.monitor_socket(), "quit", Duration::from_secs(5));
            let grace = Instant::now() + Duration::from_secs(5);
            while Instant::now() < grace {
                if let Some(status) = child.try_wait().map_err(Error::io(&p.program))? {
                    return Ok(exit(status, true));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let status = child.wait().map_err(Error::io(&p.program))?;
            return Ok(exit(status, true));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A VM running in the background (QEMU's `-daemonize`).
#[derive(Debug, Clone)]
pub struct Detached {
    pub pid: i32,
    pub state_dir: PathBuf,
    pub monitor_socket: PathBuf,
    pub console_log: PathBuf,
    pub pid_file: PathBuf,
}

/// Starts QEMU in the background. Returns once QEMU has daemonized, which it
/// does after parsing every option and opening every file, so a bad option
/// is reported here with QEMU's own message.
pub fn run_detached(p: &Prepared) -> Result<Detached> {
    if !p.config.detach {
        return Err(Error::InvalidFlag {
            flag: "--detach",
            value: "false".into(),
            reason: "run_detached needs a config built with detach(true)".into(),
        });
    }
    let mut daemons = start_daemons(p)?;
    tracing::debug!(command = %p.display(), "starting QEMU in the background");
    let out = Command::new(&p.program)
        .args(&p.args)
        .stdin(Stdio::null())
        .output();
    let out = match out {
        Ok(out) if out.status.success() => {
            // They stay with the VM and end when its QEMU does.
            daemons.detach();
            out
        }
        Ok(out) => {
            daemons.kill();
            out
        }
        Err(e) => {
            daemons.kill();
            return Err(Error::io(&p.program)(e));
        }
    };
    if !out.status.success() {
        return Err(Error::Command {
            program: p.program.display().to_string(),
            message: format!(
                "failed to start ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let pid_file = p.config.pid_file();
    let pid_text = fs::read_to_string(&pid_file).map_err(Error::io(&pid_file))?;
    let pid = pid_text.trim().parse().map_err(|_| Error::Command {
        program: p.program.display().to_string(),
        message: format!("{} holds no pid: {pid_text:?}", pid_file.display()),
    })?;
    // Written whole under another name, then renamed: never seen half-written.
    let reach = p.config.state_dir.join(super::REACH);
    let tmp = tmp_name(&reach);
    fs::write(&tmp, p.config.reach())
        .and_then(|()| fs::rename(&tmp, &reach))
        .map_err(Error::io(&reach))?;
    Ok(Detached {
        pid,
        state_dir: p.config.state_dir.clone(),
        monitor_socket: p.config.monitor_socket(),
        console_log: p.config.console_log(),
        pid_file,
    })
}

impl Detached {
    /// Sends one human-monitor command (`system_powerdown`, `quit`,
    /// `info status`...) and returns QEMU's answer.
    pub fn monitor(&self, command: &str) -> Result<String> {
        monitor_command(&self.monitor_socket, command, Duration::from_secs(10))
    }

    /// Whether the QEMU process still exists.
    pub fn is_running(&self) -> bool {
        // SAFETY: kill with signal 0 only checks that the process exists.
        unsafe { libc::kill(self.pid, 0) == 0 }
    }

    /// Waits up to `timeout` for QEMU to exit; true when it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Stops QEMU for sure: `quit` through the monitor, then SIGKILL.
    pub fn kill(&self) {
        if !self.is_running() {
            return;
        }
        let _ = self.monitor("quit");
        if !self.wait_exit(Duration::from_secs(3)) {
            // SAFETY: plain kill(2) on the pid QEMU wrote for this state directory.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
            self.wait_exit(Duration::from_secs(3));
        }
    }
}

/// One HMP exchange over the monitor's unix socket: wait for the `(qemu)`
/// prompt, send the command, collect output until the next prompt (or EOF,
/// which is how `quit` answers).
pub fn monitor_command(socket: &Path, command: &str, timeout: Duration) -> Result<String> {
    const PROMPT: &str = "(qemu) ";
    let mut stream = UnixStream::connect(socket).map_err(Error::io(socket))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(Error::io(socket))?;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, PROMPT).map_err(Error::io(socket))?;
    seen.clear();
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(Error::io(socket))?;
    read_until(&mut stream, &mut seen, PROMPT).map_err(Error::io(socket))?;
    let text = String::from_utf8_lossy(&seen).replace('\r', "");
    // Drop the echoed command line (with its terminal escapes) and the prompt.
    let body = text.strip_suffix(PROMPT).unwrap_or(&text);
    let body = body.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    Ok(body.trim_end().to_string())
}

fn read_until(stream: &mut UnixStream, buf: &mut Vec<u8>, marker: &str) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(marker.as_bytes()) {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::config::{Artifacts, DiskSpec};
    use super::*;
    use crate::run::CONSOLE_LOG;

    fn artifacts(dir: &Path) -> Artifacts {
        let a = Artifacts::from_prefix(&dir.join("vm"));
        fs::write(&a.kernel, b"k").unwrap();
        fs::write(&a.initrd, b"i").unwrap();
        fs::write(&a.cmdline, b"console=ttyS0 init=/init\n").unwrap();
        a
    }

    #[test]
    fn missing_artifact_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = QemuConfig::new(Artifacts::from_prefix(&dir.path().join("nope")), dir.path());
        let err = prepare(cfg).unwrap_err().to_string();
        assert!(
            err.contains("nope-kernel") && err.contains("osk build"),
            "{err}"
        );
    }

    #[test]
    fn missing_qemu_says_how_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = QemuConfig::new(artifacts(dir.path()), dir.path().join("st"))
            .qemu("/nonexistent/qemu-system-x86_64");
        let err = prepare(cfg).unwrap_err().to_string();
        assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
        let cfg = QemuConfig::new(artifacts(dir.path()), dir.path().join("st"))
            .arch(Arch::Arm64)
            .qemu("/nonexistent/qemu-system-aarch64");
        let err = prepare(cfg).unwrap_err().to_string();
        assert!(err.contains("apt-get install qemu-system-arm"), "{err}");
    }

    #[test]
    fn an_arm64_guest_never_asks_for_kvm_on_this_host() {
        if Arch::host() == Arch::Arm64 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cfg = QemuConfig::new(artifacts(dir.path()), dir.path().join("st"))
            .arch(Arch::Arm64)
            .qemu("/bin/true")
            .accel(Accel::Kvm);
        let err = prepare(cfg).unwrap_err().to_string();
        assert!(err.contains("use tcg"), "{err}");
        let cfg = QemuConfig::new(artifacts(dir.path()), dir.path().join("st"))
            .arch(Arch::Arm64)
            .qemu("/bin/true");
        assert_eq!(prepare(cfg).unwrap().config.accel, Accel::Tcg);
    }

    #[test]
    fn prepare_creates_state_disks_and_iso() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("st");
        // Any existing file stands in for QEMU: prepare only resolves it.
        let cfg = QemuConfig::new(artifacts(dir.path()), &st)
            .qemu("/bin/sh")
            .accel(Accel::Tcg)
            .disk("size=3M".parse::<DiskSpec>().unwrap())
            .data(b"hello".to_vec())
            .append("x=1");
        fs::create_dir_all(&st).unwrap();
        fs::write(st.join(CONSOLE_LOG), "old run").unwrap();
        let p = prepare(cfg).unwrap();
        assert_eq!(fs::metadata(st.join("disk0.raw")).unwrap().len(), 3 << 20);
        assert!(fs::read(st.join(METADATA_ISO)).unwrap().len() > 16 * 2048);
        assert!(!st.join(CONSOLE_LOG).exists(), "stale console log removed");
        assert_eq!(p.config.kernel_cmdline(), "console=ttyS0 init=/init x=1");
        assert!(p.display().contains("'console=ttyS0 init=/init x=1'"));
    }

    #[test]
    fn existing_disk_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("keep.img");
        fs::write(&disk, b"data").unwrap();
        let cfg = QemuConfig::new(artifacts(dir.path()), dir.path().join("st"))
            .qemu("/bin/sh")
            .disk(format!("{},size=1G", disk.display()).parse().unwrap());
        prepare(cfg).unwrap();
        assert_eq!(fs::read(&disk).unwrap(), b"data");
    }

    #[test]
    fn long_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("s".repeat(120));
        let cfg = QemuConfig::new(artifacts(dir.path()), st).qemu("/bin/sh");
        let err = prepare(cfg).unwrap_err().to_string();
        assert!(err.contains("shorter state directory"), "{err}");
    }

    #[test]
    fn a_state_of_a_running_vm_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let st = dir.path().join("st");
        fs::create_dir_all(&st).unwrap();
        // A live process whose program is named like QEMU stands in for the VM.
        let fake = dir.path().join("qemu-system-x86_64");
        fs::copy("/bin/sleep", &fake).unwrap();
        let mut vm = Command::new(&fake).arg("30").spawn().unwrap();
        // Until the child has exec'd, its cmdline is still this test's.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !crate::run::proc_cmdline(vm.id() as i32)
            .is_some_and(|c| c.windows(4).any(|w| w == b"qemu"))
        {
            assert!(Instant::now() < deadline, "the stand-in VM never exec'd");
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::write(st.join(crate::run::PID_FILE), format!("{}\n", vm.id())).unwrap();
        fs::write(st.join(CONSOLE_LOG), "running VM").unwrap();
        let cfg = QemuConfig::new(artifacts(dir.path()), &st).qemu("/bin/sh");
        let err = prepare(cfg).unwrap_err().to_string();
        let _ = vm.kill();
        let _ = vm.wait();
        assert!(
            err.contains("in use by a running VM") && err.contains("--stop"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(st.join(CONSOLE_LOG)).unwrap(),
            "running VM"
        );
        // Once it is gone, the state is free again.
        let cfg = QemuConfig::new(artifacts(dir.path()), &st).qemu("/bin/sh");
        prepare(cfg).unwrap();
    }

    #[test]
    fn auto_accel_resolves() {
        assert_ne!(detect_accel(Accel::Auto), Accel::Auto);
        assert_eq!(detect_accel(Accel::Tcg), Accel::Tcg);
    }
}
