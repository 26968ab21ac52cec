//! Cron expressions: six fields, seconds first (five are read with seconds 0), evaluated
//! in a time zone. Pure: no config, no clock.

use std::fmt;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed cron expression: 6 fields (seconds first) or 5 (seconds taken as 0).
#[derive(Clone)]
pub struct CronSpec {
    expr: String,
    cron: Cron,
}

impl fmt::Debug for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSpec({:?})", self.expr)
    }
}

impl fmt::Display for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

impl CronSpec {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "{expr:?} has {fields} fields; expected 6 (sec min hour day-of-month month \
                 day-of-week) or 5 (seconds taken as 0)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))?;
        let spec = Self {
            expr: expr.trim().to_string(),
            cron,
        };
        // An expression that never fires (Feb 30th) is a mistake, not a schedule.
        let probe = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        if spec.next_after(probe, Tz::UTC).is_none() {
            return Err(format!("{expr:?} never fires"));
        }
        Ok(spec)
    }

    /// The first fire strictly after `after`, evaluated in `tz`. Whole seconds: croner
    /// carries a start time's fraction into its answer.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&whole_seconds(after).with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last fire at or before `at`, evaluated in `tz`.
    pub fn previous_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&whole_seconds(at).with_timezone(&tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}
