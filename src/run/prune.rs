//! `agent prune`: a job's retention policy applied now, without taking a snapshot (after
//! lowering `keep_*`, say). It is rotation and nothing else, under the same rules: the
//! server's lock, a consistent listing, never the newest completed managed snapshot nor a
//! pinned or unmanaged one, at most `max_deletions_per_run`, a fresh listing before each
//! delete after the first, every delete journaled before it is sent. Recorded as a run of
//! kind `prune`; a failure is alerted.

use anyhow::anyhow;

use super::{Failure, Outcome, RunState, Runner, fail, fail_as};
use crate::alert::{Cause, text};
use crate::config::JobSettings;
use crate::db::{
    Action, DbError, Finish, NewRun, Run, RunKind, RunStatus, RunTrigger, State, Step,
};

impl Runner {
    /// Prunes `job`'s snapshots once. `Err` only when the run cannot even be recorded.
    #[tracing::instrument(name = "prune", skip_all, fields(job = %job.name, server = job.server_id.get(), run = tracing::field::Empty))]
    pub async fn prune_job(&self, job: &JobSettings) -> Result<Outcome, DbError> {
        let started_at = self.now();
        let new = NewRun {
            job: &job.name,
            server_id: job.server_id,
            kind: RunKind::Prune,
            trigger: RunTrigger::Manual,
            scheduled_for: None,
            started_at,
        };
        let run_id = self.db.start_run(new, &self.owner).await?;
        tracing::Span::current().record("run", run_id.get());
        let mut st = RunState::new(run_id, job, started_at, None);
        let _flight = self.owner.in_flight(run_id);
        let result = match self.lock(job.server_id, Some(run_id)).await {
            Ok(guard) => {
                let r = self.prune(&mut st).await;
                guard.release().await;
                r
            }
            Err(f) => Err(f),
        };
        match result {
            Err(f) if f.stopped => self.leave(st, &f).await,
            result => self.finish_prune(st, result).await,
        }
    }

    async fn prune(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        self.observe(st, Action::Lock, None, State::Ok, None)
            .await?;
        st.step = Step::List;
        self.list(st).await?;
        self.reconcile(st).await?;
        if !st.listing.consistent() {
            let e = anyhow!(
                "the API's listing of server {} is inconsistent ({}); nothing is deleted on such \
                 a listing",
                st.job.server_id,
                st.listing.odd()
            );
            return Err(fail_as(Step::List, Cause::Other, e));
        }
        self.rotate(st).await?;
        if st.delete_errors.is_empty() {
            Ok(())
        } else if st.token_rejected {
            let e = anyhow!(st.delete_errors.join("; "));
            Err(fail_as(Step::Rotate, Cause::Unauthorized, e))
        } else {
            Err(fail(Step::Rotate, anyhow!(st.delete_errors.join("; "))))
        }
    }

    /// Records how the prune ended, with an alert when it failed.
    async fn finish_prune(
        &self,
        st: RunState<'_>,
        result: Result<(), Failure>,
    ) -> Result<Outcome, DbError> {
        let now = self.now();
        let job = st.job;
        let (status, error, alert) = match &result {
            Ok(()) => {
                tracing::info!(deleted = st.deleted.len(), "prune succeeded");
                let warn = (!st.warnings.is_empty()).then(|| st.warnings.join("; "));
                (RunStatus::Succeeded, warn, None)
            }
            Err(f) => {
                let error = crate::errors::line(&f.error);
                tracing::error!("prune failed: {error}");
                let alert = self.alerts.as_ref().map(|_| {
                    text::prune_failed(
                        &job.name,
                        job.server_id,
                        st.run_id,
                        &st.deleted,
                        &error,
                        now,
                    )
                });
                (RunStatus::Failed, Some(error), alert)
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
                    alerts: alert.as_slice(),
                    ping: None,
                },
            )
            .await?;
        self.kick.notify_one();
        Ok(Outcome {
            run_id: st.run_id,
            job: job.name.clone(),
            server_id: job.server_id,
            status,
            snapshot: None,
            deleted: st.deleted,
            error,
            cause: result.as_ref().err().map(|f| f.cause),
            polls: 0,
            started_at: st.started_at,
            elapsed: (now - st.started_at).to_std().unwrap_or_default(),
            safety: None,
        })
    }

    /// A prune a dead process left: its deletes are settled from a listing (when the API
    /// answers; else the next run on the server settles them) and it ends `interrupted`.
    pub(super) async fn interrupt_prune(&self, run: &Run) -> Result<(), DbError> {
        let why = match self.client.list(Some(run.server_id)).await {
            Ok(listing) => {
                self.settle_open(run.server_id, &listing, Some(run.id))
                    .await?;
                "the agent stopped during this prune; its deletes were checked against a listing"
            }
            Err(e) => {
                tracing::warn!("cannot settle the prune's deletes yet: {e}");
                "the agent stopped during this prune; the next run on the server settles its deletes"
            }
        };
        self.interrupt(run, why).await
    }
}
