//! Names `config` and `spawn` share: the QEMU binary, its environment, the state directory's files.

/// The QEMU binary looked up on PATH when `--qemu` is not given.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Environment variable that sets the accelerator when `--accel` is not given.
pub const ACCEL_ENV: &str = "OSK_QEMU_ACCEL";
/// Files in the state directory.
pub const MONITOR_SOCKET: &str = "monitor.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const PID_FILE: &str = "qemu.pid";
pub const METADATA_ISO: &str = "metadata.iso";
pub const UEFI_VARS: &str = "OVMF_VARS.fd";
/// The guest's `--share` table, handed over through fw_cfg.
pub const SHARE_TABLE: &str = "shares";
/// The guest's `--forward-socket` table, handed over through fw_cfg.
pub const SOCKET_TABLE: &str = "sockets";
/// The forwards a detached VM's helper serves: `PORT<TAB>HOST_PATH` per line.
pub const FORWARD_TABLE: &str = "forwards";
/// The pid and log of that helper.
pub const FORWARD_PID: &str = "forward.pid";
pub const FORWARD_LOG: &str = "forward.log";
/// How to reach a detached VM: its sockets and published ports, one per line.
pub const REACH: &str = "reach";
/// Longest path a unix socket address can hold (sun_path is 108 bytes, NUL included).
pub(super) const MAX_SOCKET_PATH: usize = 107;
