//! osk-init's own resource use, for the `init-rss` marker and `oskctl status`.

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
    fn own_rss_is_readable() {
        assert!(rss_kib().is_some_and(|k| k > 0));
    }
}
