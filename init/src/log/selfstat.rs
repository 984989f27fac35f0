//! osk-init's own resource use, for the `init-rss` marker and `oskctl status`,
//! and the machine's idle time for the boot log.

/// `VmRSS` in KiB from a `/proc/<pid>/status` text.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// This process's resident memory in KiB.
pub fn rss_kib() -> Option<u64> {
    vm_rss_kib(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Seconds all CPUs spent idle (idle + iowait) since boot, from a
/// `/proc/stat` text (USER_HZ ticks, 100 a second on Linux).
pub fn idle_seconds(stat: &str) -> Option<f64> {
    let mut f = stat.lines().next()?.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = f.map(|x| x.parse().ok()).collect::<Option<_>>()?;
    Some((ticks.get(3)? + ticks.get(4)?) as f64 / 100.0)
}

/// The machine's idle CPU time since boot, in seconds.
pub fn machine_idle_seconds() -> Option<f64> {
    idle_seconds(&std::fs::read_to_string("/proc/stat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vmrss_in_kib() {
        let status = "Name:\tosk-init\nVmHWM:\t    4100 kB\nVmRSS:\t    3120 kB\nThreads:\t1\n";
        assert_eq!(vm_rss_kib(status), Some(3120));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn reads_idle_and_iowait_ticks() {
        let stat = "cpu  120 0 80 250 50 3 1 0 0 0\ncpu0 120 0 80 250 50 3 1 0 0 0\n";
        assert_eq!(idle_seconds(stat), Some(3.0));
        assert_eq!(idle_seconds("intr 1 2\n"), None);
        assert!(machine_idle_seconds().is_some());
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib().is_some_and(|k| k > 0));
    }
}
