//! A restore, recorded as a run of kind `restore`. By default it is undoable: first a
//! safety snapshot of the server's current state (a normal journaled create, named
//! `…-prerestore`, pinned for the job's `restore_safety_keep`), waited for until it has
//! completed, and only then the restore request — itself a journal entry before it
//! leaves, and never sent twice. The API only starts a restore, so a run that sent it
//! ends `started`.

use anyhow::anyhow;

use super::{Failure, Outcome, RunState, Runner, fail};
use crate::alert::text;
use crate::api::{ApiError, Snapshot, SnapshotStatus};
use crate::config::JobSettings;
use crate::db::{
    Action, DbError, Finish, Intent, NewAlert, NewRun, RunKind, RunStatus, RunTrigger, State, Step,
};
use crate::domain::{RunId, SnapshotId};
use crate::retention::LIMIT;

/// What `agent restore` asks for.
pub struct RestoreRequest<'a> {
    /// The snapshot to restore; its server is the one restored.
    pub snapshot: &'a Snapshot,
    /// The job configured for that server: its policy makes room for the safety snapshot
    /// and later rotates it; its name names the run.
    pub job: Option<&'a JobSettings>,
    /// Take the safety snapshot first (needs `job`).
    pub safety: bool,
}

impl Runner {
    /// Restores `req.snapshot`'s server, with a safety snapshot first unless told not to.
    pub async fn restore(&self, req: RestoreRequest<'_>) -> Result<Outcome, DbError> {
        let snapshot = req.snapshot;
        let server_id = snapshot.server.id;
        let job_name = req
            .job
            .map_or_else(|| format!("server-{server_id}"), |j| j.name.clone());
        let started_at = self.now();
        let run_id = self
            .db
            .start_run(
                NewRun {
                    job: &job_name,
                    server_id,
                    kind: RunKind::Restore,
                    trigger: RunTrigger::Manual,
                    scheduled_for: None,
                    started_at,
                },
                &self.owner,
            )
            .await?;
        self.db
            .set_run_snapshot(
                run_id,
                snapshot.id,
                &snapshot.name,
                snapshot.status.as_str(),
            )
            .await?;
        let _flight = self.owner.in_flight(run_id);
        let result = match self.lock(server_id, Some(run_id)).await {
            Err(f) => Err(f),
            Ok(guard) => {
                let r = self.safety_then_restore(run_id, &req, started_at).await;
                guard.release().await;
                r
            }
        };
        self.end_restore(run_id, &job_name, &req, started_at, result)
            .await
    }

    async fn safety_then_restore(
        &self,
        run_id: RunId,
        req: &RestoreRequest<'_>,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<SnapshotId>, Failure> {
        self.check_target(run_id, req).await?;
        let safety = match (req.safety, req.job) {
            (false, _) => None,
            (true, Some(job)) => Some(
                self.safety_snapshot(run_id, job, started_at, req.snapshot.id)
                    .await?,
            ),
            (true, None) => {
                return Err(fail(
                    Step::Start,
                    anyhow!(
                        "no job is configured for server {}, so its safety snapshot would have \
                         no retention policy; add a job for it, or pass --no-safety-snapshot",
                        req.snapshot.server.id
                    ),
                ));
            }
        };
        if let Some(id) = safety {
            self.db
                .set_restore_safety(run_id, Some(id), &undo_note(req.snapshot, Some(id)))
                .await?;
        }
        self.db.set_step(run_id, Step::Restore).await?;
        match self.request_restore(run_id, req.snapshot).await? {
            Ok(()) => Ok(safety),
            Err(e) => Err(fail(Step::Restore, e)),
        }
    }

    /// Before anything changes: a fresh listing of the server confirms that the snapshot
    /// to restore is there, on that server, and `completed` (the API refuses anything
    /// else, and by then a safety snapshot would have been taken for nothing).
    async fn check_target(&self, run_id: RunId, req: &RestoreRequest<'_>) -> Result<(), Failure> {
        let target = req.snapshot;
        let server = target.server.id;
        let listing = match self.client.list(Some(server)).await {
            Ok(l) => l,
            Err(e) => {
                let e = anyhow!(e).context("checking the snapshot to restore");
                return Err(fail(Step::Start, e));
            }
        };
        let refuse = |why: String| {
            Err(fail(
                Step::Start,
                anyhow!("{why}; nothing was changed on the server"),
            ))
        };
        if listing.doubts(target.id) {
            return refuse(format!(
                "the API lists snapshot {} inconsistently ({}): not restoring from it",
                target.id,
                listing.odd()
            ));
        }
        let Some(now) = listing.get(target.id) else {
            return refuse(format!(
                "snapshot {} is not (or no longer) listed on server {server}",
                target.id
            ));
        };
        if now.status != SnapshotStatus::Completed {
            return refuse(format!(
                "snapshot {} ({}) is {}, not completed: only a completed snapshot can be restored",
                target.id, target.name, now.status
            ));
        }
        let detail = format!("snapshot {} is completed on server {server}", target.id);
        self.db
            .observe(
                Intent {
                    run_id,
                    server_id: server,
                    action: Action::List,
                    snapshot_id: Some(target.id),
                    snapshot_name: Some(&target.name),
                    detail: Some(&detail),
                },
                State::Ok,
                self.now(),
            )
            .await?;
        Ok(())
    }

    /// The safety snapshot: listed, room made by the job's policy, created, pinned at
    /// once, and waited for until completed. Any failure stops the restore.
    async fn safety_snapshot(
        &self,
        run_id: RunId,
        job: &JobSettings,
        started_at: chrono::DateTime<chrono::Utc>,
        target: SnapshotId,
    ) -> Result<SnapshotId, Failure> {
        let mut st = RunState::new(run_id, job, started_at, None);
        st.pre_restore = true;
        st.spare = Some(target);
        // A maintenance window has nothing to do with a restore's safety snapshot.
        st.window_alerted = true;
        self.observe(&st, Action::Lock, None, State::Ok, None)
            .await?;
        st.step = Step::List;
        self.list(&mut st).await?;
        self.reconcile(&mut st).await?;
        if st.listing.held() >= LIMIT as usize {
            self.make_room(&mut st).await?;
        }
        self.create(&mut st).await?;
        let Some(id) = st.snapshot.as_ref().map(|s| s.id) else {
            return Err(fail(
                Step::Create,
                anyhow!("no safety snapshot to wait for"),
            ));
        };
        let now = self.now();
        let until = now + chrono::Duration::from_std(job.restore_safety_keep).unwrap_or_default();
        self.db.pin_until(id, now, Some(until)).await?;
        self.db
            .set_restore_safety(run_id, Some(id), "safety snapshot not completed yet")
            .await?;
        let first = self.first_wait(job).await;
        if let Err(f) = self.poll(&mut st, first).await {
            // Not a way back (failed, or not there yet) and the server was not touched:
            // the pin would only keep a useless snapshot from rotation.
            self.db.unpin(id).await?;
            return Err(f);
        }
        Ok(id)
    }

    /// Records the end: `started` with the way back, or `failed` (and an alert).
    async fn end_restore(
        &self,
        run_id: RunId,
        job_name: &str,
        req: &RestoreRequest<'_>,
        started_at: chrono::DateTime<chrono::Utc>,
        result: Result<Option<SnapshotId>, Failure>,
    ) -> Result<Outcome, DbError> {
        let now = self.now();
        let server_id = req.snapshot.server.id;
        let safety_id = self
            .db
            .run(run_id)
            .await?
            .and_then(|r| r.safety_snapshot_id);
        let (status, error, note, safety) = match &result {
            Ok(safety) => (
                RunStatus::Started,
                None,
                undo_note(req.snapshot, *safety),
                *safety,
            ),
            Err(f) => {
                let error = format!(
                    "{}; the restore was not done",
                    crate::errors::line(&f.error)
                );
                let note = self.not_restored(f, safety_id).await?;
                (RunStatus::Failed, Some(error), note, None)
            }
        };
        self.db
            .set_restore_safety(run_id, safety.or(safety_id), &note)
            .await?;
        let alerts = self.restore_alerts(job_name, run_id, req.snapshot, safety, error.as_deref());
        let step = result.as_ref().err().and_then(|f| f.step);
        self.db
            .finish_run(
                run_id,
                &self.owner,
                Finish {
                    status,
                    error: error.as_deref(),
                    step: step.or(Some(Step::Restore)),
                    at: now,
                    alerts: &alerts,
                    ping: None,
                },
            )
            .await?;
        Ok(Outcome {
            run_id,
            job: job_name.to_string(),
            server_id,
            status,
            snapshot: Some((req.snapshot.id, req.snapshot.name.clone())),
            deleted: Vec::new(),
            error,
            cause: result.as_ref().err().map(|f| f.cause),
            polls: 0,
            started_at,
            elapsed: (now - started_at).to_std().unwrap_or_default(),
            safety,
        })
    }

    /// What a failed restore's record says happened. A restore the API refused outright
    /// overwrote nothing: its safety snapshot is no way back from anything, so its pin is
    /// released (the job's retention takes it in time). One whose answer was lost may
    /// have started: the pin stays.
    async fn not_restored(
        &self,
        f: &Failure,
        safety: Option<SnapshotId>,
    ) -> Result<String, DbError> {
        if f.step != Some(Step::Restore) {
            return Ok("the restore was not sent: nothing on the server was overwritten".into());
        }
        let unknown = f
            .error
            .chain()
            .filter_map(|e| e.downcast_ref::<ApiError>())
            .any(|e| matches!(e, ApiError::OutcomeUnknown { .. }));
        if unknown {
            return Ok(match safety {
                Some(id) => format!(
                    "the restore request's answer was lost: it may have started (check the \
                     server in the VPS.org panel); safety snapshot {id} stays pinned, and \
                     `agent restore {id}` undoes it"
                ),
                None => "the restore request's answer was lost: it may have started (check \
                         the server in the VPS.org panel)"
                    .into(),
            });
        }
        Ok(match safety {
            Some(id) => {
                self.db.unpin(id).await?;
                format!(
                    "the API refused the restore: the server was not changed; safety snapshot \
                     {id} was taken first and is now unpinned (its job's retention rotates it \
                     out)"
                )
            }
            None => "the API refused the restore: the server was not changed".into(),
        })
    }

    /// What the operators hear (when alerts are mailed): the way back, or why not.
    fn restore_alerts(
        &self,
        job_name: &str,
        run_id: RunId,
        from: &Snapshot,
        safety: Option<SnapshotId>,
        error: Option<&str>,
    ) -> Vec<NewAlert> {
        let (server_id, now) = (from.server.id, self.now());
        match (&self.alerts, error) {
            (None, _) => Vec::new(),
            (Some(_), None) => vec![text::restored(
                job_name, server_id, run_id, from, safety, now,
            )],
            (Some(_), Some(e)) => vec![text::restore_failed(
                job_name, server_id, run_id, from, e, now,
            )],
        }
    }

    /// The restore request itself, journaled. `Err(Err)` only when it cannot be recorded.
    async fn request_restore(
        &self,
        run_id: RunId,
        snapshot: &Snapshot,
    ) -> Result<Result<(), ApiError>, DbError> {
        let intent = Intent {
            run_id,
            server_id: snapshot.server.id,
            action: Action::Restore,
            snapshot_id: Some(snapshot.id),
            snapshot_name: Some(&snapshot.name),
            detail: None,
        };
        let entry = self.db.intend(intent, &self.owner, self.now()).await?;
        let answer = self.client.restore(snapshot.id).await;
        let (state, detail) = match &answer {
            Ok(resp) => (
                State::Ok,
                resp.message
                    .clone()
                    .unwrap_or_else(|| "restore started".into()),
            ),
            Err(e @ ApiError::OutcomeUnknown { .. }) => (State::Unknown, e.to_string()),
            Err(e) => (State::Error, e.to_string()),
        };
        self.db
            .resolve(entry, state, None, Some(&detail), self.now())
            .await?;
        Ok(answer.map(|_| ()))
    }
}

/// The job configured for `snap`'s server: the one whose name the snapshot bears, else
/// the first for that server. Its policy makes room for the safety snapshot.
pub fn job_for<'a>(jobs: &'a [JobSettings], snap: &Snapshot) -> Option<&'a JobSettings> {
    let on_server = |j: &&JobSettings| j.server_id == snap.server.id;
    let named = crate::snapshot::naming::parse(&snap.name).map(|p| p.job);
    jobs.iter()
        .filter(on_server)
        .find(|j| named.as_deref() == Some(j.name.as_str()))
        .or_else(|| jobs.iter().find(on_server))
}

/// What the operator reads in history: what was done, and how to undo it.
pub fn undo_note(snapshot: &Snapshot, safety: Option<SnapshotId>) -> String {
    let done = format!(
        "restore of server {} from snapshot {} ({}) started",
        snapshot.server.id, snapshot.id, snapshot.name
    );
    match safety {
        Some(id) => format!("{done}; to undo, `agent restore {id}`"),
        None => format!("{done}; no safety snapshot was taken (--no-safety-snapshot)"),
    }
}
