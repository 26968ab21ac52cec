//! Step 3: create the snapshot. The name (the only handle a lost answer leaves) is in the
//! journal before the request leaves. A create is asked for once: when its answer is lost
//! the run looks for the name, adopts what it finds, and otherwise fails rather than ask
//! again, because a create can land minutes late and a run must never hold two.

use anyhow::anyhow;

use super::{Failure, RunState, Runner, fail, fail_as};
use crate::alert::Cause;
use crate::api::{ApiError, Snapshot};
use crate::db::{Action, EntryId, Intent, State, Step};
use crate::retention::LIMIT;
use crate::snapshot::naming;

impl Runner {
    pub(super) async fn create(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        let job = st.job;
        refuse_beside_unreadable(st)?;
        let name = self.fresh_name(st);
        st.step = Step::Create;
        let description =
            self.client
                .marker()
                .description(&job.name, job.server_id, st.run_id, &name);
        let intent = Intent {
            snapshot_name: Some(&name),
            ..st.intent(Action::Create, None)
        };
        let entry = self.db.intend(intent, &self.owner, self.now()).await?;
        st.requested_at = Some(self.now());
        match self.client.create(job.server_id, &name, &description).await {
            Ok(snap) => {
                self.db
                    .resolve(
                        entry,
                        State::Ok,
                        Some((snap.id, snap.status.as_str())),
                        None,
                        self.now(),
                    )
                    .await?;
                tracing::info!(snapshot = snap.id.get(), %name, "snapshot requested");
                st.snapshot = Some(snap);
                Ok(())
            }
            Err(ApiError::OutcomeUnknown { what, reason }) => {
                let detail = format!("{what}: outcome unknown ({reason})");
                self.create_outcome_unknown(st, entry, &name, &detail).await
            }
            Err(e) => self.create_refused(st, entry, e).await,
        }
    }

    /// A create whose answer was lost (`detail` says how): journals it as unknown, then
    /// looks for the snapshot by `name` and adopts it, or fails without asking again.
    async fn create_outcome_unknown(
        &self,
        st: &mut RunState<'_>,
        entry: EntryId,
        name: &str,
        detail: &str,
    ) -> Result<(), Failure> {
        self.db
            .resolve(entry, State::Unknown, None, Some(detail), self.now())
            .await?;
        tracing::warn!("{detail}; listing to find out");
        let Some(snap) = self.find_by_name(st, name).await? else {
            return Err(fail(
                Step::Create,
                anyhow!(
                    "{detail}; no snapshot named {name} appeared within {}. Not asking \
                     again: a create can land late, and a run must never make two. If it \
                     appears, the next run counts it as the agent's",
                    crate::human::span(self.settle_period())
                ),
            ));
        };
        self.adopt(st, entry, &snap).await?;
        st.snapshot = Some(snap);
        Ok(())
    }

    /// A create the API refused with `e`: journals the error and fails the run, as out
    /// of room when a bad request came from a server at the limit.
    async fn create_refused(
        &self,
        st: &RunState<'_>,
        entry: EntryId,
        e: ApiError,
    ) -> Result<(), Failure> {
        self.db
            .resolve(entry, State::Error, None, Some(&e.to_string()), self.now())
            .await?;
        if matches!(e, ApiError::BadRequest { .. }) && st.listing.held() >= LIMIT as usize {
            let held = format!(
                "server {} holds {} (limit {LIMIT})",
                st.job.server_id,
                crate::human::count(st.listing.held(), "snapshot")
            );
            return Err(fail_as(
                Step::Create,
                Cause::NoRoom,
                anyhow!(e).context(held),
            ));
        }
        Err(fail(Step::Create, e))
    }

    /// A name no snapshot on the server has (`…-prerestore` for a restore's safety one).
    fn fresh_name(&self, st: &RunState<'_>) -> String {
        loop {
            let n = if st.pre_restore {
                naming::new_pre_restore_name(&st.job.name, self.now())
            } else {
                naming::new_name(&st.job.name, self.now())
            };
            if !st.listing.snapshots.iter().any(|s| s.name == n) {
                return n;
            }
        }
    }

    /// Takes `snap`, found by name, as what the create `entry` made.
    pub(super) async fn adopt(
        &self,
        st: &RunState<'_>,
        entry: EntryId,
        snap: &Snapshot,
    ) -> Result<(), Failure> {
        self.db
            .resolve(
                entry,
                State::Ok,
                Some((snap.id, snap.status.as_str())),
                Some("its answer was lost; found by name"),
                self.now(),
            )
            .await?;
        self.observe(
            st,
            Action::Adopt,
            Some(snap.id),
            State::Ok,
            Some(&snap.name),
        )
        .await?;
        tracing::info!(
            snapshot = %snap.id,
            "adopted the snapshot whose create answer was lost"
        );
        Ok(())
    }

    /// How long a lost create is looked for: `max_retries + 2` listings `settle` apart.
    fn settle_period(&self) -> std::time::Duration {
        self.settle * (self.max_retries + 1)
    }

    /// Looks for the snapshot named `name` after a create whose outcome is unknown. A
    /// failed listing is not "absent", and neither is one listing: absence counts only
    /// after `max_retries + 2` listings `settle` apart.
    pub(super) async fn find_by_name(
        &self,
        st: &mut RunState<'_>,
        name: &str,
    ) -> Result<Option<Snapshot>, Failure> {
        let mut last_error = None;
        let mut absent = 0;
        for attempt in 0..(self.max_retries + 2) * 2 {
            if attempt > 0 {
                self.clock.sleep(self.settle).await;
            }
            match self.relist(st).await? {
                Ok(()) => {
                    if let Some(found) = st.listing.snapshots.iter().find(|s| s.name == name) {
                        return Ok(Some(found.clone()));
                    }
                    absent += 1;
                    if absent >= self.max_retries + 2 {
                        return Ok(None);
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        let e = last_error.map_or_else(|| anyhow!("no listing"), anyhow::Error::from);
        Err(fail(
            Step::Create,
            e.context(format!(
                "the create request's outcome is unknown and listing failed; not asking for {name} again"
            )),
        ))
    }
}

/// Refuses to create beside an item the agent cannot read that bears this job's name: it
/// may be a snapshot the agent made (a create whose answer it could not read either), and
/// one more would only pile up beside it, each as unreadable.
fn refuse_beside_unreadable(st: &RunState<'_>) -> Result<(), Failure> {
    let job = st.job;
    if let Some(name) = st
        .listing
        .unreadable_names
        .iter()
        .find(|n| naming::parse(n).is_some_and(|p| p.job == job.name))
    {
        let e = anyhow!(
            "the API lists a snapshot named {name} that the agent cannot read ({}); it \
             may be this job's own, so no other is made until it can be read: look at \
             server {} in the VPS.org panel",
            st.listing.odd(),
            job.server_id
        );
        return Err(fail(Step::Create, e));
    }
    Ok(())
}
