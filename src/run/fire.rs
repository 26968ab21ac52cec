//! A scheduled fire (or a catch-up): claimed before it runs, so that of several agents on
//! the database exactly one runs it; a claim the database cannot take now is tried again.

use chrono::{DateTime, Utc};

use super::{Outcome, Runner, new_run};
use crate::config::JobSettings;
use crate::db::{DbError, FireTaken, NewRun, RunTrigger};
use crate::domain::RunId;

impl Runner {
    /// Runs `job`'s fire at `at` (scheduled, or caught up), unless a run of that fire was
    /// started already, by this agent or another on the database: `None` then.
    pub async fn run_fire(
        &self,
        job: &JobSettings,
        trigger: RunTrigger,
        at: DateTime<Utc>,
    ) -> Result<Option<Outcome>, DbError> {
        self.fire(job, trigger, at, false).await
    }

    /// [`Runner::run_fire`] for a fire the wall clock came back to after it went back
    /// ([`crate::db::Database::claim_fire_again`]).
    pub async fn run_fire_again(
        &self,
        job: &JobSettings,
        trigger: RunTrigger,
        at: DateTime<Utc>,
    ) -> Result<Option<Outcome>, DbError> {
        self.fire(job, trigger, at, true).await
    }

    #[tracing::instrument(name = "run", skip_all, fields(job = %job.name, server = job.server_id.get(), run = tracing::field::Empty))]
    async fn fire(
        &self,
        job: &JobSettings,
        trigger: RunTrigger,
        at: DateTime<Utc>,
        again: bool,
    ) -> Result<Option<Outcome>, DbError> {
        let new = new_run(job, trigger, self.now(), Some(at));
        match self.claim_patiently(job, new, again).await? {
            Ok((run_id, started_at)) => self
                .run_started(job, run_id, trigger, started_at, Some(at))
                .await
                .map(Some),
            Err(taken) => {
                tracing::info!(fire = %at, taken_by = taken.run_id.get(), host = %taken.host, "this fire is already being run (or was run) by another run");
                Ok(None)
            }
        }
    }

    /// Claims a fire, trying again while the database cannot be written (locked, full,
    /// unreachable) for up to `claim_patience` ([`crate::timing::Timing`]), and for a
    /// maintenance-window job only
    /// until its window opens. A fire is never run unclaimed: a late snapshot (or, past
    /// that, a missed one the stale check reports) rather than a duplicate. The run and
    /// when it started (the attempt that took the claim).
    async fn claim_patiently(
        &self,
        job: &JobSettings,
        mut new: NewRun<'_>,
        again: bool,
    ) -> Result<Result<(RunId, DateTime<Utc>), FireTaken>, DbError> {
        let from = tokio::time::Instant::now();
        let retry = self.db.timing().claim_retry;
        let mut tries = 0;
        loop {
            new.started_at = self.now();
            let claim = if again {
                self.db.claim_fire_again(new.clone(), &self.owner).await
            } else {
                self.db.claim_fire(new.clone(), &self.owner).await
            };
            let e = match claim {
                Ok(claim) => return Ok(claim.map(|id| (id, new.started_at))),
                Err(e) => e,
            };
            let now = self.now();
            let window_open = crate::schedule::window_for_run(job, new.scheduled_for, now)
                .is_some_and(|opens| now >= opens);
            let pause = retry.after(tries);
            tries += 1;
            if from.elapsed() + pause > self.db.timing().claim_patience
                || window_open
                || self.stop.is_cancelled()
            {
                return Err(e);
            }
            tracing::warn!("{e}; trying again in {}", crate::human::span(pause));
            tokio::time::sleep(pause).await;
        }
    }
}
