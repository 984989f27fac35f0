//! [`TimeSys`] on the running kernel: the ioctls of `osk-timesync` on
//! `/dev/ptpN` and `/dev/rtcN`, and the clock step.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, clock_settime, ClockId};

use crate::timesync::TimeSys;

const NS: i128 = 1_000_000_000;
/// PTP_MAX_SAMPLES in <linux/ptp_clock.h>.
const PTP_MAX_SAMPLES: usize = 25;
/// Samples asked for: a few, so one delayed by an interrupt does not count.
const PTP_SAMPLES: u32 = 5;

/// `struct ptp_clock_time`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PtpClockTime {
    sec: i64,
    nsec: u32,
    reserved: u32,
}

/// `struct ptp_sys_offset`.
#[repr(C)]
struct PtpSysOffset {
    n_samples: u32,
    rsv: [u32; 3],
    ts: [PtpClockTime; 2 * PTP_MAX_SAMPLES + 1],
}

/// `struct rtc_time` (a `struct tm` in UTC).
#[repr(C)]
#[derive(Default)]
struct RtcTime {
    sec: i32,
    min: i32,
    hour: i32,
    mday: i32,
    mon: i32,
    year: i32,
    wday: i32,
    yday: i32,
    isdst: i32,
}

// PTP_SYS_OFFSET is declared _IOW, but the kernel fills the samples in.
nix::ioctl_readwrite_bad!(
    ptp_sys_offset,
    nix::request_code_write!(b'=', 5, std::mem::size_of::<PtpSysOffset>()),
    PtpSysOffset
);
nix::ioctl_read!(rtc_rd_time, b'p', 0x09, RtcTime);

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn realtime_ns() -> io::Result<i128> {
    let t = clock_gettime(ClockId::CLOCK_REALTIME).map_err(errno)?;
    Ok(i128::from(t.tv_sec()) * NS + i128::from(t.tv_nsec()))
}

/// The real thing.
pub struct RealClock;

impl TimeSys for RealClock {
    fn ptp_clock_name(&self) -> Option<String> {
        std::fs::read_to_string("/sys/class/ptp/ptp0/clock_name")
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn ptp_samples(&self, dev: &Path) -> io::Result<Vec<i128>> {
        let f = File::open(dev)?;
        let mut req = PtpSysOffset {
            n_samples: PTP_SAMPLES,
            rsv: [0; 3],
            ts: [PtpClockTime::default(); 2 * PTP_MAX_SAMPLES + 1],
        };
        // SAFETY: `req` is a live, properly laid out ptp_sys_offset that the
        // kernel fills in; `f` stays open for the call.
        unsafe { ptp_sys_offset(f.as_raw_fd(), &mut req) }.map_err(errno)?;
        let n = 2 * PTP_SAMPLES as usize + 1;
        Ok(req.ts[..n]
            .iter()
            .map(|t| i128::from(t.sec) * NS + i128::from(t.nsec))
            .collect())
    }

    fn rtc_read(&self, dev: &Path) -> io::Result<(i64, i128)> {
        let f = File::open(dev)?;
        let mut tm = RtcTime::default();
        // SAFETY: `tm` is a live rtc_time the kernel writes; `f` stays open.
        unsafe { rtc_rd_time(f.as_raw_fd(), &mut tm) }.map_err(errno)?;
        let now = realtime_ns()?;
        let days = days_from_civil(
            i64::from(tm.year) + 1900,
            i64::from(tm.mon) + 1,
            i64::from(tm.mday),
        );
        let secs =
            days * 86_400 + i64::from(tm.hour) * 3600 + i64::from(tm.min) * 60 + i64::from(tm.sec);
        Ok((secs, now))
    }

    fn step(&self, ns: i128) -> io::Result<()> {
        let to = realtime_ns()? + ns;
        let (sec, nsec) = (to.div_euclid(NS), to.rem_euclid(NS));
        let sec = i64::try_from(sec)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "time out of range"))?;
        // rem_euclid keeps nsec in [0, 1e9).
        clock_settime(
            ClockId::CLOCK_REALTIME,
            TimeSpec::new(sec, nsec as libc::c_long),
        )
        .map_err(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_count_days_like_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        // 2026-12-07 is 20794 days after the epoch.
        assert_eq!(days_from_civil(2026, 12, 7), 20_794);
    }

    #[test]
    fn ioctl_structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<PtpSysOffset>(), 832);
        assert_eq!(std::mem::size_of::<RtcTime>(), 36);
    }
}
