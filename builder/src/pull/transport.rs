//! Which registries may be spoken to over plain HTTP.
//!
//! Only loopback registries (a registry on this machine) and the ones the
//! user listed explicitly; everything else is HTTPS, so a typo never
//! silently downgrades a pull from the network.

use std::net::IpAddr;

/// Whether `registry` (`host[:port]` as in an image reference) is reached over plain HTTP.
/// `insecure` entries are `host` (any port) or `host:port`, optionally with an `http://` prefix.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_of(registry);
    if is_loopback(host) {
        return true;
    }
    insecure.iter().any(|entry| {
        let entry = entry
            .trim()
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        entry == registry || (host_of(entry) == entry && entry == host)
    })
}

/// The host part of `host[:port]`, `[v6]:port` or a bare IPv6 address.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => registry,
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_plain_http() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.8.9.10",
            "[::1]:5000",
            "::1",
        ] {
            assert!(plain_http(r, &[]), "{r}");
        }
    }

    #[test]
    fn everything_else_is_https_unless_listed() {
        for r in [
            "docker.io",
            "ghcr.io",
            "10.0.0.1:5000",
            "192.168.1.2",
            "localhost.example.com",
            "127.0.0.1.example.com:5000",
        ] {
            assert!(!plain_http(r, &[]), "{r}");
        }
        let insecure = vec!["reg.lan:5000".to_string(), "http://mirror.lan/".to_string()];
        assert!(plain_http("reg.lan:5000", &insecure));
        assert!(
            !plain_http("reg.lan:5001", &insecure),
            "a listed port covers only that port"
        );
        assert!(!plain_http("reg.lan", &insecure));
        assert!(
            plain_http("mirror.lan:8080", &insecure),
            "a listed host covers every port"
        );
        assert!(plain_http("mirror.lan", &insecure));
        assert!(!plain_http("other.lan", &insecure));
    }
}
