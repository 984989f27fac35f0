//! `--share HOST_DIR[:GUEST_DIR][,ro]`: host folders in the guest over
//! virtio-9p, built into QEMU (no daemon, no root), or virtiofs where a
//! virtiofsd serves them (see `super::virtiofs`). The guest learns where
//! each tag goes, and by which filesystem, from a table in fw_cfg (see
//! `osk_layout::share`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use osk_layout::share::{self as table, Fs, Share as GuestShare};

use super::{Error, Result};

/// One `--share`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host: PathBuf,
    /// Absolute; by default the host path, so `-v "$PWD":/src` means the
    /// same folder on both sides, as on Docker Desktop.
    pub guest: String,
    pub readonly: bool,
    /// 9p until `prepare` finds a virtiofsd for it.
    pub fs: Fs,
}

impl FromStr for Share {
    type Err = Error;
    fn from_str(s: &str) -> Result<Share> {
        let invalid = |reason: &str| Error::InvalidFlag {
            flag: "--share",
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let (spec, readonly) = match s.rsplit_once(',') {
            Some((spec, "ro")) => (spec, true),
            Some((spec, "rw")) => (spec, false),
            Some((_, opt)) => {
                return Err(invalid(&format!(
                    "unknown option {opt:?} (known: ro, rw); a comma in a path is not supported"
                )))
            }
            None => (s, false),
        };
        let (host, guest) = match spec.split_once(':') {
            Some((h, g)) => (h, g.to_string()),
            None => (spec, String::new()),
        };
        if host.is_empty() {
            return Err(invalid("wants HOST_DIR[:GUEST_DIR][,ro]"));
        }
        let host = std::path::absolute(host).map_err(|e| invalid(&e.to_string()))?;
        let guest = if guest.is_empty() {
            host.to_str()
                .ok_or_else(|| invalid("the host path is not UTF-8: name a GUEST_DIR"))?
                .to_string()
        } else {
            guest
        };
        if let Some(reason) = GuestShare::path_problem(&guest) {
            return Err(invalid(reason));
        }
        Ok(Share {
            host,
            guest,
            readonly,
            fs: Fs::NineP,
        })
    }
}

impl Share {
    /// A missing host folder is an error here, before QEMU starts (QEMU
    /// would only say that the fsdev failed).
    pub fn check(&self) -> Result<()> {
        if self.host.is_dir() {
            return Ok(());
        }
        Err(Error::InvalidFlag {
            flag: "--share",
            value: self.host.display().to_string(),
            reason: "no such folder on this host; create it or share another".into(),
        })
    }
}

/// The table the guest reads, for `shares` in order.
pub fn guest_table(shares: &[Share]) -> String {
    let rows: Vec<GuestShare> = shares
        .iter()
        .enumerate()
        .map(|(i, s)| GuestShare {
            tag: GuestShare::tag_for(i),
            path: s.guest.clone(),
            readonly: s.readonly,
            fs: s.fs,
        })
        .collect();
    table::encode(&rows)
}

/// QEMU arguments for `shares`; `table` is the file holding [`guest_table`],
/// `state` the directory of the virtiofsd sockets. The guest memory must be
/// shared ([`memory_backend`]) when any share is virtiofs.
pub fn argv(shares: &[Share], table_file: &Path, state: &Path) -> Vec<OsString> {
    let mut a = Vec::new();
    if shares.is_empty() {
        return a;
    }
    for (i, s) in shares.iter().enumerate() {
        let tag = GuestShare::tag_for(i);
        match s.fs {
            Fs::NineP => {
                // security_model=none: files the guest writes belong to the user
                // running QEMU, as on Docker Desktop; nothing is stored in xattrs.
                let mut fsdev = OsString::from(format!("local,id=share{i},path="));
                fsdev.push(super::config::escape_commas(&s.host));
                fsdev.push(",security_model=none");
                if s.readonly {
                    fsdev.push(",readonly=on");
                }
                a.push("-fsdev".into());
                a.push(fsdev);
                a.push("-device".into());
                a.push(format!("virtio-9p-pci,fsdev=share{i},mount_tag={tag}").into());
            }
            Fs::Virtiofs => {
                let mut chardev = OsString::from(format!("socket,id=share{i},path="));
                chardev.push(super::config::escape_commas(&super::virtiofs::socket_path(
                    state, i,
                )));
                a.push("-chardev".into());
                a.push(chardev);
                a.push("-device".into());
                // 1024: the queue size virtiofsd's own docs use; the 128 default
                // limits requests in flight.
                a.push(
                    format!("vhost-user-fs-pci,queue-size=1024,chardev=share{i},tag={tag}").into(),
                );
            }
        }
    }
    let mut fw = OsString::from(format!("name={},file=", table::FW_CFG_NAME));
    fw.push(super::config::escape_commas(table_file));
    a.push("-fw_cfg".into());
    a.push(fw);
    a
}

/// The id of the shared guest memory virtiofs needs: the virtiofsd maps
/// the guest's RAM to serve requests in place.
pub const MEMORY_ID: &str = "mem";

/// `-object` for that memory, when any share is virtiofs.
pub fn memory_backend(shares: &[Share], mem_mib: u64) -> Option<String> {
    shares
        .iter()
        .any(|s| s.fs == Fs::Virtiofs)
        .then(|| format!("memory-backend-memfd,id={MEMORY_ID},size={mem_mib}M,share=on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_path_defaults_to_the_host_path() {
        let s: Share = "/home/me/src".parse().unwrap();
        assert_eq!(s.guest, "/home/me/src");
        assert!(!s.readonly);
        let s: Share = "/home/me/src:/src,ro".parse().unwrap();
        assert_eq!(
            (s.host.as_path(), s.guest.as_str(), s.readonly),
            (Path::new("/home/me/src"), "/src", true)
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let e = "/a:rel".parse::<Share>().unwrap_err().to_string();
        assert!(e.contains("\"/a:rel\"") && e.contains("absolute"), "{e}");
        let e = "/a,rx".parse::<Share>().unwrap_err().to_string();
        assert!(e.contains("unknown option \"rx\""), "{e}");
        assert!(":/x".parse::<Share>().is_err());
        assert!("/a:/".parse::<Share>().is_err());
    }

    #[test]
    fn a_missing_folder_is_named() {
        let s: Share = "/no/such/osk/share".parse().unwrap();
        let e = s.check().unwrap_err().to_string();
        assert!(
            e.contains("/no/such/osk/share") && e.contains("no such folder"),
            "{e}"
        );
    }

    #[test]
    fn argv_has_one_9p_device_per_share_and_the_table() {
        let shares: Vec<Share> = ["/h/a:/a", "/h/c:/c,ro"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let argv: Vec<String> = argv(&shares, Path::new("/st/shares"), Path::new("/st"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            argv,
            [
                "-fsdev",
                "local,id=share0,path=/h/a,security_model=none",
                "-device",
                "virtio-9p-pci,fsdev=share0,mount_tag=osk0",
                "-fsdev",
                "local,id=share1,path=/h/c,security_model=none,readonly=on",
                "-device",
                "virtio-9p-pci,fsdev=share1,mount_tag=osk1",
                "-fw_cfg",
                "name=opt/org.osk/shares,file=/st/shares",
            ]
        );
        assert_eq!(guest_table(&shares), "osk0\trw\t/a\nosk1\tro\t/c\n");
        assert_eq!(memory_backend(&shares, 1024), None);
    }

    #[test]
    fn a_virtiofs_share_is_a_vhost_user_device_on_the_daemons_socket() {
        let mut shares: Vec<Share> = ["/h/a:/a", "/h/c:/c,ro"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        shares[0].fs = Fs::Virtiofs;
        let argv: Vec<String> = argv(&shares, Path::new("/st/shares"), Path::new("/st"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            argv[..4],
            [
                "-chardev",
                "socket,id=share0,path=/st/virtiofs0.sock",
                "-device",
                "vhost-user-fs-pci,queue-size=1024,chardev=share0,tag=osk0",
            ]
        );
        assert_eq!(
            argv[5],
            "local,id=share1,path=/h/c,security_model=none,readonly=on"
        );
        assert_eq!(
            guest_table(&shares),
            "osk0\trw,virtiofs\t/a\nosk1\tro\t/c\n"
        );
        assert_eq!(
            memory_backend(&shares, 2048).as_deref(),
            Some("memory-backend-memfd,id=mem,size=2048M,share=on")
        );
    }
}
