//! OpenStack's `openstack/latest/meta_data.json`: the hostname and the
//! public keys, written where LinuxKit's OpenStack provider puts them.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The fields of `meta_data.json` osk uses; the rest is ignored.
#[derive(Debug, Default, Deserialize)]
pub struct MetaData {
    pub hostname: Option<String>,
    /// Key name → OpenSSH public key.
    #[serde(default)]
    pub public_keys: BTreeMap<String, String>,
}

impl MetaData {
    pub fn parse(data: &[u8]) -> Result<MetaData, serde_json::Error> {
        serde_json::from_slice(data)
    }

    /// `authorized_keys` contents, one key a line in key-name order; `None` without keys.
    pub fn authorized_keys(&self) -> Option<String> {
        let keys: Vec<&str> = self
            .public_keys
            .values()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .collect();
        (!keys.is_empty()).then(|| keys.join("\n") + "\n")
    }

    /// The hostname as given (LinuxKit keeps a domain such as `.novalocal` too).
    pub fn hostname(&self) -> Option<&str> {
        let h = self.hostname.as_deref()?.trim();
        (!h.is_empty()).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_hostname() {
        let m = MetaData::parse(
            br#"{"uuid": "u", "hostname": "web1.novalocal", "name": "web1",
                 "public_keys": {"b": "ssh-ed25519 BBB b\n", "a": "ssh-rsa AAA a"},
                 "launch_index": 0}"#,
        )
        .unwrap();
        assert_eq!(m.hostname(), Some("web1.novalocal"));
        assert_eq!(
            m.authorized_keys().unwrap(),
            "ssh-rsa AAA a\nssh-ed25519 BBB b\n"
        );
    }

    #[test]
    fn nothing_to_write_without_fields() {
        let m = MetaData::parse(b"{}").unwrap();
        assert_eq!(m.hostname(), None);
        assert_eq!(m.authorized_keys(), None);
        assert!(MetaData::parse(b"not json").is_err());
    }
}
