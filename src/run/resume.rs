//! Runs left `running` by a process that is gone (on this host, its process is; on
//! another, its agent's heartbeat lapsed: see [`crate::presence`]). Resuming one is a claim: under the
//! server's lock, one conditional write takes the run if it is still running under the
//! dead owner, so of several processes starting at once exactly one resumes it, once.
//! The claimed run is then read from its journal: what the API shows settles its open
//! effects; a run whose snapshot exists is polled (the listing looked at before any
//! deadline), rotated within what is left of its delete budget, and finished; any other
//! is marked `interrupted`.

use std::time::Duration;

use tracing::Instrument;

use super::{Outcome, RunState, Runner, fail};
use crate::config::JobSettings;
use crate::db::{Action, DbError, Run, RunKind, State, Step};
use crate::domain::RunId;
use crate::identity::run_may_be_alive;

impl Runner {
    /// Finishes every run a dead process left running; the outcomes of those resumed.
    pub async fn resume_interrupted(&self, jobs: &[JobSettings]) -> Result<Vec<Outcome>, DbError> {
        let mut out = Vec::new();
        // A process stopping leaves its runs that wait for a snapshot to the next start.
        if self.stop.is_cancelled() {
            return Ok(out);
        }
        let running = self.db.running().await?;
        if running.is_empty() {
            return Ok(out);
        }
        let leases = self.db.leases().await?;
        for seen in running {
            let lease = leases.of(&seen.owner, None);
            if run_may_be_alive(&seen.owner, Some(seen.id), lease, self.now()) {
                continue;
            }
            let span = tracing::info_span!("run", job = %seen.job, server = seen.server_id.get(), run = seen.id.get());
            let _flight = self.owner.in_flight(seen.id);
            let outcome = async {
                let Ok(guard) = self.lock(seen.server_id, Some(seen.id)).await else {
                    return Ok(None);
                };
                let outcome = self.claim_and_resume(&seen, jobs).await;
                guard.release().await;
                outcome
            }
            .instrument(span)
            .await;
            if let Some(o) = outcome? {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// Under the server's lock, before run `run_id` of `job` does anything: finishes the
    /// runs of the same job on that server that a dead process left running (as the
    /// periodic resumption would). The server is the lock holder's alone until then, and
    /// a run that went first with an orphan still open could rotate the orphan's snapshot
    /// away by policy, leaving it to end as "interrupted: the snapshot is gone" although
    /// it made its snapshot; the periodic resumption, needing the same lock, can lose that
    /// race to every fire of a frequent schedule.
    pub(super) async fn finish_orphans(
        &self,
        job: &JobSettings,
        run_id: RunId,
    ) -> Result<(), DbError> {
        let orphans = self.db.running_of(&job.name, job.server_id, run_id).await?;
        if orphans.is_empty() {
            return Ok(());
        }
        let leases = self.db.leases().await?;
        for seen in orphans {
            let lease = leases.of(&seen.owner, None);
            if run_may_be_alive(&seen.owner, Some(seen.id), lease, self.now()) {
                continue;
            }
            let _flight = self.owner.in_flight(seen.id);
            if let Some(o) = self
                .claim_and_resume(&seen, std::slice::from_ref(job))
                .await?
            {
                tracing::info!(run = o.run_id.get(), status = %o.status, "finished an interrupted run of this job first");
            }
        }
        Ok(())
    }

    async fn claim_and_resume(
        &self,
        seen: &Run,
        jobs: &[JobSettings],
    ) -> Result<Option<Outcome>, DbError> {
        let Some(run) = self.db.claim_run(seen.id, &seen.owner, &self.owner).await? else {
            tracing::debug!("another process took this run first");
            return Ok(None);
        };
        match run.kind {
            RunKind::Restore => {
                self.interrupt_restore(&run).await?;
                return Ok(None);
            }
            RunKind::Prune => {
                self.interrupt_prune(&run).await?;
                return Ok(None);
            }
            RunKind::Snapshot => {}
        }
        let job = jobs
            .iter()
            .find(|j| j.name == run.job && j.server_id == run.server_id);
        self.thaw_left(&run, job.map(|j| j.hooks.timeout)).await?;
        let Some(job) = job else {
            self.interrupt(
                &run,
                "the agent stopped during this run, and the job is no longer configured for this server",
            )
            .await?;
            return Ok(None);
        };
        tracing::info!("resuming a run interrupted at step {}", run.step);
        self.resume(&run, job).await
    }

    /// A restore cannot be seen in a listing: an open request stays `unknown`, and is
    /// never sent again.
    async fn interrupt_restore(&self, run: &Run) -> Result<(), DbError> {
        let mut sent = false;
        for e in self.db.entries(run.id).await? {
            if e.action == Action::Restore && e.open() {
                sent = true;
                let why = "the agent stopped before the answer came";
                self.db
                    .resolve(e.id, State::Unknown, None, Some(why), self.now())
                    .await?;
            }
        }
        let why = if sent {
            "the agent stopped while asking the API to restore; the restore may have started: check the server in the VPS.org panel"
        } else {
            "the agent stopped before asking the API to restore; nothing was sent"
        };
        self.interrupt(run, why).await
    }

    async fn resume(&self, run: &Run, job: &JobSettings) -> Result<Option<Outcome>, DbError> {
        let mut st = RunState::new(run.id, job, run.started_at, run.scheduled_for);
        st.step = run.step;
        st.trigger = run.trigger;
        if let Err(e) = self.relist(&mut st).await? {
            return self.finish(st, Err(fail(Step::List, e))).await.map(Some);
        }
        self.settle_open(job.server_id, &st.listing, Some(run.id))
            .await?;
        st.deletes_spent = self.db.deletes_spent(run.id).await?;
        let entries = self.db.entries(run.id).await?;
        st.deleted = entries
            .iter()
            .filter(|e| e.action == Action::Delete && e.state == State::Ok)
            .filter_map(|e| e.snapshot())
            .collect();
        let Some(create) = entries.iter().find(|e| e.action == Action::Create) else {
            self.interrupt(run, "the agent stopped before requesting the snapshot")
                .await?;
            return Ok(None);
        };
        st.requested_at = Some(create.recorded_at());
        let snapshot = match (create.state, create.snapshot()) {
            (State::Error, _) => {
                self.interrupt(
                    run,
                    "the API refused the snapshot; the agent stopped before recording the failure",
                )
                .await?;
                return Ok(None);
            }
            (State::Ok, Some(id)) => st.listing.get(id).cloned(),
            _ => {
                let name = create.snapshot_name.clone().unwrap_or_default();
                match self.find_by_name(&mut st, &name).await {
                    Ok(Some(s)) => {
                        if let Err(f) = self.adopt(&st, create.id, &s).await {
                            return self.finish(st, Err(f)).await.map(Some);
                        }
                        Some(s)
                    }
                    Ok(None) => {
                        self.interrupt(run, "the agent stopped while requesting the snapshot, and no snapshot of that name has appeared; if one does, a later run counts it as the agent's").await?;
                        return Ok(None);
                    }
                    Err(f) => return self.finish(st, Err(f)).await.map(Some),
                }
            }
        };
        let Some(snapshot) = snapshot else {
            self.interrupt(
                run,
                "the agent stopped while the snapshot was being made, and the snapshot is gone",
            )
            .await?;
            return Ok(None);
        };
        st.snapshot = Some(snapshot);
        // Look first: the snapshot may have completed while the agent was down.
        let mut result = self.poll(&mut st, Duration::ZERO).await;
        if result.is_ok() {
            result = self.rotate(&mut st).await;
        }
        self.finish(st, result).await.map(Some)
    }
}
