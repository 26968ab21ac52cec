//! When jobs fire: cron expressions evaluated in each job's own time zone (DST-correct:
//! a local time that does not exist fires at the first valid time after it, one that occurs
//! twice fires once), and maintenance windows minus their lead. Pure functions of
//! (job, now), so they are tested across DST changes without waiting for one.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::config::{JobSettings, Trigger};

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

    /// The first fire strictly after `after`, evaluated in `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last fire at or before `at`, evaluated in `tz`.
    pub fn previous_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&at.with_timezone(&tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A job's next fire strictly after `now`: its cron time, or for a maintenance-window job
/// the next window that opens more than `lead` from now, minus `lead`.
pub fn next_fire(job: &JobSettings, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match &job.trigger {
        Trigger::Schedule(c) => c.next_after(now, job.timezone),
        Trigger::Window { window, lead } => {
            let lead = chrono_dur(*lead);
            window
                .next_after(now + lead, job.timezone)
                .map(|opens| opens - lead)
        }
    }
}

/// The latest fire at or before `now` (for catch-up), with the window it belongs to.
pub fn previous_fire(job: &JobSettings, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match &job.trigger {
        Trigger::Schedule(c) => c.previous_at_or_before(now, job.timezone),
        Trigger::Window { window, lead } => {
            let lead = chrono_dur(*lead);
            window
                .previous_at_or_before(now + lead, job.timezone)
                .map(|opens| opens - lead)
        }
    }
}

/// For a maintenance-window job, when the window a run prepares for opens: the fire it
/// was scheduled for plus `lead`, or for a run by hand the next window after its start.
pub fn window_for_run(
    job: &JobSettings,
    scheduled_for: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match &job.trigger {
        Trigger::Schedule(_) => None,
        Trigger::Window { window, lead } => match scheduled_for {
            Some(fire) => Some(fire + chrono_dur(*lead)),
            None => window.next_after(started, job.timezone),
        },
    }
}

/// The next `n` fires after `now`.
pub fn upcoming(job: &JobSettings, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::with_capacity(n);
    let mut t = now;
    while out.len() < n {
        match next_fire(job, t) {
            Some(next) => {
                out.push(next);
                t = next;
            }
            None => break,
        }
    }
    out
}

/// How long without a success before the job is stale: `stale_after`, else twice the
/// longest gap between its next few fires.
pub fn stale_after(job: &JobSettings, now: DateTime<Utc>) -> Duration {
    if let Some(d) = job.stale_after {
        return d;
    }
    let fires = upcoming(job, now, 8);
    let period = fires
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .and_then(|d| d.to_std().ok())
        .unwrap_or(Duration::from_secs(86_400));
    period * 2
}
