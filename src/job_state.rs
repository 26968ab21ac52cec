//! A job's state as every output shows it — `agent status` (table and JSON), the status
//! page and the metrics: its last run, last success, the last 30 runs, when it fires next
//! and whether it is stale. Built here once from the settings, the history and the
//! schedule; each output only renders it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::JobSettings;
use crate::db::{Database, DbResult, Run, RunStatus};

/// One job's state at `now`.
#[derive(Debug)]
pub struct JobState<'a> {
    pub job: &'a JobSettings,
    /// `None` for a job switched off (or a schedule that never fires again).
    pub next_fire: Option<DateTime<Utc>>,
    pub stale_after: Duration,
    /// No success for longer than `stale_after` (never for a job switched off).
    pub stale: bool,
    /// The last 30 runs, oldest first, a running last run included.
    pub timeline: Vec<RunStatus>,
    pub last_run: Option<Run>,
    pub last_success_at: Option<DateTime<Utc>>,
}

/// The state of each of `jobs`, in their order, at `now`.
pub async fn of_jobs<'a>(
    db: &Database,
    jobs: &[&'a JobSettings],
    now: DateTime<Utc>,
) -> DbResult<Vec<JobState<'a>>> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let mut summaries = db.job_summaries(&names).await?;
    let mut timings = crate::schedule::Timings::default();
    Ok(jobs
        .iter()
        .map(|&job| {
            let summary = summaries.remove(&job.name).unwrap_or_default();
            let (next_fire, stale_after) = timings.of(job, now);
            JobState {
                job,
                next_fire,
                stale_after,
                stale: job.enabled && summary.stale(stale_after, now),
                timeline: summary.marks(),
                last_run: summary.last_run,
                last_success_at: summary.last_success_at,
            }
        })
        .collect())
}
