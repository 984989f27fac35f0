//! `osk-timesync`: keeps CLOCK_REALTIME on the hypervisor's clock. A guest's
//! clock stops while its VM is paused or its host sleeps; the reference does
//! not: KVM's host clock through `ptp_kvm` (`/dev/ptp0`), else the RTC, which
//! QEMU keeps on host time. The clock is stepped when it is off by more than
//! a threshold, never slewed: after a pause the gap is seconds to hours.

use std::io;
use std::path::{Path, PathBuf};

const NS: i128 = 1_000_000_000;

/// The name `ptp_kvm` gives its clock (`/sys/class/ptp/ptpN/clock_name`).
pub const KVM_PTP_NAME: &str = "KVM virtual PTP";

/// The calls that read the clocks or need CAP_SYS_TIME.
pub trait TimeSys {
    /// `/sys/class/ptp/ptp0/clock_name`, trimmed, if there is a ptp0.
    fn ptp_clock_name(&self) -> Option<String>;
    /// PTP_SYS_OFFSET on `dev`: 2n+1 timestamps in ns, system and PTP
    /// clock alternating, starting and ending with the system's.
    fn ptp_samples(&self, dev: &Path) -> io::Result<Vec<i128>>;
    /// RTC_RD_TIME on `dev` as whole seconds since the epoch (the RTC keeps
    /// UTC), and CLOCK_REALTIME in ns just after the reading.
    fn rtc_read(&self, dev: &Path) -> io::Result<(i64, i128)>;
    /// Moves CLOCK_REALTIME by `ns`.
    fn step(&self, ns: i128) -> io::Result<()>;
}

/// What the clock is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Ptp(PathBuf),
    Rtc(PathBuf),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Ptp(p) => write!(f, "{} (KVM PTP)", p.display()),
            Reference::Rtc(p) => write!(f, "{} (RTC)", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the clock {reference}: {source}")]
    Read {
        reference: Reference,
        source: io::Error,
    },
    #[error("{reference} gave no usable sample")]
    NoSample { reference: Reference },
    #[error("stepping the clock by {offset}: {source} (the container needs CAP_SYS_TIME)")]
    Step { offset: String, source: io::Error },
}

/// `ptp` when it is KVM's clock, else `rtc`.
pub fn choose(sys: &dyn TimeSys, ptp: &Path, rtc: &Path) -> Reference {
    match sys.ptp_clock_name() {
        Some(name) if name == KVM_PTP_NAME => Reference::Ptp(ptp.into()),
        _ => Reference::Rtc(rtc.into()),
    }
}

/// The reference minus the system clock, in ns, from PTP_SYS_OFFSET's
/// samples: each PTP reading against the midpoint of the system readings
/// around it, the sample with the shortest round trip.
pub fn ptp_offset(ts: &[i128]) -> Option<i128> {
    if ts.len() < 3 || ts.len().is_multiple_of(2) {
        return None;
    }
    (0..ts.len() / 2)
        .map(|i| {
            let (before, ptp, after) = (ts[2 * i], ts[2 * i + 1], ts[2 * i + 2]);
            (after - before, ptp - (before + after) / 2)
        })
        .filter(|(delay, _)| *delay >= 0)
        .min_by_key(|(delay, _)| *delay)
        .map(|(_, offset)| offset)
}

/// The RTC minus the system clock, in ns. The RTC counts whole seconds, so
/// a reading of S means the time is in [S, S+1): its middle is the estimate.
pub fn rtc_offset(rtc_secs: i64, now_ns: i128) -> i128 {
    i128::from(rtc_secs) * NS + NS / 2 - now_ns
}

/// How far off the clock is, in ns (positive: it is behind).
pub fn measure(sys: &dyn TimeSys, reference: &Reference) -> Result<i128, Error> {
    let read = |source| Error::Read {
        reference: reference.clone(),
        source,
    };
    match reference {
        Reference::Ptp(dev) => {
            let ts = sys.ptp_samples(dev).map_err(read)?;
            ptp_offset(&ts).ok_or_else(|| Error::NoSample {
                reference: reference.clone(),
            })
        }
        Reference::Rtc(dev) => {
            let (secs, now) = sys.rtc_read(dev).map_err(read)?;
            Ok(rtc_offset(secs, now))
        }
    }
}

/// The step to make for `offset` ns: none within `threshold` ns.
pub fn decide(offset: i128, threshold: i128) -> Option<i128> {
    (offset.abs() > threshold).then_some(offset)
}

/// One check: measures, and steps when the clock is off by more than
/// `threshold` ns. Returns the step made.
pub fn check(
    sys: &dyn TimeSys,
    reference: &Reference,
    threshold: i128,
) -> Result<Option<i128>, Error> {
    let offset = measure(sys, reference)?;
    let Some(step) = decide(offset, threshold) else {
        return Ok(None);
    };
    sys.step(step).map_err(|source| Error::Step {
        offset: seconds(step),
        source,
    })?;
    Ok(Some(step))
}

/// `ns` as signed seconds with millisecond precision, for the log.
pub fn seconds(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    let ms = ns.abs() / 1_000_000;
    format!("{sign}{}.{:03} s", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Clocks as numbers: the system clock at `now`, the reference at `host`.
    struct Fake {
        ptp_name: Option<String>,
        now: RefCell<i128>,
        host: i128,
        steps: RefCell<Vec<i128>>,
    }

    impl Fake {
        fn new(now: i128, host: i128) -> Fake {
            Fake {
                ptp_name: None,
                now: RefCell::new(now),
                host,
                steps: RefCell::new(Vec::new()),
            }
        }
    }

    impl TimeSys for Fake {
        fn ptp_clock_name(&self) -> Option<String> {
            self.ptp_name.clone()
        }
        fn ptp_samples(&self, _: &Path) -> io::Result<Vec<i128>> {
            let n = *self.now.borrow();
            Ok(vec![n, self.host, n + 10, self.host + 10, n + 20])
        }
        fn rtc_read(&self, _: &Path) -> io::Result<(i64, i128)> {
            Ok(((self.host / NS) as i64, *self.now.borrow()))
        }
        fn step(&self, ns: i128) -> io::Result<()> {
            self.steps.borrow_mut().push(ns);
            *self.now.borrow_mut() += ns;
            Ok(())
        }
    }

    const THRESHOLD: i128 = 1_500_000_000;
    const T0: i128 = 1_800_000_000 * NS;

    #[test]
    fn the_kvm_ptp_clock_is_preferred_and_anything_else_means_the_rtc() {
        let (ptp, rtc) = (Path::new("/dev/ptp0"), Path::new("/dev/rtc0"));
        let mut f = Fake::new(0, 0);
        assert_eq!(choose(&f, ptp, rtc), Reference::Rtc(rtc.into()));
        f.ptp_name = Some("some NIC's PHC".into());
        assert_eq!(choose(&f, ptp, rtc), Reference::Rtc(rtc.into()));
        f.ptp_name = Some(KVM_PTP_NAME.into());
        assert_eq!(choose(&f, ptp, rtc), Reference::Ptp(ptp.into()));
    }

    #[test]
    fn ptp_offset_takes_the_sample_with_the_shortest_round_trip() {
        // Sample 0: 100 ns round trip, offset 1000; sample 1: 10 ns, offset 2000.
        let ts = [0, 1050, 100, 2105, 110];
        assert_eq!(ptp_offset(&ts), Some(2000));
        assert_eq!(ptp_offset(&[0, 1]), None);
        assert_eq!(ptp_offset(&[]), None);
    }

    #[test]
    fn rtc_offset_estimates_the_middle_of_the_second() {
        // RTC says S; the system clock is at S + 0.2 s: 0.3 s behind the estimate.
        assert_eq!(rtc_offset(100, 100 * NS + 200_000_000), 300_000_000);
        assert_eq!(rtc_offset(100, 130 * NS), -(29 * NS + NS / 2));
    }

    #[test]
    fn steps_only_past_the_threshold_and_by_the_offset() {
        assert_eq!(decide(THRESHOLD, THRESHOLD), None);
        assert_eq!(decide(-THRESHOLD, THRESHOLD), None);
        assert_eq!(decide(THRESHOLD + 1, THRESHOLD), Some(THRESHOLD + 1));
        assert_eq!(decide(-20 * NS, THRESHOLD), Some(-20 * NS));
    }

    #[test]
    fn a_clock_20_s_behind_the_rtc_is_stepped_once_and_then_left_alone() {
        let f = Fake::new(T0, T0 + 20 * NS);
        let rtc = Reference::Rtc("/dev/rtc0".into());
        let step = check(&f, &rtc, THRESHOLD).unwrap().unwrap();
        assert_eq!(step, 20 * NS + NS / 2);
        // Within the RTC's half second of the host.
        assert!((*f.now.borrow() - (T0 + 20 * NS)).abs() <= NS / 2);
        assert_eq!(check(&f, &rtc, THRESHOLD).unwrap(), None);
        assert_eq!(f.steps.borrow().len(), 1);
    }

    #[test]
    fn a_clock_ahead_of_kvm_ptp_is_stepped_back_exactly() {
        let f = Fake::new(T0 + 5 * NS, T0);
        let ptp = Reference::Ptp("/dev/ptp0".into());
        assert_eq!(check(&f, &ptp, THRESHOLD).unwrap(), Some(-5 * NS - 5));
        assert_eq!(check(&f, &ptp, THRESHOLD).unwrap(), None);
    }

    #[test]
    fn a_small_drift_is_not_stepped() {
        let f = Fake::new(T0, T0 + NS / 2);
        let ptp = Reference::Ptp("/dev/ptp0".into());
        assert_eq!(check(&f, &ptp, THRESHOLD).unwrap(), None);
        assert!(f.steps.borrow().is_empty());
    }

    #[test]
    fn seconds_are_signed_with_milliseconds() {
        assert_eq!(seconds(20 * NS + 500_000_000), "+20.500 s");
        assert_eq!(seconds(-1_250_000_000), "-1.250 s");
    }
}
