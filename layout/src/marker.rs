//! Machine-readable boot markers printed on the console by osk-init.
//!
//! One line each: `OSK-MARK <uptime-seconds> <event>`, e.g.
//! `OSK-MARK 4.210 containerd-ready` or `OSK-MARK 6.034 service-started:getty`.
//! Benchmarks and end-to-end tests parse these lines, so the format is fixed.

use std::fmt;

/// The prefix every marker line starts with.
pub const PREFIX: &str = "OSK-MARK";

/// A boot or shutdown event worth timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    InitStart,
    RootSwitched,
    ModulesLoaded,
    OnbootDone,
    /// containerd was spawned; `containerd-ready` minus this is its own
    /// start-up time.
    ContainerdStart,
    ContainerdReady,
    ServiceStarted(String),
    AllServicesStarted,
    /// osk-init's resident memory (VmRSS, KiB), once the boot has settled.
    InitRss(u64),
    ShutdownStart,
    OnshutdownDone,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::InitStart => f.write_str("init-start"),
            Event::RootSwitched => f.write_str("root-switched"),
            Event::ModulesLoaded => f.write_str("modules-loaded"),
            Event::OnbootDone => f.write_str("onboot-done"),
            Event::ContainerdStart => f.write_str("containerd-start"),
            Event::ContainerdReady => f.write_str("containerd-ready"),
            Event::ServiceStarted(name) => write!(f, "service-started:{name}"),
            Event::AllServicesStarted => f.write_str("all-services-started"),
            Event::InitRss(kib) => write!(f, "init-rss:{kib}"),
            Event::ShutdownStart => f.write_str("shutdown-start"),
            Event::OnshutdownDone => f.write_str("onshutdown-done"),
        }
    }
}

impl Event {
    fn parse(s: &str) -> Option<Event> {
        Some(match s {
            "init-start" => Event::InitStart,
            "root-switched" => Event::RootSwitched,
            "modules-loaded" => Event::ModulesLoaded,
            "onboot-done" => Event::OnbootDone,
            "containerd-start" => Event::ContainerdStart,
            "containerd-ready" => Event::ContainerdReady,
            "all-services-started" => Event::AllServicesStarted,
            "shutdown-start" => Event::ShutdownStart,
            "onshutdown-done" => Event::OnshutdownDone,
            other => {
                if let Some(kib) = other.strip_prefix("init-rss:") {
                    Event::InitRss(kib.parse().ok()?)
                } else {
                    Event::ServiceStarted(other.strip_prefix("service-started:")?.to_string())
                }
            }
        })
    }
}

/// Formats a marker line (without newline).
pub fn format(uptime_secs: f64, event: &Event) -> String {
    format!("{PREFIX} {uptime_secs:.3} {event}")
}

/// Finds a marker anywhere in a console line (the console may prefix it with
/// kernel noise) and returns its uptime and event.
pub fn parse(line: &str) -> Option<(f64, Event)> {
    let rest = &line[line.find(PREFIX)? + PREFIX.len()..];
    let mut parts = rest.split_whitespace();
    let uptime = parts.next()?.parse().ok()?;
    let event = Event::parse(parts.next()?)?;
    Some((uptime, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for ev in [
            Event::InitStart,
            Event::ContainerdStart,
            Event::ContainerdReady,
            Event::InitRss(3120),
            Event::ServiceStarted("getty".into()),
            Event::AllServicesStarted,
        ] {
            let line = format!("\r[   1.0] {}\r", format(12.5, &ev));
            assert_eq!(parse(&line), Some((12.5, ev)));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse("OSK-MARK abc init-start"), None);
        assert_eq!(parse("OSK-MARK 1.0 nonsense"), None);
        assert_eq!(parse("hello"), None);
        assert_eq!(parse("OSK-MARK 1.0 init-rss:3.1MiB"), None);
    }
}
