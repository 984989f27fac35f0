//! Host networking without `ip`: the hostname, and the link operations
//! runtime.json's `interfaces` needs behind [`Links`] (real: [`Rtnetlink`]).

mod rtnetlink;

use std::io;

pub use rtnetlink::{link_up, Rtnetlink};

/// Link changes a bundle's `interfaces` make, as a seam: the real one speaks
/// rtnetlink, tests record the calls.
pub trait Links {
    /// Deletes a root-namespace link (and so its veth peer), if it exists.
    fn delete_link(&self, name: &str) -> io::Result<()>;
    /// Creates a veth pair: `name` inside the network namespace of `pid`,
    /// `peer` in the root namespace.
    fn create_veth(&self, name: &str, peer: &str, pid: u32) -> io::Result<()>;
    /// Moves an existing root-namespace interface into the namespace of `pid`.
    fn move_link(&self, name: &str, pid: u32) -> io::Result<()>;
}

/// `osk-` plus the last three bytes of a MAC address.
pub fn hostname_from_mac(mac: &str) -> Option<String> {
    let hex: String = mac.split(':').collect();
    (hex.len() == 12 && hex != "000000000000").then(|| format!("osk-{}", &hex[6..]))
}

/// The first line of a hostname file, trimmed; `None` if missing or blank.
pub fn read_hostname(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let h = text.lines().next().unwrap_or_default().trim();
    (!h.is_empty()).then(|| h.to_string())
}

/// The hostname to set: /etc/hostname, else from the first non-loopback MAC.
pub fn pick_hostname() -> String {
    if let Some(h) = read_hostname(std::path::Path::new(crate::paths::ETC_HOSTNAME)) {
        return h;
    }
    interfaces()
        .iter()
        .find_map(|n| {
            let mac = std::fs::read_to_string(format!("/sys/class/net/{n}/address")).ok()?;
            hostname_from_mac(mac.trim())
        })
        .unwrap_or_else(|| "osk".into())
}

/// Every network interface but loopback.
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_files_give_their_first_trimmed_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hostname");
        assert_eq!(read_hostname(&p), None);
        std::fs::write(&p, " web1 \nsecond\n").unwrap();
        assert_eq!(read_hostname(&p).as_deref(), Some("web1"));
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(read_hostname(&p), None);
    }

    #[test]
    fn hostname_from_last_three_mac_bytes() {
        assert_eq!(
            hostname_from_mac("52:54:00:12:34:56").as_deref(),
            Some("osk-123456")
        );
        assert_eq!(hostname_from_mac("00:00:00:00:00:00"), None);
        assert_eq!(hostname_from_mac("bogus"), None);
    }
}
