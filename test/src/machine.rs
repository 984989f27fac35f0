//! One VM under test: booted through `osk run qemu --detach`, watched through
//! its console log, driven through its monitor, always killed on drop.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use osk_builder::run::{Detached, CONSOLE_LOG, MONITOR_SOCKET, PID_FILE};
use osk_layout::marker::{self, Event};

/// How to boot a [`Machine`]. Guest ports in `publish` get free host ports.
#[derive(Debug, Clone)]
pub struct BootOpts {
    pub cpus: u32,
    pub mem_mib: u64,
    /// Guest TCP ports to publish; see [`Machine::port`].
    pub publish: Vec<u16>,
    /// `--disk` values, passed as they are.
    pub disks: Vec<String>,
    pub data: Option<String>,
    pub append: Option<String>,
    /// Let a guest reboot restart the VM (default: a reboot ends QEMU).
    pub reboot: bool,
    pub uefi: bool,
    /// Reuse this state directory (to boot again with the same disks).
    pub state_dir: Option<PathBuf>,
    /// More `osk run qemu` arguments, passed as they are (e.g. `--share`).
    pub extra: Vec<String>,
    /// `--metadata-server`: a server on the host the guest reaches as 169.254.169.254.
    pub metadata_server: Option<String>,
    /// `--accel`: `tcg` (the default: KVM hangs on this project's hosts) or `kvm`.
    pub accel: &'static str,
}

impl Default for BootOpts {
    fn default() -> BootOpts {
        BootOpts {
            cpus: 1,
            mem_mib: 512,
            publish: Vec::new(),
            disks: Vec::new(),
            data: None,
            append: None,
            reboot: false,
            uefi: false,
            state_dir: None,
            extra: Vec::new(),
            metadata_server: None,
            accel: "tcg",
        }
    }
}

/// A running (or finished) VM.
pub struct Machine {
    vm: Detached,
    /// Owns the state directory unless the caller gave one.
    _state: Option<tempfile::TempDir>,
    ports: BTreeMap<u16, u16>,
    /// Bytes of the console log consumed by `wait_for_*`.
    cursor: u64,
    pending: String,
    pub booted_at: Instant,
}

impl Machine {
    /// Boots `PREFIX-kernel` + `PREFIX-initrd.img` with `osk run qemu --detach`
    /// (`--accel tcg` unless `opts.accel` says otherwise).
    pub fn boot(prefix: &Path, opts: &BootOpts) -> Result<Machine> {
        let (state_tmp, state_dir) = match &opts.state_dir {
            Some(d) => (None, d.clone()),
            None => {
                // Under /tmp: the monitor socket path must stay under 108 bytes.
                let t = tempfile::Builder::new().prefix("osk-e2e-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut ports = BTreeMap::new();
        let mut cmd = Command::new(crate::osk_bin()?);
        cmd.args(["run", "qemu", "--detach", "--accel", opts.accel])
            .arg("--state")
            .arg(&state_dir)
            .args([
                "--cpus",
                &opts.cpus.to_string(),
                "--mem",
                &opts.mem_mib.to_string(),
            ]);
        for &guest in &opts.publish {
            let host = crate::free_port()?;
            ports.insert(guest, host);
            cmd.arg("--publish").arg(format!("{host}:{guest}"));
        }
        for d in &opts.disks {
            cmd.arg("--disk").arg(d);
        }
        if let Some(d) = &opts.data {
            cmd.arg("--data").arg(d);
        }
        if let Some(m) = &opts.metadata_server {
            cmd.arg("--metadata-server").arg(m);
        }
        if let Some(a) = &opts.append {
            cmd.arg(format!("--append={a}"));
        }
        if !opts.reboot {
            cmd.arg("--no-reboot");
        }
        if opts.uefi {
            cmd.arg("--uefi");
        }
        cmd.args(&opts.extra);
        cmd.arg(prefix);
        let booted_at = Instant::now();
        let out = cmd.output().context("running osk run qemu")?;
        ensure!(
            out.status.success(),
            "osk run qemu {} failed ({}):\n{}",
            prefix.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid_file = state_dir.join(PID_FILE);
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{} holds no pid", pid_file.display()))?;
        Ok(Machine {
            vm: Detached {
                pid,
                monitor_socket: state_dir.join(MONITOR_SOCKET),
                console_log: state_dir.join(CONSOLE_LOG),
                pid_file,
                state_dir,
            },
            _state: state_tmp,
            ports,
            cursor: 0,
            pending: String::new(),
            booted_at,
        })
    }

    /// The host port forwarded to `guest_port`.
    pub fn port(&self, guest_port: u16) -> u16 {
        *self
            .ports
            .get(&guest_port)
            .unwrap_or_else(|| panic!("guest port {guest_port} was not in BootOpts::publish"))
    }

    pub fn state_dir(&self) -> &Path {
        &self.vm.state_dir
    }

    /// The whole console output so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.vm.console_log).unwrap_or_default())
            .into_owned()
    }

    /// Next complete console line, if one has arrived.
    fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(nl) = self.pending.find('\n') {
                let line: String = self.pending.drain(..=nl).collect();
                return Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()));
            }
            let mut f = match std::fs::File::open(&self.vm.console_log) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            f.seek(SeekFrom::Start(self.cursor))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            if buf.is_empty() {
                return Ok(None);
            }
            self.cursor += buf.len() as u64;
            self.pending.push_str(&String::from_utf8_lossy(&buf));
        }
    }

    /// Waits for a console line for which `pred` holds and returns it. Lines
    /// are consumed: the next wait starts after the matched line.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(line) = self.next_line()? {
                if pred(&line) {
                    return Ok(line);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no console line {what} within {timeout:?}; console so far:\n{}",
                    tail(&self.console(), 40)
                );
            }
            if !self.vm.is_running() {
                // One last read: QEMU may have written the line just before exiting.
                while let Some(line) = self.next_line()? {
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                bail!(
                    "QEMU exited before a console line {what}; console:\n{}",
                    tail(&self.console(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(&format!("containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Waits for the boot marker `event` and returns the guest uptime it carries.
    pub fn wait_for_marker(&mut self, event: &Event, timeout: Duration) -> Result<f64> {
        let line = self.wait_for(&format!("with marker {event}"), timeout, |l| {
            marker::parse(l).is_some_and(|(_, e)| &e == event)
        })?;
        Ok(marker::parse(&line).expect("matched above").0)
    }

    /// Every marker printed so far, in order.
    pub fn markers(&self) -> Vec<(f64, Event)> {
        self.console().lines().filter_map(marker::parse).collect()
    }

    /// Sends a QEMU human-monitor command (`system_powerdown`, `quit`, ...).
    pub fn monitor(&self, command: &str) -> Result<String> {
        Ok(self.vm.monitor(command)?)
    }

    pub fn is_running(&self) -> bool {
        self.vm.is_running()
    }

    /// CPU seconds QEMU has used so far (all its threads, user and system).
    /// Under TCG that is the guest's work, translation included, and it
    /// grows only while QEMU runs: time other processes take from it on a
    /// busy host is not counted, as it is in the guest's uptime.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.vm.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        cpu_seconds_of_stat(&stat).with_context(|| format!("no utime/stime in {path}"))
    }

    /// Waits for QEMU to exit (guest power-off or `quit`).
    pub fn wait_exit(&self, timeout: Duration) -> Result<Duration> {
        ensure!(
            self.vm.wait_exit(timeout),
            "QEMU still running after {timeout:?}; console:\n{}",
            tail(&self.console(), 40)
        );
        Ok(self.booted_at.elapsed())
    }

    /// Stops QEMU now.
    pub fn kill(&self) {
        self.vm.kill();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let running = self.vm.is_running();
        self.vm.kill();
        if std::thread::panicking() || running {
            eprintln!(
                "--- console of VM {} ({}):\n{}",
                self.vm.pid,
                if running { "killed" } else { "exited" },
                tail(&self.console(), 60)
            );
        }
    }
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat, in clock ticks) in
/// seconds. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The clock tick of /proc times: USER_HZ, 100 in Linux's ABI on x86.
const USER_HZ: f64 = 100.0;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command` on `vm` over its published ssh port (22) and returns its
/// standard output; a non-zero exit is an error with ssh's standard error.
pub fn ssh_ok(vm: &Machine, key: &Path, command: &str) -> Result<String> {
    let out = crate::ssh(vm.port(22), key, command)?;
    ensure!(
        out.status.success(),
        "ssh {command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Retries ssh until sshd answers (it starts after the port forward
/// exists), for up to 120 s.
pub fn wait_ssh(vm: &Machine, key: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match ssh_ok(vm, key, "true") {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // pid (comm) state ppid ... utime(14) stime(15) ...
        let stat = "42 (qemu (x) y) S 1 42 42 0 -1 4194560 500 0 0 0 250 150 0 0 20 0 3 0";
        assert_eq!(cpu_seconds_of_stat(stat), Some(4.0));
        assert_eq!(cpu_seconds_of_stat("42 (qemu) S 1"), None);
    }
}
