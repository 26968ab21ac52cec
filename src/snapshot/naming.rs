//! Snapshot names: `agent-<job>-<UTC time>-<6 hex>`. The name alone says which job made a
//! snapshot and when, so the agent recognizes its own snapshots even without its database.
//! Only letters, digits, `-` and `_` (the API's rule); the random suffix keeps two runs in
//! the same second apart.

use chrono::{DateTime, NaiveDateTime, Utc};

const PREFIX: &str = "agent-";
const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A fresh name for `job` at `at`.
pub fn new_name(job: &str, at: DateTime<Utc>) -> String {
    format!(
        "{PREFIX}{job}-{}-{:06x}",
        at.format(TIME_FORMAT),
        fastrand::u32(..0x0100_0000)
    )
}

/// What ends the name of the snapshot taken just before a restore.
const PRE_RESTORE: &str = "-prerestore";

/// A fresh name for the safety snapshot of `job`'s server taken before a restore:
/// `agent-<job>-<UTC time>-<6 hex>-prerestore`.
pub fn new_pre_restore_name(job: &str, at: DateTime<Utc>) -> String {
    format!("{}{PRE_RESTORE}", new_name(job, at))
}

/// What a managed snapshot's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName {
    pub job: String,
    pub at: DateTime<Utc>,
    /// Taken just before a restore, to undo it.
    pub pre_restore: bool,
}

/// `Some` when `name` is one the agent makes.
pub fn parse(name: &str) -> Option<ParsedName> {
    let (name, pre_restore) = match name.strip_suffix(PRE_RESTORE) {
        Some(n) => (n, true),
        None => (name, false),
    };
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let suffix = parts.next()?;
    let time = parts.next()?;
    let job = parts.next()?;
    if time.len() != 16
        || suffix.len() != 6
        || !suffix.chars().all(|c| c.is_ascii_hexdigit())
        || job.is_empty()
    {
        return None;
    }
    let at = NaiveDateTime::parse_from_str(time, TIME_FORMAT)
        .ok()?
        .and_utc();
    Some(ParsedName {
        job: job.to_string(),
        at,
        pre_restore,
    })
}

/// Whether `name` was made by `job`.
pub fn is_managed_by(name: &str, job: &str) -> bool {
    parse(name).is_some_and(|p| p.job == job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_round_trip_and_use_only_allowed_characters() {
        let at = Utc.with_ymd_and_hms(2026, 11, 28, 2, 30, 0).unwrap();
        let name = new_name("web-01_nightly", at);
        assert!(name.starts_with("agent-web-01_nightly-20261128T023000Z-"));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(
            parse(&name),
            Some(ParsedName {
                job: "web-01_nightly".into(),
                at,
                pre_restore: false,
            })
        );
        let safety = new_pre_restore_name("web-01_nightly", at);
        assert!(safety.ends_with("-prerestore"), "{safety}");
        let parsed = parse(&safety).unwrap();
        assert_eq!(
            (parsed.job.as_str(), parsed.pre_restore),
            ("web-01_nightly", true)
        );
        assert!(is_managed_by(&safety, "web-01_nightly"));
        assert_eq!(
            parse("agent-x-prerestore-20261128T023000Z-abcdef")
                .unwrap()
                .job,
            "x-prerestore"
        );
        assert!(is_managed_by(&name, "web-01_nightly"));
        assert!(!is_managed_by(&name, "web-01"));
    }

    #[test]
    fn foreign_names_are_not_managed() {
        for n in [
            "pre-migration-snapshot",
            "agent-x-20261128T023000Z",
            "agent--20261128T023000Z-abcdef",
            "agent-x-2026112T023000Z-abcdef",
            "agent-x-20261128T023000Z-abcdeg",
        ] {
            assert_eq!(parse(n), None, "{n}");
        }
    }
}
