//! The end of a run: its status, error and alerts in one transaction, once.

use chrono::{DateTime, Utc};

use super::{Failure, Outcome, RunState, Runner};
use crate::alert::{self, text};
use crate::db::{DbError, Finish, NewAlert, Run, RunStatus};

impl Runner {
    pub(super) async fn finish(
        &self,
        mut st: RunState<'_>,
        result: Result<(), Failure>,
    ) -> Result<Outcome, DbError> {
        if let Err(f) = &result {
            self.on_failure(&mut st, &crate::errors::line(&f.error))
                .await?;
        }
        let now = self.now();
        let job = st.job;
        let (status, error, alerts) = match &result {
            Ok(()) => {
                if !st.delete_errors.is_empty() {
                    let rotation = format!("rotation: {}", st.delete_errors.join("; "));
                    st.warnings.push(rotation);
                }
                let warn = (!st.warnings.is_empty()).then(|| st.warnings.join("; "));
                tracing::info!(deleted = st.deleted.len(), "run succeeded");
                let recovered = self.recovery_alert(&st, now).await?;
                (RunStatus::Succeeded, warn, recovered)
            }
            Err(f) => {
                let error = crate::errors::line(&f.error);
                let failed = self.failure_alert(&st, f, &error, now).await?;
                (RunStatus::Failed, Some(error), failed)
            }
        };
        self.db
            .finish_run(
                st.run_id,
                &self.owner,
                Finish {
                    status,
                    error: error.as_deref(),
                    step: Some(st.step),
                    at: now,
                    alerts: alerts.as_slice(),
                    ping: super::pings::end_ping(job, st.run_id, status, error.as_deref(), now),
                },
            )
            .await?;
        self.kick.notify_one();
        self.count(&st, now);
        Ok(Outcome {
            run_id: st.run_id,
            job: job.name.clone(),
            server_id: job.server_id,
            status,
            snapshot: st.snapshot.as_ref().map(|s| (s.id, s.name.clone())),
            deleted: st.deleted,
            error,
            cause: result.as_ref().err().map(|f| f.cause),
            polls: st.polls,
            started_at: st.started_at,
            elapsed: (now - st.started_at).to_std().unwrap_or_default(),
            safety: None,
        })
    }

    /// The process is stopping while the run waits. A run that has not asked for its
    /// snapshot (it was waiting for the server's lock, or a stop came while its hooks
    /// ran, and its `after` has run) ends `interrupted`; one whose snapshot was asked
    /// for stays `running`, with a note, for the next start to finish: the next start
    /// resumes the runs of processes that are gone.
    pub(super) async fn leave(&self, st: RunState<'_>, f: &Failure) -> Result<Outcome, DbError> {
        let now = self.now();
        let (status, note) = match &st.snapshot {
            None => {
                let note = if st.deleted.is_empty() && st.hooks_ran.is_empty() {
                    "stopped by a signal before it began; nothing was done".to_string()
                } else {
                    "stopped by a signal before asking for its snapshot; what it had done \
                     (room made, hooks run) is in `agent history --json`"
                        .to_string()
                };
                self.db
                    .finish_run(
                        st.run_id,
                        &self.owner,
                        Finish {
                            status: RunStatus::Interrupted,
                            error: Some(&note),
                            step: f.step,
                            at: now,
                            alerts: &[],
                            ping: None,
                        },
                    )
                    .await?;
                (RunStatus::Interrupted, note)
            }
            Some(snap) => {
                let note = format!(
                    "stopped by a signal while snapshot {} was being made; the next start \
                     (`agent run-once` or the daemon) finishes this run",
                    snap.id
                );
                self.db
                    .note_unfinished(st.run_id, &self.owner, &note)
                    .await?;
                (RunStatus::Running, note)
            }
        };
        tracing::warn!("{note}");
        Ok(Outcome {
            run_id: st.run_id,
            job: st.job.name.clone(),
            server_id: st.job.server_id,
            status,
            snapshot: st.snapshot.as_ref().map(|s| (s.id, s.name.clone())),
            deleted: st.deleted,
            error: Some(note),
            cause: None,
            polls: st.polls,
            started_at: st.started_at,
            elapsed: (now - st.started_at).to_std().unwrap_or_default(),
            safety: None,
        })
    }

    /// The first success after a failure, if recoveries are mailed.
    async fn recovery_alert(
        &self,
        st: &RunState<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<NewAlert>, DbError> {
        let job = st.job;
        let Some(policy) = &self.alerts else {
            return Ok(None);
        };
        let prev = self.db.previous_finished(&job.name, st.run_id).await?;
        if !policy.notify_recovery || prev.is_none_or(|p| p.status != RunStatus::Failed) {
            return Ok(None);
        }
        let name = st
            .snapshot
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let since = self
            .db
            .last_success(&job.name)
            .await?
            .and_then(|r| r.finished_at);
        Ok(Some(text::recovered(
            &job.name,
            job.server_id,
            st.run_id,
            &name,
            now,
            since,
        )))
    }

    /// The alert for failure `f`, unless one was sent less than `repeat_after` ago.
    async fn failure_alert(
        &self,
        st: &RunState<'_>,
        f: &Failure,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<NewAlert>, DbError> {
        let job = st.job;
        let step = f.step.map_or("record", |s| s.as_str());
        tracing::error!(step, "run failed: {error}");
        let Some(policy) = &self.alerts else {
            return Ok(None);
        };
        if alert::throttled(&self.db, policy, &job.name, now).await? {
            tracing::info!("alert suppressed: one was sent less than repeat_after ago");
            return Ok(None);
        }
        let last_good = self.db.last_success(&job.name).await?;
        Ok(Some(text::failure(&text::Failure {
            cause: f.cause,
            job: &job.name,
            server_id: job.server_id,
            run_id: st.run_id,
            step,
            error,
            started_at: st.started_at,
            finished_at: now,
            last_good: last_good.as_ref(),
            listing: &st.listing.snapshots,
            hooks: &st.hooks_ran,
        })))
    }

    /// The run's figures for the metrics: how long it took, the snapshots it saw.
    fn count(&self, st: &RunState<'_>, now: DateTime<Utc>) {
        let metrics = crate::metrics::global();
        let job = &st.job.name;
        metrics.run_finished(job, (now - st.started_at).to_std().unwrap_or_default());
        let on_server = st
            .listing
            .snapshots
            .iter()
            .filter(|s| s.server.id == st.job.server_id);
        let known = std::collections::HashSet::new();
        let managed = on_server
            .clone()
            .filter(|s| {
                crate::snapshot::ownership::Ownership::of(s, self.client.marker(), &known)
                    .is_of(job)
            })
            .count();
        let unmanaged = on_server.count() - managed;
        metrics.snapshots_seen(job, st.job.server_id.get(), managed, unmanaged);
    }

    /// Ends a run this process has claimed as `interrupted`, saying why.
    pub(super) async fn interrupt(&self, run: &Run, why: &str) -> Result<(), DbError> {
        tracing::warn!(run = run.id.get(), job = %run.job, "marking run interrupted: {why}");
        self.db
            .finish_run(
                run.id,
                &self.owner,
                Finish {
                    status: RunStatus::Interrupted,
                    error: Some(why),
                    step: None,
                    at: self.now(),
                    alerts: &[],
                    ping: None,
                },
            )
            .await
    }
}
