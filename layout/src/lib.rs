//! The contract between `osk build` and `osk-init`.
//!
//! Everything the builder writes into an image and the init reads back is
//! named here, so the two sides cannot drift apart: where containers live,
//! what `runtime.json` holds, how boot markers look on the console, how a
//! kernel module's metadata is read.

pub mod forward;
pub mod marker;
pub mod modinfo;
pub mod runtime;
pub mod share;

pub use runtime::{BindNs, Interface, Mount, RestartPolicy, Runtime};

/// Root-relative directory holding one bundle per onboot container, named `NNN-name`.
pub const ONBOOT_DIR: &str = "containers/onboot";
/// Root-relative directory holding one bundle per shutdown container, named `NNN-name`.
pub const ONSHUTDOWN_DIR: &str = "containers/onshutdown";
/// Root-relative directory holding one bundle per service, named after the service.
pub const SERVICES_DIR: &str = "containers/services";
/// Root-relative directory holding one directory per manifest volume, named
/// after the volume (LinuxKit's layout): [`VOLUME_LOWER`], [`VOLUME_MERGED`]
/// and, for a writable volume only, [`VOLUME_TMP`].
pub const VOLUMES_DIR: &str = "containers/volumes";
/// Inside a volume: its contents as built (the volume image's root filesystem, or empty).
pub const VOLUME_LOWER: &str = "lower";
/// Inside a volume: where init mounts the view containers bind (`/containers/volumes/NAME/merged`).
pub const VOLUME_MERGED: &str = "merged";
/// Inside a volume: present only when the volume is writable (LinuxKit's
/// marker); without it init mounts the volume read-only.
pub const VOLUME_TMP: &str = "tmp";

/// The OCI runtime spec inside a bundle.
pub const CONFIG_JSON: &str = "config.json";
/// osk/LinuxKit runtime extras inside a bundle (see [`Runtime`]).
pub const RUNTIME_JSON: &str = "runtime.json";
/// The pre-unpacked root filesystem inside a bundle.
pub const ROOTFS_DIR: &str = "rootfs";

/// Kernel image layout (LinuxKit's): the kernel binary.
pub const KERNEL_BINARY: &str = "kernel";
/// Kernel image layout (LinuxKit's): a tar of `lib/modules/...`, merged into the root.
pub const KERNEL_TAR: &str = "kernel.tar";
/// Kernel image layout (LinuxKit's): optional early microcode cpio.
pub const KERNEL_UCODE: &str = "ucode.cpio";
/// Kernel image layout (osk's): the boards' device trees, `dtbs/NAME.dtb`,
/// for the formats that hand one to a board's firmware (`--format rpi4`).
pub const KERNEL_DTBS: &str = "dtbs";

/// Optional root-relative list of module names (one per line) to load at
/// every boot whatever the hardware. osk-init also loads the drivers of the
/// devices present, and any other module when the kernel asks for it.
pub const MODULES_LIST: &str = "etc/osk/modules";

/// containerd namespace in which osk-init runs services.
pub const CONTAINERD_NAMESPACE: &str = "services.osk";
/// osk-init's control socket, used by `oskctl`.
pub const CONTROL_SOCKET: &str = "/run/osk/control.sock";
/// Where service logs (`NAME.log`), onboot logs (`onboot/NAME.log`) and `init.log` go.
pub const LOG_DIR: &str = "/var/log";

/// The image label LinuxKit (and osk) read per-image runtime settings from.
pub const CONFIG_LABEL: &str = "org.mobyproject.config";

/// Name of a bundle directory for the `index`-th (0-based) onboot/onshutdown container.
pub fn ordered_bundle_name(index: usize, name: &str) -> String {
    format!("{index:03}-{name}")
}

/// Root-relative directory of volume `name`.
pub fn volume_dir(name: &str) -> String {
    format!("{VOLUMES_DIR}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_names_sort_in_manifest_order() {
        let mut names: Vec<String> = [2usize, 10, 1]
            .iter()
            .map(|i| ordered_bundle_name(*i, "x"))
            .collect();
        names.sort();
        assert_eq!(names, ["001-x", "002-x", "010-x"]);
    }
}
