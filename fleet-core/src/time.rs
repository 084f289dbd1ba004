//! UTC calendar arithmetic on milliseconds since the Unix epoch: the one
//! place dates are computed (timestamps in cloud APIs, EC2 signatures,
//! `fleetctl`'s output). Pure: no clock is read here.

use std::fmt;

use crate::ids::Millis;

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Utc {
    /// Year (proleptic Gregorian).
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 0..=999.
    pub millis: u32,
}

impl Utc {
    /// The date and time `ms` after the Unix epoch.
    pub fn from_millis(ms: Millis) -> Utc {
        let secs = ms / 1_000;
        let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        // The casts are of values bounded by the algorithm (1..=31, 1..=12).
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month: month as u32,
            day: day as u32,
            hour: (rem / 3_600) as u32,
            minute: (rem % 3_600 / 60) as u32,
            second: (rem % 60) as u32,
            millis: (ms % 1_000) as u32,
        }
    }

    /// Milliseconds since the Unix epoch; `None` for fields out of range or
    /// a time before 1970.
    pub fn to_millis(self) -> Option<Millis> {
        if !(1..=12).contains(&self.month)
            || !(1..=31).contains(&self.day)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
            || self.millis > 999
        {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let (m, d) = (i64::from(self.month), i64::from(self.day));
        let y = if m <= 2 { self.year - 1 } else { self.year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        u64::try_from(secs.checked_mul(1_000)? + i64::from(self.millis)).ok()
    }

    /// `YYYYMMDDTHHMMSSZ`, as AWS signatures date requests.
    pub fn basic(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, whole seconds).
impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp as cloud
/// APIs write them (`2026-11-25T20:00:00+00:00`, `…Z`, fractions allowed).
pub fn parse_rfc3339(ts: &str) -> Option<Millis> {
    let b = ts.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !matches!(b.get(10), Some(b'T' | b't'))
    {
        return None;
    }
    let mut t = Utc {
        year: i64::from(num(0..4)?),
        month: num(5..7)?,
        day: num(8..10)?,
        hour: num(11..13)?,
        minute: num(14..16)?,
        second: num(17..19)?,
        millis: 0,
    };
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let mut rest = b.get(19..)?;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let frac = std::str::from_utf8(&rest[1..1 + digits.min(3)]).ok()?;
        t.millis = format!("{frac:0<3}").parse().ok()?;
        rest = &rest[1 + digits..];
    }
    let offset_s: i64 = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()) =>
        {
            let d = |c: &u8| i64::from(c - b'0');
            let s = ((d(h1) * 10 + d(h2)) * 60 + d(m1) * 10 + d(m2)) * 60;
            if *sign == b'+' { s } else { -s }
        }
        _ => return None,
    };
    let local = i64::try_from(t.to_millis()?).ok()?;
    u64::try_from(local - offset_s * 1_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_format() {
        for ms in [
            0,
            951_782_400_000,
            1_454_197_800_000,
            1_709_208_000_999,
            4_102_444_799_000,
        ] {
            assert_eq!(Utc::from_millis(ms).to_millis(), Some(ms), "{ms}");
        }
        let t = Utc::from_millis(1_709_208_000_999);
        assert_eq!(t.to_string(), "2024-02-29T12:00:00Z");
        assert_eq!(t.basic(), "20240229T120000Z");
        assert_eq!(Utc::from_millis(0).basic(), "19700101T000000Z");
    }

    #[test]
    fn timestamps_parse_as_cloud_apis_write_them() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2016-01-30T23:50:00+00:00"),
            Some(1_454_197_800_000)
        );
        assert_eq!(
            parse_rfc3339("2016-01-30T23:50:00Z"),
            Some(1_454_197_800_000)
        );
        assert_eq!(
            parse_rfc3339("2016-01-31T00:50:00.25+01:00"),
            Some(1_454_197_800_250)
        );
        assert_eq!(
            parse_rfc3339("2017-09-18T08:22:00.123456Z"),
            Some(1_505_722_920_123)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00+00:00"),
            Some(1_709_208_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2016-13-01T00:00:00Z",
            "2016-01-30 23:50:00Z",
            "2016-01-30T23:50:00",
            "2016-01-30T23-50-00Z",
            "2016-01-30T23:50:00.Z",
            "2016-01-30T23:50:00+0a:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
