//! How the agent writes times, spans and counts for people: in alerts, logs, the status
//! page and every command's output.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// An instant, in UTC: `2026-12-04 03:35:41 UTC`.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An instant, in UTC, in a column whose header says so: `2026-12-04 03:35:41`.
pub fn table_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// An instant to the minute, in UTC: `2026-12-04 03:35 UTC`.
pub fn minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// An instant to the minute in the time zone `tz`: `2026-12-04 04:35 CET`.
pub fn local_minute(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

/// An instant to the minute in `tz`, with the UTC time beside it unless `tz` is UTC:
/// `2026-12-04 04:35 CET (03:35 UTC)`.
pub fn local_minute_and_utc(t: DateTime<Utc>, tz: Tz) -> String {
    let local = local_minute(t, tz);
    if tz == chrono_tz::UTC {
        local
    } else {
        format!("{local} ({} UTC)", t.format("%H:%M"))
    }
}

/// A day with its weekday: `Fri 2026-12-04`.
pub fn day(t: DateTime<Utc>) -> String {
    t.format("%a %Y-%m-%d").to_string()
}

/// An instant in the time zone `tz`: `2026-12-04 04:35:41 CET`.
pub fn local_time(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .format("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// An instant for machines and logs: `2026-12-04T03:35:41Z`.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A duration in a table's narrow column: `1.6s`, `4m40s`, `2h05m`.
pub fn short(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// How long ago, rounded to the minute past an hour: `2h 5m`, `40s`.
pub fn fmt_age(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0) as u64;
    let rounded = if secs >= 3600 { secs / 60 * 60 } else { secs };
    span(Duration::from_secs(rounded))
}

/// A span of time as people write it: `7 days`, `1 day 2h`, `1m 30s`; whole seconds
/// (whole milliseconds under one).
pub fn span(d: Duration) -> String {
    let d = if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.subsec_millis().into())
    };
    humantime::format_duration(d)
        .to_string()
        .split(' ')
        .map(|part| {
            let digits = part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len());
            let (n, unit) = part.split_at(digits);
            if unit.len() > 2 {
                format!("{n} {unit}")
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1 snapshot`, `2 snapshots`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A duration as a person reads it in a log: `1.6s` under a minute, `4m 40s` above.
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = (self.0.as_millis() + 50) / 100;
        if tenths < 600 {
            if tenths.is_multiple_of(10) {
                write!(f, "{}s", tenths / 10)
            } else {
                write!(f, "{}.{}s", tenths / 10, tenths % 10)
            }
        } else {
            let secs = (self.0.as_millis() + 500) / 1000;
            let secs = u64::try_from(secs).unwrap_or(u64::MAX);
            write!(f, "{}", span(Duration::from_secs(secs)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_rounded_for_people() {
        let s = |ms| Secs(Duration::from_millis(ms)).to_string();
        assert_eq!(s(1_641), "1.6s");
        assert_eq!(s(20_000), "20s");
        assert_eq!(s(49), "0s");
        assert_eq!(s(59_960), "1m");
        assert_eq!(s(280_400), "4m 40s");
        assert_eq!(Secs(Duration::new(1, 641_335_718)).to_string(), "1.6s");
    }
}
