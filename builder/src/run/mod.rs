//! `osk run qemu`: boot what `osk build` wrote (`NAME-kernel`, `NAME-initrd.img`,
//! `NAME-cmdline`) in QEMU, for development and end-to-end tests.
//!
//! [`QemuConfig`] turns options into a QEMU argv without touching the system,
//! so every flag combination is unit-tested; [`prepare`] then creates what the
//! argv refers to (state dir, disks, metadata ISO, UEFI vars) and [`run_attached`]
//! / [`run_detached`] start QEMU.

mod config;
mod engine;
mod forward;
mod iso;
mod medium;
mod names;
mod ports;
mod relay;
mod share;
mod spawn;
mod stop;
mod virtiofs;

pub use config::{
    parse_size, Accel, Artifacts, DiskFormat, DiskSpec, Firmware, MetadataServer, Protocol,
    Publish, QemuConfig, AAVMF_CODE, AAVMF_VARS, METADATA_ADDR, METADATA_NET, OVMF_CODE, OVMF_VARS,
};
pub use forward::{
    handshake, parse_helper_table, wait_answering, ForwardSocket, Forwarder, Transport, VHOST_VSOCK,
};
pub use iso::{metadata_iso, write_metadata_iso};
pub use medium::{write_uki_esp, BootImage, ImageFormat, UKI_ESP};
pub use names::{
    ACCEL_ENV, CONSOLE_LOG, FORWARD_LOG, FORWARD_PID, FORWARD_TABLE, METADATA_ISO, MONITOR_SOCKET,
    PID_FILE, QEMU_BINARY, REACH, SHARE_TABLE, SOCKET_TABLE, UEFI_VARS,
};
pub use ports::{api_socket, Follower, Port};
pub use relay::relay;
pub use share::{guest_table, Share};
pub use spawn::{
    detect_accel, find_qemu, monitor_command, prepare, run_attached, run_detached, AttachedExit,
    Detached, Prepared,
};
pub use stop::{check_state_free, live_qemu, proc_cmdline, stop, Stopped};
pub use virtiofs::{Daemons, Dialect, ShareFs, Virtiofsd};

use std::path::PathBuf;

/// Everything that can go wrong preparing or running a VM. Each variant names
/// the file or value at fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {flag} value {value:?}: {reason}")]
    InvalidFlag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{path}: missing boot artifact (run `osk build` first, or check the NAME prefix)")]
    MissingArtifact { path: PathBuf },
    #[error(
        "QEMU not found ({looked_for}); install it with `apt-get install {package}` or pass --qemu PATH"
    )]
    QemuNotFound {
        looked_for: String,
        /// The Debian package with the emulator for the guest's architecture.
        package: &'static str,
    },
    #[error("cannot tell which architecture {path} is for (neither an x86 bzImage nor an arm64 Image); pass --arch")]
    UnknownKernel { path: PathBuf },
    #[error("qemu-img not found; it is needed to create {path} in {format} format: install it with `apt-get install qemu-utils`, or use format=raw")]
    QemuImgNotFound { path: PathBuf, format: String },
    #[error("UEFI firmware {path} not found: install it with `apt-get install {package}`")]
    FirmwareNotFound {
        path: PathBuf,
        /// The Debian package that has it.
        package: &'static str,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program}: {message}")]
    Command { program: String, message: String },
    #[error("the guest socket {guest} (host {}) did not answer within {seconds} s ({reason}); is its service running? see {}", host.display(), console.display())]
    GuestSocketSilent {
        guest: String,
        host: PathBuf,
        seconds: u64,
        /// The last probe's answer.
        reason: String,
        console: PathBuf,
    },
    #[error("QEMU exited before the guest socket {guest} (host {}) answered; see {}", host.display(), console.display())]
    ExitedBeforeSocket {
        guest: String,
        host: PathBuf,
        console: PathBuf,
    },
    #[error("STATE {} is in use by a running VM (pid {pid}); stop it with `osk run qemu --stop {}` or choose another --state", state.display(), state.display())]
    StateInUse { state: PathBuf, pid: i32 },
    #[error("{} is not the state directory of a VM: {reason}", state.display())]
    NotAVm { state: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
