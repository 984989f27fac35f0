//! `InRelease`: the archive's signed table of contents.
//!
//! The cleartext signature is checked against the archive keyring (primary
//! keys and their signing subkeys, whose binding signatures must hold) before
//! a single line of the text is trusted.

use std::collections::BTreeMap;
use std::path::Path;

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};

use super::index::paragraphs;
use super::Error;

/// Default keyring, shipped by Debian's `debian-archive-keyring` package.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Set to `1` to accept a Release past its `Valid-Until` (`--allow-expired-release`).
pub const ALLOW_EXPIRED_ENV: &str = "OSK_ALLOW_EXPIRED_RELEASE";

/// Public keys trusted to sign archives.
pub struct Keyring {
    keys: Vec<SignedPublicKey>,
    origin: String,
}

impl Keyring {
    /// Reads a binary (or ASCII-armored) OpenPGP keyring.
    pub fn load(path: &Path) -> Result<Keyring, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Keyring::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses keys from bytes; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Keyring, Error> {
        let bad = |m: String| Error::Keyring {
            path: origin.to_string(),
            message: m,
        };
        let keys: Vec<SignedPublicKey> = if bytes.starts_with(b"-----BEGIN") {
            SignedPublicKey::from_armor_many(bytes)
                .map_err(|e| bad(e.to_string()))?
                .0
                .collect::<Result<_, _>>()
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<_, _>>()
        }
        .map_err(|e| bad(e.to_string()))?;
        if keys.is_empty() {
            return Err(bad("no public keys in keyring".to_string()));
        }
        Ok(Keyring {
            keys,
            origin: origin.to_string(),
        })
    }

    pub fn from_keys(keys: Vec<SignedPublicKey>, origin: &str) -> Keyring {
        Keyring {
            keys,
            origin: origin.to_string(),
        }
    }

    /// Checks a cleartext-signed document and returns its text when at least
    /// one signature was made by a key (or bound subkey) of this keyring.
    pub fn verify_cleartext(&self, armored: &str, origin: &str) -> Result<String, Error> {
        let bad = |m: String| Error::Signature {
            file: origin.to_string(),
            message: m,
        };
        let (msg, _) = CleartextSignedMessage::from_string(armored)
            .map_err(|e| bad(format!("not a cleartext-signed message: {e}")))?;
        for key in &self.keys {
            if msg.verify(&key.primary_key).is_ok() {
                return Ok(msg.signed_text_lf());
            }
            for sub in &key.public_subkeys {
                // A subkey counts only if the primary key really bound it.
                if sub.verify_bindings(&key.primary_key).is_ok() && msg.verify(&sub.key).is_ok() {
                    return Ok(msg.signed_text_lf());
                }
            }
        }
        Err(bad(format!(
            "no valid signature by a key in {} (tampered file or wrong --keyring)",
            self.origin
        )))
    }
}

trait SignedTextLf {
    fn signed_text_lf(&self) -> String;
}

impl SignedTextLf for CleartextSignedMessage {
    /// The verified text with `\n` line ends, as the archive wrote it.
    fn signed_text_lf(&self) -> String {
        let mut t = self.signed_text().replace("\r\n", "\n");
        t.push('\n');
        t
    }
}

/// A file listed in a Release file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sha256: String,
    pub size: u64,
}

/// The parsed (already verified) Release text.
#[derive(Debug, Clone)]
pub struct Release {
    pub suite: String,
    pub codename: String,
    /// `Date`, seconds since the epoch.
    pub date: Option<i64>,
    /// `Valid-Until`, seconds since the epoch; Debian's main suites have none.
    pub valid_until: Option<i64>,
    pub files: BTreeMap<String, Entry>,
}

impl Release {
    pub fn parse(text: &str, origin: &str) -> Result<Release, Error> {
        let p = paragraphs(text)
            .into_iter()
            .next()
            .ok_or_else(|| Error::Release {
                file: origin.to_string(),
                message: "empty Release".to_string(),
            })?;
        let mut files = BTreeMap::new();
        for line in p.get("SHA256").map(String::as_str).unwrap_or("").lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [sha, size, name] = parts[..] {
                let size = size.parse().map_err(|_| Error::Release {
                    file: origin.to_string(),
                    message: format!("bad size for {name}"),
                })?;
                files.insert(
                    name.to_string(),
                    Entry {
                        sha256: sha.to_ascii_lowercase(),
                        size,
                    },
                );
            }
        }
        if files.is_empty() {
            return Err(Error::Release {
                file: origin.to_string(),
                message: "no SHA256 entries".to_string(),
            });
        }
        let date_field = |key: &str| -> Result<Option<i64>, Error> {
            p.get(key)
                .map(|v| {
                    parse_rfc2822(v).ok_or_else(|| Error::Release {
                        file: origin.to_string(),
                        message: format!(
                            "{key}: `{v}` is not a date like `Sat, 09 Nov 2024 09:40:02 UTC`"
                        ),
                    })
                })
                .transpose()
        };
        Ok(Release {
            suite: p.get("Suite").cloned().unwrap_or_default(),
            codename: p.get("Codename").cloned().unwrap_or_default(),
            date: date_field("Date")?,
            valid_until: date_field("Valid-Until")?,
            files,
        })
    }

    /// Refuses a Release past its `Valid-Until`, as apt does: an old signed
    /// Release replayed by a mirror (or a frozen mirror) would otherwise hide
    /// security updates. `now` is seconds since the epoch; `allow_expired`
    /// is apt's `Acquire::Check-Valid-Until=false`.
    pub fn check_valid_until(
        &self,
        now: i64,
        allow_expired: bool,
        suite: &str,
        mirror: &str,
    ) -> Result<(), Error> {
        let Some(until) = self.valid_until else {
            return Ok(());
        };
        if now <= until {
            return Ok(());
        }
        if allow_expired {
            tracing::warn!(
                "{mirror}: suite {suite}: Release expired at {} (accepted: expired releases allowed)",
                format_date(until)
            );
            return Ok(());
        }
        Err(Error::ExpiredRelease {
            suite: suite.to_string(),
            mirror: mirror.to_string(),
            date: self.date.map(format_date).unwrap_or_else(|| "?".into()),
            valid_until: format_date(until),
            now: format_date(now),
        })
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 2822 date as Debian's archive writes it
/// (`Sat, 09 Nov 2024 09:40:02 UTC`); also numeric zones (`+0000`) and
/// no weekday. Returns seconds since the epoch.
pub fn parse_rfc2822(s: &str) -> Option<i64> {
    let s = s.trim();
    // The weekday is redundant; it is not checked against the date.
    let s = match s.split_once(',') {
        Some((_, rest)) => rest,
        None => s,
    };
    let f: Vec<&str> = s.split_whitespace().collect();
    let [day, month, year, time, rest @ ..] = f.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as i64 + 1;
    let year: i64 = year.parse().ok().filter(|y| *y >= 1970)?;
    let t: Vec<&str> = time.split(':').collect();
    let (h, min, sec): (i64, i64, i64) = match t.as_slice() {
        [h, m] => (h.parse().ok()?, m.parse().ok()?, 0),
        [h, m, s] => (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?),
        _ => return None,
    };
    if h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let offset: i64 = match rest {
        [] | ["UTC" | "GMT" | "UT" | "Z"] => 0,
        [z] if z.len() == 5 && (z.starts_with('+') || z.starts_with('-')) => {
            let hh: i64 = z[1..3].parse().ok()?;
            let mm: i64 = z[3..5].parse().ok()?;
            let o = hh * 3600 + mm * 60;
            if z.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + min * 60 + sec - offset)
}

/// Seconds since the epoch in Debian's Release date format.
pub fn format_date(secs: i64) -> String {
    let c = crate::civil::Civil::from_unix(secs);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} UTC",
        WEEKDAYS[c.weekday as usize],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.min,
        c.sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_dates() {
        let t = parse_rfc2822("Sat, 09 Nov 2024 09:40:02 UTC").unwrap();
        assert_eq!(t, 1_731_145_202);
        assert_eq!(format_date(t), "Sat, 09 Nov 2024 09:40:02 UTC");
        assert_eq!(parse_rfc2822("9 Nov 2024 10:40:02 +0100"), Some(t));
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(
            format_date(parse_rfc2822("Thu, 29 Feb 2024 23:59:59 UTC").unwrap()),
            "Thu, 29 Feb 2024 23:59:59 UTC"
        );
        for bad in [
            "",
            "Sat, 09 Nov 2024",
            "Sat, 09 Foo 2024 09:40:02 UTC",
            "Sat, 32 Nov 2024 09:40:02 UTC",
            "Sat, 09 Nov 2024 25:40:02 UTC",
            "Sat, 09 Nov 2024 09:40:02 CEST",
        ] {
            assert_eq!(parse_rfc2822(bad), None, "{bad}");
        }
    }
}
