//! Step 2's make-room and step 5's rotation: deleting the job's own snapshots that the
//! policy drops, each re-checked against a fresh listing, at most `max_deletions_per_run`
//! per run. Every delete is a journal entry before its request leaves.

use std::collections::HashSet;

use anyhow::anyhow;

use super::{Failure, RunState, Runner, fail, fail_as};
use crate::alert::Cause;
use crate::api::{ApiError, SnapshotStatus};
use crate::config::JobSettings;
use crate::db::{Action, DbError, Intent, State, Step};
use crate::domain::SnapshotId;
use crate::retention::{self, Candidate, LIMIT};

impl Runner {
    /// Deletes snapshot `id`, the intent recorded first. An answer lost on the way
    /// leaves the entry `unknown`, and the delete counts against the run's budget.
    /// `None` when the snapshot was pinned since it was chosen: nothing is asked.
    async fn delete(
        &self,
        st: &mut RunState<'_>,
        id: SnapshotId,
        why: &str,
    ) -> Result<Option<Result<(), ApiError>>, DbError> {
        let name = st.listing.get(id).map(|s| s.name.clone());
        let intent = Intent {
            snapshot_name: name.as_deref(),
            detail: Some(why),
            ..st.intent(Action::Delete, Some(id))
        };
        let Some(entry) = self
            .db
            .intend_delete(intent, &self.owner, self.now())
            .await?
        else {
            tracing::info!(
                snapshot = id.get(),
                "pinned since it was chosen for deletion: left alone"
            );
            return Ok(None);
        };
        st.deletes_spent += 1;
        let result = self.client.delete(id).await;
        let (state, detail) = match &result {
            Ok(()) => (State::Ok, None),
            Err(e @ ApiError::OutcomeUnknown { .. }) => (State::Unknown, Some(e.to_string())),
            Err(e) => (State::Error, Some(e.to_string())),
        };
        self.db
            .resolve(entry, state, None, detail.as_deref(), self.now())
            .await?;
        match state {
            State::Ok => {
                st.deleted.push(id);
                st.listing.snapshots.retain(|s| s.id != id);
                tracing::info!(snapshot = id.get(), "deleted ({why})");
            }
            State::Error => st.deletes_spent -= 1,
            _ => {}
        }
        Ok(Some(result))
    }

    fn budget(&self, st: &RunState<'_>) -> u32 {
        st.job
            .max_deletions_per_run
            .saturating_sub(st.deletes_spent)
    }

    /// The server is at the limit: delete what must go for one more snapshot to fit.
    pub(super) async fn make_room(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        st.step = Step::MakeRoom;
        let job = st.job;
        if !st.listing.consistent() {
            let e = anyhow!(
                "server {} is at the limit of {LIMIT} snapshots by a listing the agent cannot \
                 trust ({}); nothing is deleted on such a listing. Look at the server in the \
                 VPS.org panel, or free a slot by hand",
                job.server_id,
                st.listing.odd()
            );
            return Err(fail_as(Step::MakeRoom, Cause::NoRoom, e));
        }
        let cands = self.candidates(st).await?;
        let victims = retention::make_room(
            &cands,
            &job.retention,
            job.timezone,
            self.now(),
            self.budget(st),
        )
        .map_err(|no_room| {
            let e = anyhow!(
                "server {} is at the limit of {LIMIT} snapshots and none may be deleted to make room; blocking: {}",
                job.server_id,
                no_room.list()
            );
            fail_as(Step::MakeRoom, Cause::NoRoom, e)
        })?;
        for id in victims {
            match self.delete(st, id, "make room").await? {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(fail(
                        Step::MakeRoom,
                        anyhow!(e).context(format!("making room on server {}", job.server_id)),
                    ));
                }
                None => {
                    let e = anyhow!(
                        "server {} is at the limit of {LIMIT} snapshots and snapshot {id}, \
                         chosen to make room, was pinned meanwhile; it is kept",
                        job.server_id
                    );
                    return Err(fail_as(Step::MakeRoom, Cause::NoRoom, e));
                }
            }
        }
        Ok(())
    }

    /// After success: delete what the policy drops, each re-checked against a fresh
    /// listing first, within the run's budget. Errors are recorded, never fatal: the
    /// snapshot was made.
    pub(super) async fn rotate(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        st.step = Step::Rotate;
        let job = st.job;
        let new_id = st.snapshot.as_ref().map(|s| s.id);
        let mut tried: HashSet<SnapshotId> = HashSet::new();
        // The candidates last read: after a delete, whether anything is left to delete is
        // asked of them; what is deleted is decided only on a fresh listing, its
        // candidates read again.
        let mut in_hand: Option<Vec<Candidate>> = None;
        let mut fresh = true;
        while self.budget(st) > 0 {
            // A listing with anomalies is never a reason to delete (said in the run's
            // warnings when it was listed).
            if !st.listing.consistent() {
                tracing::warn!("rotation skipped: the listing was inconsistent");
                break;
            }
            // Nothing left to delete by the listing in hand: done, no request spent.
            let known = match in_hand.take() {
                Some(cands) if !fresh => cands,
                _ => self.candidates(st).await?,
            };
            let (mut cands, mut victim) = next_victim(&known, &tried, job);
            if victim.is_none() {
                break;
            }
            // The final poll's listing is fresh for the first delete; after a delete,
            // list again so that each victim is re-checked against a fresh listing.
            if !fresh {
                if !self.relist_for_rotation(st, new_id).await? {
                    break;
                }
                (cands, victim) = next_victim(&self.candidates(st).await?, &tried, job);
            }
            let Some(victim) = victim else {
                break;
            };
            tried.insert(victim);
            in_hand = Some(cands.clone());
            if !still_deletable(&cands, victim, new_id) {
                continue;
            }
            let reason = rotation_reason(&cands, victim, job);
            let Some(deleted) = self.delete(st, victim, &reason).await? else {
                continue;
            };
            if let Err(e) = deleted {
                tracing::warn!(snapshot = victim.get(), "delete failed: {e}");
                st.delete_errors.push(e.to_string());
                if matches!(e, ApiError::Unauthorized) {
                    // Every other delete would be refused the same way.
                    st.token_rejected = true;
                    break;
                }
            }
            fresh = false;
        }
        Ok(())
    }

    /// Lists the server again between two rotation deletes. False when rotation must
    /// stop (the reason recorded): the listing failed or is inconsistent, or the
    /// snapshot just made (`new_id`) is no longer there and completed.
    async fn relist_for_rotation(
        &self,
        st: &mut RunState<'_>,
        new_id: Option<SnapshotId>,
    ) -> Result<bool, DbError> {
        if let Err(e) = self.relist(st).await? {
            st.token_rejected = matches!(e, ApiError::Unauthorized);
            st.delete_errors.push(format!("rotation stopped: {e}"));
            return Ok(false);
        }
        if !st.listing.consistent() {
            tracing::warn!("rotation stopped: the listing was inconsistent");
            return Ok(false);
        }
        // The snapshot just made must still be there and completed: one that went
        // back to in progress (or away) leaves the policy nothing sure to keep.
        let made = new_id.and_then(|id| st.listing.get(id));
        if new_id.is_some() && made.is_none_or(|s| s.status != SnapshotStatus::Completed) {
            let now = made.map_or("gone", |s| s.status.as_str());
            let odd = format!(
                "rotation stopped: the snapshot just made, completed before, is {now} in a \
                 fresh listing"
            );
            tracing::warn!("API anomaly: {odd}");
            st.warnings.push(odd);
            return Ok(false);
        }
        Ok(true)
    }
}

/// The candidates not yet tried, and the first of them the policy would delete.
fn next_victim(
    cands: &[Candidate],
    tried: &HashSet<SnapshotId>,
    job: &JobSettings,
) -> (Vec<Candidate>, Option<SnapshotId>) {
    let left: Vec<Candidate> = cands
        .iter()
        .filter(|c| !tried.contains(&c.id))
        .cloned()
        .collect();
    let victim = retention::victims(&left, &job.retention, job.timezone, 1)
        .first()
        .copied();
    (left, victim)
}

/// The re-check before a rotation delete: `victim` is in this fresh listing, on this
/// server, the job's own, not pinned, not in progress, and not the snapshot just made.
fn still_deletable(cands: &[Candidate], victim: SnapshotId, new_id: Option<SnapshotId>) -> bool {
    cands.iter().any(|c| {
        c.id == victim
            && c.managed
            && !c.pinned
            && c.status != SnapshotStatus::InProgress
            && Some(c.id) != new_id
    })
}

/// What the journal and the log say a rotation delete is for: the policy's reason.
fn rotation_reason(cands: &[Candidate], victim: SnapshotId, job: &JobSettings) -> String {
    retention::plan(cands, &job.retention, job.timezone)
        .into_iter()
        .find(|v| v.id == victim)
        .map_or_else(
            || "rotation".to_string(),
            |v| format!("rotation: {}", v.reason.trim_start_matches("delete next: ")),
        )
}
