//! HTTP downloads into a cache addressed by SHA-256: a file whose hash is
//! known is fetched at most once, streamed to a temp name, verified, renamed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::Error;

/// Downloads files from one archive and keeps verified copies.
pub struct Fetcher {
    agent: ureq::Agent,
    cache: PathBuf,
}

/// `$XDG_CACHE_HOME/osk/debs` (or `~/.cache/osk/debs`).
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("osk-cache"));
    base.join("osk").join("debs")
}

impl Fetcher {
    pub fn new(cache: PathBuf) -> Fetcher {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_body(Some(Duration::from_secs(600)))
            .build();
        Fetcher {
            agent: config.into(),
            cache,
        }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// Where a blob with this hash lives in the cache.
    pub fn cached_path(&self, sha256: &str) -> PathBuf {
        self.cache.join(sha256)
    }

    fn open(&self, url: &str) -> Result<ureq::Body, Error> {
        match self.agent.get(url).call() {
            Ok(resp) => Ok(resp.into_body()),
            Err(ureq::Error::StatusCode(code)) => Err(Error::Http {
                url: url.to_string(),
                message: format!("HTTP status {code}"),
                not_found: code == 404 || code == 410,
            }),
            Err(e) => Err(Error::Http {
                url: url.to_string(),
                message: e.to_string(),
                not_found: false,
            }),
        }
    }

    /// Fetches a small document (InRelease) into memory, uncached: it is the
    /// one file whose hash is not known beforehand.
    pub fn get_text(&self, url: &str) -> Result<String, Error> {
        let mut body = self.open(url)?;
        body.with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| Error::Http {
                url: url.to_string(),
                message: e.to_string(),
                not_found: false,
            })
    }

    /// Returns the cached file for `sha256`, downloading `url` first if it
    /// is missing. `name` says what it is in errors (a package or index).
    pub fn get_verified(
        &self,
        url: &str,
        sha256: &str,
        size: u64,
        name: &str,
    ) -> Result<PathBuf, Error> {
        let dest = self.cached_path(sha256);
        if dest.exists() {
            return Ok(dest);
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| Error::io(&self.cache, e))?;
        tracing::info!("fetching {name}");
        let body = self.open(url)?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.cache).map_err(|e| Error::io(&self.cache, e))?;
        let mut reader = body
            .into_with_config()
            .limit(size.saturating_add(1))
            .reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::Http {
                url: url.to_string(),
                message: e.to_string(),
                not_found: false,
            })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| Error::io(tmp.path(), e))?;
        }
        let got = hex::encode(hasher.finalize());
        if got != sha256 || total != size {
            return Err(Error::HashMismatch {
                file: name.to_string(),
                expected: format!("sha256 {sha256}, {size} bytes"),
                actual: format!("sha256 {got}, {total} bytes"),
            });
        }
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        Ok(dest)
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}
