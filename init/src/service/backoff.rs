//! When to restart a service that exited, and after how long.

use std::time::Duration;

use osk_layout::RestartPolicy;

/// Exponential restart back-off: 1 s doubling up to 30 s, back to 1 s once a
/// run lasted 60 s (the service was healthy).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    healthy_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration, healthy_after: Duration) -> Backoff {
        Backoff {
            initial,
            cap,
            healthy_after,
            next: initial,
        }
    }

    /// The delay before restarting a service whose last run lasted `ran_for`.
    pub fn delay_after(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.healthy_after {
            self.next = self.initial;
        }
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit status; 128+N for death by signal N (containerd's convention).
    pub code: u32,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Whether a service that exited on its own should be started again.
pub fn should_restart(policy: RestartPolicy, exit: Exit) -> bool {
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => !exit.success(),
        RestartPolicy::Always => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_healthy_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(100);
        let delays: Vec<u64> = (0..7).map(|_| b.delay_after(quick).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            b.delay_after(Duration::from_secs(61)),
            Duration::from_secs(1)
        );
        assert_eq!(b.delay_after(quick), Duration::from_secs(2));
    }

    #[test]
    fn policy_decides_by_exit_code() {
        let ok = Exit { code: 0 };
        let killed = Exit { code: 137 };
        assert!(!should_restart(RestartPolicy::No, killed));
        assert!(should_restart(RestartPolicy::OnFailure, killed));
        assert!(!should_restart(RestartPolicy::OnFailure, ok));
        assert!(should_restart(RestartPolicy::Always, ok));
    }
}
