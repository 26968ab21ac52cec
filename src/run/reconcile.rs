//! Before a run touches its server: settle what earlier runs left open, from the listing
//! in hand, then look for drift. A delete whose answer was lost is the agent's own doing
//! once its snapshot is gone; a create whose answer was lost made the snapshot that
//! carries its name, however late that lands. Only what the journal says the job made on
//! this server, saw complete, and never tried to delete can have drifted.

use std::collections::HashSet;

use super::{Failure, RunState, Runner};
use crate::alert::text;
use crate::api::Listing;
use crate::db::{Action, DbError, State};
use crate::domain::{RunId, ServerId, SnapshotId};

/// How many of a job's latest snapshots the drift check compares with a listing.
const DRIFT_WINDOW: u32 = 20;

impl Runner {
    pub(super) async fn reconcile(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        self.settle_open(st.job.server_id, &st.listing, None)
            .await?;
        self.check_drift(st).await
    }

    /// Resolves the open creates and deletes on `server_id` (of run `only`, or of every
    /// run) from `listing`. Restores leave no trace in a listing and stay open.
    pub(super) async fn settle_open(
        &self,
        server_id: ServerId,
        listing: &Listing,
        only: Option<RunId>,
    ) -> Result<(), DbError> {
        let listing_has = |id| listing.get(id).is_some();
        for e in self.db.unresolved(server_id).await? {
            if only.is_some_and(|run| run != e.run_id) {
                continue;
            }
            match (e.action, e.snapshot(), e.snapshot_name.as_deref()) {
                // An item that could not be read may be the one: absence proves nothing.
                (Action::Delete, Some(_), _) if listing.unreadable > 0 => {}
                (Action::Delete, Some(id), _) => {
                    let (state, detail) = if listing_has(id) {
                        (State::Error, "not carried out: still listed afterwards")
                    } else {
                        (State::Ok, "carried out; its answer was lost")
                    };
                    tracing::info!(
                        run = %e.run_id,
                        snapshot = %id,
                        "the delete whose answer was lost was {detail}"
                    );
                    self.db
                        .resolve(e.id, state, None, Some(detail), self.now())
                        .await?;
                }
                (Action::Create, _, Some(name)) => {
                    if let Some(s) = listing.snapshots.iter().find(|s| s.name == name) {
                        tracing::info!(run = e.run_id.get(), snapshot = s.id.get(), %name, "a snapshot whose create answer was lost has appeared; it is the agent's");
                        self.db
                            .resolve(
                                e.id,
                                State::Ok,
                                Some((s.id, s.status.as_str())),
                                Some("its answer was lost; it appeared later"),
                                self.now(),
                            )
                            .await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Snapshots this job made on this server and saw complete that are gone, though the
    /// agent never tried to delete them: someone else did. Alert once per snapshot.
    async fn check_drift(&self, st: &RunState<'_>) -> Result<(), Failure> {
        let job = st.job;
        // An item that could not be read may be one of them: nothing is judged gone.
        if st.listing.unreadable > 0 {
            return Ok(());
        }
        let made = self
            .db
            .made_by(&job.name, job.server_id, DRIFT_WINDOW)
            .await?;
        let present: HashSet<SnapshotId> = st.listing.snapshots.iter().map(|s| s.id).collect();
        let gone: Vec<(SnapshotId, String)> = made
            .into_iter()
            .filter(|(id, _)| !present.contains(id))
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for (id, name) in &gone {
            self.observe(st, Action::Vanished, Some(*id), State::Ok, Some(name))
                .await?;
        }
        tracing::warn!(
            count = gone.len(),
            "managed snapshots vanished outside the agent"
        );
        if self.alerts.is_some() {
            let a = text::drift(&job.name, job.server_id, st.run_id, &gone, self.now());
            self.db.queue_alert(&a).await?;
        }
        Ok(())
    }
}
