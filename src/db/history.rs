//! Reading runs back: one run, the history, the running ones, and what `status`, catch-up
//! and alerts ask about a job's last runs.

use std::collections::HashMap;
use std::time::Duration;

use super::runs::{RunRow, run_columns};
use super::{Database, DbResult, Run, RunStatus, StoredTime, ms};
use crate::domain::{RunId, ServerId};
use chrono::{DateTime, Utc};

/// What `status` and the metrics show of a job: its newest run, the end of its last
/// success, and its last 30 finished runs' statuses, oldest first.
#[derive(Debug, Clone, Default)]
pub struct JobSummary {
    pub last_run: Option<Run>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub timeline: Vec<RunStatus>,
}

impl JobSummary {
    /// The last 30 runs, oldest first, a running last run included.
    pub fn marks(&self) -> Vec<RunStatus> {
        let mut marks = self.timeline.clone();
        marks.extend(
            self.last_run
                .as_ref()
                .filter(|r| r.status == RunStatus::Running)
                .map(|r| r.status),
        );
        marks.drain(..marks.len().saturating_sub(30));
        marks
    }

    /// No success for longer than `stale_after`. Without a success, staleness counts
    /// from the last run: a job that never ran is new, not stale.
    pub fn stale(&self, stale_after: Duration, now: DateTime<Utc>) -> bool {
        let since = self
            .last_success_at
            .or_else(|| self.last_run.as_ref().map(|r| r.started_at));
        since.is_some_and(|t| (now - t).to_std().unwrap_or_default() > stale_after)
    }

    fn job(&self) -> &str {
        self.last_run.as_ref().map_or("", |r| r.job.as_str())
    }
}

/// Which runs `agent history` shows: of one job, started in a span of time, of one
/// status; at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery<'a> {
    pub job: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub status: Option<RunStatus>,
    pub limit: u32,
}

impl Database {
    pub async fn run(&self, run_id: RunId) -> DbResult<Option<Run>> {
        let cols = run_columns(self.engine());
        let sql = format!("SELECT {cols} FROM runs WHERE id = $1");
        let row = self
            .q(&sql)
            .bind(run_id)
            .fetch_optional::<RunRow>(self)
            .await
            .map_err(self.err("cannot read a run"))?;
        Ok(row.map(Run::from))
    }

    /// Newest first.
    pub async fn history(&self, job: Option<&str>, limit: u32) -> DbResult<Vec<Run>> {
        self.history_where(&HistoryQuery {
            job,
            limit,
            ..HistoryQuery::default()
        })
        .await
    }

    /// The runs `query` selects, newest first.
    pub async fn history_where(&self, query: &HistoryQuery<'_>) -> DbResult<Vec<Run>> {
        let cols = run_columns(self.engine());
        // The conditions asked for, their placeholders numbered in the order bound below.
        let asked = [
            ("job =", query.job.is_some()),
            ("started_at >=", query.since.is_some()),
            ("started_at <=", query.until.is_some()),
            ("status =", query.status.is_some()),
        ];
        let conditions: Vec<String> = asked
            .iter()
            .filter(|(_, on)| *on)
            .enumerate()
            .map(|(i, (c, _))| format!("{c} ${}", i + 1))
            .collect();
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let limit = conditions.len() + 1;
        let sql = format!("SELECT {cols} FROM runs {filter} ORDER BY id DESC LIMIT ${limit}");
        let mut q = self.q(&sql);
        if let Some(j) = query.job {
            q = q.bind(j);
        }
        if let Some(t) = query.since {
            q = q.bind(ms(t));
        }
        if let Some(t) = query.until {
            q = q.bind(ms(t));
        }
        if let Some(s) = query.status {
            q = q.bind(s);
        }
        let rows = q
            .bind(i64::from(query.limit))
            .fetch_all::<RunRow>(self)
            .await
            .map_err(self.err("cannot read the history"))?;
        Ok(rows.into_iter().map(Run::from).collect())
    }

    pub async fn running(&self) -> DbResult<Vec<Run>> {
        let cols = run_columns(self.engine());
        let sql = format!("SELECT {cols} FROM runs WHERE status = 'running' ORDER BY id");
        let rows = self
            .q(&sql)
            .fetch_all::<RunRow>(self)
            .await
            .map_err(self.err("cannot read running runs"))?;
        Ok(rows.into_iter().map(Run::from).collect())
    }

    /// The runs of `job` on `server_id` still recorded as running, but `except`.
    pub async fn running_of(
        &self,
        job: &str,
        server_id: ServerId,
        except: RunId,
    ) -> DbResult<Vec<Run>> {
        let cols = run_columns(self.engine());
        let sql = format!(
            "SELECT {cols} FROM runs WHERE status = 'running' AND job = $1 AND server_id = $2 \
             AND id <> $3 ORDER BY id"
        );
        let rows = self
            .q(&sql)
            .bind(job)
            .bind(server_id)
            .bind(except)
            .fetch_all::<RunRow>(self)
            .await
            .map_err(self.err("cannot read running runs"))?;
        Ok(rows.into_iter().map(Run::from).collect())
    }

    /// Whether any snapshot run of `job` started at or after `t`.
    pub async fn has_run_since(&self, job: &str, t: DateTime<Utc>) -> DbResult<bool> {
        let row: Option<(RunId,)> = self
            .q("SELECT id FROM runs WHERE job = $1 AND kind = 'snapshot' AND started_at >= $2 LIMIT 1")
            .bind(job)
            .bind(ms(t))
            .fetch_optional(self)
        .await
        .map_err(self.err("cannot read the history"))?;
        Ok(row.is_some())
    }

    /// The newest snapshot run of `job` (a restore is not the job's run).
    pub async fn last_run(&self, job: &str) -> DbResult<Option<Run>> {
        let cols = run_columns(self.engine());
        let sql = format!(
            "SELECT {cols} FROM runs WHERE job = $1 AND kind = 'snapshot' \
             ORDER BY id DESC LIMIT 1"
        );
        let row = self
            .q(&sql)
            .bind(job)
            .fetch_optional::<RunRow>(self)
            .await
            .map_err(self.err("cannot read the last run"))?;
        Ok(row.map(Run::from))
    }

    /// For each of `jobs` (none, for one that never ran): its newest snapshot run and when
    /// its last success ended, in one statement over `job_state` (kept by triggers as runs
    /// start and succeed), so `status` reads one row per job however long the history is.
    pub async fn job_summaries(&self, jobs: &[&str]) -> DbResult<HashMap<String, JobSummary>> {
        let cols = run_columns(self.engine());
        #[derive(sqlx::FromRow)]
        struct Summary {
            #[sqlx(flatten)]
            run: RunRow,
            last_success_at: Option<StoredTime>,
            timeline: String,
        }
        let names = serde_json::to_string(jobs).unwrap_or_else(|_| "[]".into());
        let sql = format!(
            "SELECT r.*, s.last_success_at, s.timeline FROM \
               (SELECT {cols} FROM runs WHERE id IN \
                  (SELECT last_run_id FROM job_state WHERE job IN ({}))) r \
             JOIN job_state s ON s.last_run_id = r.id",
            self.engine().json_texts(1)
        );
        let rows = self
            .q(&sql)
            .bind(&names)
            .fetch_all::<Summary>(self)
            .await
            .map_err(self.err("cannot read the jobs' last runs"))?;
        let mut out: HashMap<String, JobSummary> = jobs
            .iter()
            .map(|j| (j.to_string(), JobSummary::default()))
            .collect();
        for s in rows {
            let run = Run::from(s.run);
            let timeline = s
                .timeline
                .chars()
                .map(|c| match c {
                    's' => RunStatus::Succeeded,
                    'f' => RunStatus::Failed,
                    _ => RunStatus::Interrupted,
                })
                .collect();
            let summary = JobSummary {
                last_success_at: s.last_success_at.map(|t| t.0),
                timeline,
                last_run: Some(run),
            };
            out.insert(summary.job().to_string(), summary);
        }
        Ok(out)
    }

    /// The last finished snapshot run of `job` before run `before` (any status but running).
    pub async fn previous_finished(&self, job: &str, before: RunId) -> DbResult<Option<Run>> {
        let cols = run_columns(self.engine());
        let sql = format!(
            "SELECT {cols} FROM runs WHERE job = $1 AND id < $2 AND kind = 'snapshot' \
             AND status IN ('succeeded', 'failed') ORDER BY id DESC LIMIT 1"
        );
        let row = self
            .q(&sql)
            .bind(job)
            .bind(before)
            .fetch_optional::<RunRow>(self)
            .await
            .map_err(self.err("cannot read the previous run"))?;
        Ok(row.map(Run::from))
    }

    pub async fn last_success(&self, job: &str) -> DbResult<Option<Run>> {
        let cols = run_columns(self.engine());
        let sql = format!(
            "SELECT {cols} FROM runs WHERE job = $1 AND status = 'succeeded' AND kind = 'snapshot' \
             ORDER BY id DESC LIMIT 1"
        );
        let row = self
            .q(&sql)
            .bind(job)
            .fetch_optional::<RunRow>(self)
            .await
            .map_err(self.err("cannot read the last success"))?;
        Ok(row.map(Run::from))
    }

    /// How long the job's recent snapshots took from create to completed, newest first.
    pub async fn snapshot_durations(&self, job: &str, limit: u32) -> DbResult<Vec<Duration>> {
        // The limit is written into the statement: bound, SQLite prepares the statement
        // again at every use (its plan may depend on a bound LIMIT).
        let rows: Vec<(Option<i64>,)> = self
            .q(&format!(
                "SELECT snapshot_completed_at - snapshot_created_at AS d FROM runs \
                 WHERE job = $1 AND status = 'succeeded' AND snapshot_completed_at IS NOT NULL \
                 AND snapshot_created_at IS NOT NULL ORDER BY id DESC LIMIT {limit}"
            ))
            .bind(job)
            .fetch_all(self)
            .await
            .map_err(self.err("cannot read snapshot durations"))?;
        Ok(rows
            .iter()
            .filter_map(|(d,)| *d)
            .map(|d| Duration::from_millis(d.max(0) as u64))
            .collect())
    }
}
