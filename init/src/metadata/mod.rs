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
//! Without either, [`service`] asks the metadata service at
//! 169.254.169.254 (OpenStack's, then EC2's) and the same tree is written.
//!
//! osk-init sets the hostname from `/run/config/hostname` after onboot.

pub mod devices;
pub mod http;
pub mod iso;
pub mod openstack;
pub mod payload;
pub mod service;
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
    /// `origin` is the device or URL the user data came from.
    #[error("{origin}: {cause}")]
    Payload {
        origin: String,
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
                let keys = meta.authorized_keys();
                write_identity(config_dir, meta.hostname(), keys.as_deref(), &mut written)?;
            }
            iso.read(OPENSTACK_USER).map_err(iso_err)?
        }
    };
    if let Some(data) = user {
        write_user_data(
            config_dir,
            &data,
            &device.display().to_string(),
            &mut written,
        )?;
    }
    Ok(written)
}

/// Writes what the metadata service gave under `config_dir`, as
/// [`extract`] does for a config drive; `origin` names it in errors.
pub fn write_cloud(
    meta: &service::CloudMeta,
    origin: &str,
    config_dir: &Path,
) -> Result<Vec<String>, MetadataError> {
    write::dir(config_dir, 0o755)?;
    let mut written = Vec::new();
    write_identity(
        config_dir,
        meta.hostname.as_deref(),
        meta.authorized_keys.as_deref(),
        &mut written,
    )?;
    if let Some(data) = &meta.user_data {
        write_user_data(config_dir, data, origin, &mut written)?;
    }
    Ok(written)
}

/// The hostname and the ssh keys a cloud gives outside the user data.
fn write_identity(
    config_dir: &Path,
    hostname: Option<&str>,
    keys: Option<&str>,
    written: &mut Vec<String>,
) -> Result<(), write::WriteError> {
    match hostname {
        Some(h) if valid_hostname(h) => {
            write::file(
                &config_dir.join(HOSTNAME),
                format!("{h}\n").as_bytes(),
                0o644,
            )?;
            written.push(HOSTNAME.to_string());
        }
        Some(h) => {
            // Escaped and cut: the name is untrusted and goes to the console.
            let shown: String = h.chars().take(64).collect();
            tracing::warn!("ignoring hostname {shown:?}: not a valid host name");
        }
        None => {}
    }
    if let Some(keys) = keys {
        write::dir(&config_dir.join("ssh"), 0o755)?;
        write::file(&config_dir.join(AUTHORIZED_KEYS), keys.as_bytes(), 0o600)?;
        written.push(AUTHORIZED_KEYS.to_string());
    }
    Ok(())
}

fn write_user_data(
    config_dir: &Path,
    data: &[u8],
    origin: &str,
    written: &mut Vec<String>,
) -> Result<(), MetadataError> {
    let applied = payload::apply(config_dir, data).map_err(|cause| MetadataError::Payload {
        origin: origin.to_string(),
        cause,
    })?;
    written.push(payload::USERDATA.to_string());
    if let payload::Applied::Tree(files) = applied {
        written.extend(files);
    }
    Ok(())
}

/// A name `sethostname` takes and resolvers agree on: dot-separated labels
/// of letters, digits and `-`, 253 bytes at most.
fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
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
    fn cloud_metadata_lands_like_a_config_drive() {
        let d = tempfile::tempdir().unwrap();
        let meta = service::CloudMeta {
            source: service::Source::Ec2,
            hostname: Some("ip-10-0-0-5".into()),
            authorized_keys: Some("ssh-rsa AAA me\n".into()),
            user_data: Some(br#"{"motd": {"content": "hi"}}"#.to_vec()),
        };
        let w = write_cloud(&meta, "http://169.254.169.254", d.path()).unwrap();
        assert_eq!(w, ["hostname", "ssh/authorized_keys", "userdata", "motd"]);
        assert_eq!(read(d.path(), HOSTNAME), "ip-10-0-0-5\n");
        assert_eq!(read(d.path(), AUTHORIZED_KEYS), "ssh-rsa AAA me\n");
        let bad = service::CloudMeta {
            hostname: Some("evil\x1b[2J name".into()),
            authorized_keys: None,
            user_data: Some(br#"{"../x": {"content": "x"}}"#.to_vec()),
            ..meta
        };
        let d = tempfile::tempdir().unwrap();
        let e = write_cloud(&bad, "http://169.254.169.254", d.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("http://169.254.169.254: user data entry \"../x\""),
            "{e}"
        );
        assert!(
            !d.path().join(HOSTNAME).exists(),
            "an invalid hostname is not written"
        );
    }

    #[test]
    fn hostnames() {
        for good in ["web1", "web1.novalocal", "ip-10-0-0-5.ec2.internal", "a"] {
            assert!(valid_hostname(good), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "a..b", "a b", "a/b", "é", long.as_str(), "x.\n"] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
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
