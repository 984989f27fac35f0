//! `osk-metadata`: puts the machine's metadata under `/run/config`, as
//! LinuxKit's `metadata` package does, from a labelled ISO 9660 volume read
//! without mounting it:
//!
//! - `CIDATA` (`osk run --data`, LinuxKit, cloud-init NoCloud): `config`,
//!   else `user-data`, handled by [`payload`].
//! - `config-2` (OpenStack config drive): `openstack/latest/meta_data.json`
//!   gives `hostname` and `ssh/authorized_keys`; `openstack/latest/user_data`
//!   is handled by [`payload`].
//!
//! osk-init sets the hostname from `/run/config/hostname` after onboot.

pub mod devices;
pub mod iso;
pub mod openstack;
pub mod payload;
pub mod write;

#[cfg(test)]
mod testiso;

use std::path::{Path, PathBuf};

use devices::Kind;
use iso::{Iso, IsoError, Medium};

/// File holding the hostname, relative to the config directory.
pub const HOSTNAME: &str = "hostname";
/// Where sshd's start script looks for keys, relative to the config directory.
pub const AUTHORIZED_KEYS: &str = "ssh/authorized_keys";

const OPENSTACK_META: &str = "openstack/latest/meta_data.json";
const OPENSTACK_USER: &str = "openstack/latest/user_data";

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("{device}: {cause}")]
    Iso { device: PathBuf, cause: IsoError },
    #[error("{device}: {file}: not valid JSON: {cause}")]
    Json {
        device: PathBuf,
        file: &'static str,
        cause: serde_json::Error,
    },
    #[error("{device}: {cause}")]
    Payload {
        device: PathBuf,
        cause: payload::PayloadError,
    },
    #[error(transparent)]
    Write(#[from] write::WriteError),
}

/// Writes what the volume holds under `config_dir`; returns the files
/// written (relative to it), for the log. `device` only names errors.
pub fn extract<M: Medium + ?Sized>(
    medium: &M,
    device: &Path,
    kind: Kind,
    config_dir: &Path,
) -> Result<Vec<String>, MetadataError> {
    let iso_err = |cause| MetadataError::Iso {
        device: device.to_path_buf(),
        cause,
    };
    let iso = Iso::open(medium).map_err(iso_err)?;
    write::dir(config_dir, 0o755)?;
    let mut written = Vec::new();
    let user = match kind {
        Kind::NoCloud => match iso.read("config").map_err(iso_err)? {
            Some(c) => Some(c),
            None => iso.read("user-data").map_err(iso_err)?,
        },
        Kind::ConfigDrive => {
            if let Some(raw) = iso.read(OPENSTACK_META).map_err(iso_err)? {
                let meta =
                    openstack::MetaData::parse(&raw).map_err(|cause| MetadataError::Json {
                        device: device.to_path_buf(),
                        file: OPENSTACK_META,
                        cause,
                    })?;
                if let Some(h) = meta.hostname() {
                    write::file(
                        &config_dir.join(HOSTNAME),
                        format!("{h}\n").as_bytes(),
                        0o644,
                    )?;
                    written.push(HOSTNAME.to_string());
                }
                if let Some(keys) = meta.authorized_keys() {
                    write::dir(&config_dir.join("ssh"), 0o755)?;
                    write::file(&config_dir.join(AUTHORIZED_KEYS), keys.as_bytes(), 0o600)?;
                    written.push(AUTHORIZED_KEYS.to_string());
                }
            }
            iso.read(OPENSTACK_USER).map_err(iso_err)?
        }
    };
    if let Some(data) = user {
        let applied =
            payload::apply(config_dir, &data).map_err(|cause| MetadataError::Payload {
                device: device.to_path_buf(),
                cause,
            })?;
        written.push(payload::USERDATA.to_string());
        if let payload::Applied::Tree(files) = applied {
            written.extend(files);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::testiso::{Entry, IsoBuilder};
    use super::*;

    fn read(dir: &Path, rel: &str) -> String {
        std::fs::read_to_string(dir.join(rel)).unwrap()
    }

    #[test]
    fn cidata_config_tree_lands_in_the_config_dir() {
        let d = tempfile::tempdir().unwrap();
        let json = br#"{"ssh": {"entries": {"authorized_keys": {"perm": "0600", "content": "ssh-ed25519 K\n"}}}, "hostname": {"content": "m1"}}"#;
        let img = IsoBuilder::new("CIDATA")
            .file("CONFIG.;1", json)
            .file("USER-DATA.;1", json)
            .build();
        let out = d.path().join("config");
        let w = extract(img.as_slice(), Path::new("/dev/vdb"), Kind::NoCloud, &out).unwrap();
        assert_eq!(w, ["userdata", "hostname", "ssh/authorized_keys"]);
        assert_eq!(read(&out, AUTHORIZED_KEYS), "ssh-ed25519 K\n");
        assert_eq!(read(&out, HOSTNAME), "m1");
    }

    #[test]
    fn nocloud_user_data_alone_is_used_raw() {
        let d = tempfile::tempdir().unwrap();
        let img = IsoBuilder::new("cidata")
            .file("user-data", b"#cloud-config\n")
            .file("meta-data", b"instance-id: i\n")
            .build();
        let w = extract(img.as_slice(), Path::new("sr0"), Kind::NoCloud, d.path()).unwrap();
        assert_eq!(w, ["userdata"]);
        assert_eq!(read(d.path(), "userdata"), "#cloud-config\n");
    }

    #[test]
    fn openstack_config_drive() {
        let d = tempfile::tempdir().unwrap();
        let meta = br#"{"hostname": "web1.novalocal", "public_keys": {"mykey": "ssh-rsa AAA me"}}"#;
        let img = IsoBuilder::new("config-2")
            .dir(
                "OPENSTACK",
                vec![
                    Entry::dir("2012-08-10", vec![]),
                    Entry::dir(
                        "LATEST",
                        vec![
                            Entry::file("META_DATA.JSON;1", meta).rock_ridge("meta_data.json"),
                            Entry::file("USER_DATA.;1", br#"{"motd": {"content": "hi"}}"#)
                                .rock_ridge("user_data"),
                        ],
                    ),
                ],
            )
            .dir("EC2", vec![])
            .build();
        let w = extract(
            img.as_slice(),
            Path::new("sr0"),
            Kind::ConfigDrive,
            d.path(),
        )
        .unwrap();
        assert_eq!(w, ["hostname", "ssh/authorized_keys", "userdata", "motd"]);
        assert_eq!(read(d.path(), HOSTNAME), "web1.novalocal\n");
        assert_eq!(read(d.path(), AUTHORIZED_KEYS), "ssh-rsa AAA me\n");
        assert_eq!(read(d.path(), "motd"), "hi");
    }

    #[test]
    fn errors_name_the_device_and_the_file() {
        let d = tempfile::tempdir().unwrap();
        let img = IsoBuilder::new("config-2")
            .dir(
                "openstack",
                vec![Entry::dir(
                    "latest",
                    vec![Entry::file("meta_data.json", b"{oops")],
                )],
            )
            .build();
        let e = extract(
            img.as_slice(),
            Path::new("/dev/sr0"),
            Kind::ConfigDrive,
            d.path(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/dev/sr0: openstack/latest/meta_data.json: not valid JSON"),
            "{e}"
        );
        let img = IsoBuilder::new("CIDATA")
            .file("CONFIG.;1", br#"{"../x": {"content": "x"}}"#)
            .build();
        let e = extract(
            img.as_slice(),
            Path::new("/dev/vdb"),
            Kind::NoCloud,
            d.path(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/dev/vdb: user data entry \"../x\""),
            "{e}"
        );
    }
}
