//! A restore, recorded as a run of kind `restore`: the request is a journal entry before
//! it leaves, and is never sent twice.

use super::{Outcome, Runner};
use crate::api::{ApiError, Snapshot};
use crate::db::{
    Action, DbError, Finish, Intent, NewRun, RunKind, RunStatus, RunTrigger, State, Step,
};
use crate::domain::RunId;

impl Runner {
    /// Starts a restore of `snapshot`, recorded under `job_name`.
    pub async fn restore(&self, job_name: &str, snapshot: &Snapshot) -> Result<Outcome, DbError> {
        let started_at = self.now();
        let server_id = snapshot.server.id;
        let run_id = self
            .db
            .start_run(
                NewRun {
                    job: job_name,
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
        let result = match self.lock(server_id, Some(run_id)).await {
            Err(f) => Err(format!("{:#}", f.error)),
            Ok(guard) => {
                let r = self.request_restore(run_id, snapshot).await;
                guard.release().await;
                r?
            }
        };
        let now = self.now();
        let (status, error) = match &result {
            Ok(()) => (RunStatus::Started, None),
            Err(e) => (RunStatus::Failed, Some(e.clone())),
        };
        self.db
            .finish_run(
                run_id,
                &self.owner,
                Finish {
                    status,
                    error: error.as_deref(),
                    step: Some(Step::Restore),
                    at: now,
                    alerts: &[],
                },
            )
            .await?;
        Ok(Outcome {
            run_id,
            job: job_name.to_string(),
            server_id,
            status,
            snapshot: Some((snapshot.id, snapshot.name.clone())),
            deleted: Vec::new(),
            error,
            cause: None,
            polls: 0,
            elapsed: (now - started_at).to_std().unwrap_or_default(),
        })
    }

    /// The restore request itself, journaled. `Err(Err)` only when it cannot be recorded.
    async fn request_restore(
        &self,
        run_id: RunId,
        snapshot: &Snapshot,
    ) -> Result<Result<(), String>, DbError> {
        let intent = Intent {
            run_id,
            server_id: snapshot.server.id,
            action: Action::Restore,
            snapshot_id: Some(snapshot.id),
            snapshot_name: Some(&snapshot.name),
            detail: None,
        };
        let entry = self.db.intend(intent, self.now()).await?;
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
        Ok(answer.map(|_| ()).map_err(|e| e.to_string()))
    }
}
