//! How the agent writes times, spans and counts for people: in alerts, logs, the status
//! page and every command's output.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// An instant, in UTC: `2026-12-04 03:35:41 UTC`.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
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
