//! Which Debian archive to use: `--mirror`, `OSK_DEBIAN_MIRROR`, or the
//! host's own apt sources. No archive host is ever written into osk itself.

use std::path::Path;

use super::index::paragraphs;
use super::Error;

/// Environment variable naming the Debian mirror (base URL of the archive).
pub const MIRROR_ENV: &str = "OSK_DEBIAN_MIRROR";

/// Picks the mirror: explicit flag, then the environment, then the host's apt
/// configuration under `etc_apt` (normally `/etc/apt`).
pub fn mirror(flag: Option<&str>, etc_apt: &Path) -> Result<String, Error> {
    if let Some(m) = flag.filter(|m| !m.is_empty()) {
        return Ok(normalise(m));
    }
    if let Ok(m) = std::env::var(MIRROR_ENV) {
        if !m.is_empty() {
            return Ok(normalise(&m));
        }
    }
    from_apt_config(etc_apt)?.ok_or(Error::NoMirror)
}

fn normalise(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// A `deb` source entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

impl Source {
    /// A Debian main archive rather than the security archive or a
    /// third-party repository with its own key.
    fn is_debian_archive(&self) -> bool {
        let keyring_ok = self
            .signed_by
            .as_deref()
            .is_none_or(|k| k.contains("debian-archive-keyring"));
        keyring_ok
            && (self.uri.starts_with("http://") || self.uri.starts_with("https://"))
            && self.suites.iter().any(|s| !s.ends_with("-security"))
    }
}

/// The first Debian `deb` entry of the host's apt configuration, in apt's
/// reading order: `sources.list`, then `sources.list.d/` sorted by name.
pub fn from_apt_config(etc_apt: &Path) -> Result<Option<String>, Error> {
    let mut sources = Vec::new();
    let list = etc_apt.join("sources.list");
    if list.exists() {
        let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
        sources.extend(parse_one_line(&text));
    }
    let dir = etc_apt.join("sources.list.d");
    if dir.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let text = || std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e));
            if name.ends_with(".sources") {
                sources.extend(parse_deb822(&text()?));
            } else if name.ends_with(".list") {
                sources.extend(parse_one_line(&text()?));
            }
        }
    }
    Ok(sources
        .into_iter()
        .find(Source::is_debian_archive)
        .map(|s| normalise(&s.uri)))
}

fn parse_deb822(text: &str) -> Vec<Source> {
    paragraphs(text)
        .into_iter()
        .filter(|p| {
            p.get("Types")
                .is_some_and(|t| t.split_whitespace().any(|t| t == "deb"))
                && p.get("Enabled").is_none_or(|e| e != "no")
        })
        .flat_map(|p| {
            let suites: Vec<String> = p
                .get("Suites")
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
            let signed_by = p.get("Signed-By").cloned();
            p.get("URIs")
                .map(|u| u.split_whitespace().map(String::from).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(move |uri| Source {
                    uri,
                    suites: suites.clone(),
                    signed_by: signed_by.clone(),
                })
        })
        .collect()
}

fn parse_one_line(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb")?;
            if !rest.starts_with([' ', '\t']) {
                return None;
            }
            let rest = rest.trim_start();
            let (options, rest) = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?,
                None => ("", rest),
            };
            let signed_by = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(String::from);
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_string();
            let suites = words
                .next()
                .map(|s| vec![s.to_string()])
                .unwrap_or_default();
            Some(Source {
                uri,
                suites,
                signed_by,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_first_debian_entry_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\n\n\
             Types: deb\nURIs: http://security.invalid/debian-security\nSuites: bookworm-security\n\n\
             Types: deb\n# a comment\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .unwrap();
        assert_eq!(
            from_apt_config(dir.path()).unwrap().as_deref(),
            Some("http://mirror.invalid/debian")
        );
    }

    #[test]
    fn one_line_format_with_options() {
        let s = parse_one_line(
            "# deb http://no.invalid x\ndeb [arch=amd64 signed-by=/k/debian-archive-keyring.gpg] http://m.invalid/debian bookworm main\n",
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].uri, "http://m.invalid/debian");
        assert_eq!(s[0].suites, ["bookworm"]);
        assert!(s[0].is_debian_archive());
    }

    #[test]
    fn third_party_keyring_is_skipped_and_nothing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "deb [signed-by=/usr/share/keyrings/vendor.gpg] https://vendor.invalid/apt stable main\n",
        )
        .unwrap();
        assert_eq!(from_apt_config(dir.path()).unwrap(), None);
        assert!(matches!(
            mirror(None, dir.path()).map_err(|e| e.to_string()),
            Err(m) if m.contains(MIRROR_ENV) || std::env::var(MIRROR_ENV).is_ok()
        ));
    }

    #[test]
    fn flag_wins() {
        assert_eq!(
            mirror(Some("http://x.invalid/debian/"), Path::new("/nonexistent")).unwrap(),
            "http://x.invalid/debian"
        );
    }
}
