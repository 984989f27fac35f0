//! UTC calendar dates from Unix seconds, for the few timestamps osk writes
//! (image configs, ISO 9660 records, Release dates) without a time crate.

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub min: u32,
    pub sec: u32,
    /// 0 is Sunday.
    pub weekday: u32,
}

impl Civil {
    /// Howard Hinnant's days-from-civil inverse; proleptic Gregorian.
    pub fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            min: rem / 60 % 60,
            sec: rem % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    /// RFC 3339, e.g. `2023-11-14T22:13:20Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.min, self.sec
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let d = Civil::from_unix(0);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.weekday),
            (1970, 1, 1, 0, 4)
        );
        let d = Civil::from_unix(1_709_210_096);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.min, d.sec, d.weekday),
            (2024, 2, 29, 12, 34, 56, 4)
        );
        assert_eq!(
            Civil::from_unix(1_700_000_000).rfc3339(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(Civil::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
    }
}
