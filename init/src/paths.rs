//! Every guest path osk-init owns, in one place (the ones the builder
//! shares live in `osk_layout`).

/// osk-init's own runtime state.
pub const RUN_OSK: &str = "/run/osk";
/// Binaries init provides at run time; first in containerd's and runc's PATH.
pub const BIN_DIR: &str = "/run/osk/bin";
/// The link to the sealed runc (see `containerd::sealedrunc`).
pub const SEALED_RUNC: &str = "/run/osk/bin/runc";
/// The link the kernel's modprobe helper knob points at.
pub const MODPROBE_LINK: &str = "/run/osk/bin/modprobe";
/// The module index saved at boot for the modprobe helper.
pub const MODULES_INDEX: &str = "/run/osk/modules.json";
/// containerd's configuration, written at each start.
pub const CONTAINERD_CONFIG: &str = "/run/osk/containerd.toml";
/// runc's state for onboot and onshutdown containers.
pub const RUNC_ROOT: &str = "/run/osk/runc";
/// Services' stdio FIFOs.
pub const IO_DIR: &str = "/run/osk/io";

/// containerd's state directory.
pub const CONTAINERD_STATE: &str = "/run/containerd";
/// containerd's gRPC socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd's ttrpc socket.
pub const CONTAINERD_TTRPC_SOCKET: &str = "/run/containerd/containerd.sock.ttrpc";
/// Where the shims' sockets are (see `containerd::shimstart`).
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// containerd's persistent root (a tmpfs on osk).
pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";

/// Where the metadata onboot container leaves its tree (LinuxKit's path).
pub const METADATA_DIR: &str = "/run/config";
/// The hostname the metadata container found (LinuxKit's path).
pub const METADATA_HOSTNAME: &str = "/run/config/hostname";
/// The hostname init set, for containers to bind.
pub const HOSTNAME_FILE: &str = "/etc/hostname.osk";
/// The image's own hostname, if it ships one.
pub const ETC_HOSTNAME: &str = "/etc/hostname";
/// The files runc binds into host-networked containers; init creates them
/// when the image has none.
pub const ETC_HOSTS: &str = "/etc/hosts";
pub const ETC_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Logs of onboot containers.
pub const ONBOOT_LOG_DIR: &str = "/var/log/onboot";
/// Logs of onshutdown containers.
pub const ONSHUTDOWN_LOG_DIR: &str = "/var/log/onshutdown";

/// The cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
