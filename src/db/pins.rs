//! Pins: a pinned snapshot is never rotated out.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Database, DbResult, State, ms};
use crate::domain::{RunId, SnapshotId};

impl Database {
    pub async fn pin(&self, snapshot_id: SnapshotId, at: DateTime<Utc>) -> DbResult<bool> {
        self.pin_until(snapshot_id, at, None).await
    }

    /// Pins `snapshot_id` from `at` until `until` (`None`: until unpinned). A pin that has
    /// run out no longer counts; pinning again replaces it.
    pub async fn pin_until(
        &self,
        snapshot_id: SnapshotId,
        at: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> DbResult<bool> {
        let n = self.q(
            "INSERT INTO pins (snapshot_id, pinned_at, until) VALUES ($1, $2, $3) \
             ON CONFLICT (snapshot_id) DO UPDATE SET pinned_at = excluded.pinned_at, until = excluded.until \
             WHERE pins.until IS NOT NULL \
               AND (excluded.until IS NULL OR excluded.until > pins.until OR pins.until <= excluded.pinned_at)",
        )
        .bind(snapshot_id)
        .bind(ms(at))
        .bind(until.map(ms))
            .execute(self)
            .await
            .map_err(self.err("cannot pin"))?;
        Ok(n == 1)
    }

    /// The latest delete of `snapshot_id` a run recorded and did not see fail: the run
    /// and what became of it (pending while its request may be in flight). Asked by a
    /// pin after it is committed: a delete recorded before then was not stopped by it.
    pub async fn delete_recorded(
        &self,
        snapshot_id: SnapshotId,
    ) -> DbResult<Option<(RunId, State)>> {
        self.q(
            "SELECT run_id, state FROM journal WHERE action = 'delete' AND snapshot_id = $1 \
             AND state <> 'error' ORDER BY id DESC LIMIT 1",
        )
        .bind(snapshot_id)
        .fetch_optional(self)
        .await
        .map_err(self.err("cannot read the journal"))
    }

    pub async fn unpin(&self, snapshot_id: SnapshotId) -> DbResult<bool> {
        let n = self
            .q("DELETE FROM pins WHERE snapshot_id = $1")
            .bind(snapshot_id)
            .execute(self)
            .await
            .map_err(self.err("cannot unpin"))?;
        Ok(n == 1)
    }

    /// The snapshots pinned at `now`.
    pub async fn pins(&self, now: DateTime<Utc>) -> DbResult<HashSet<SnapshotId>> {
        let rows: Vec<(SnapshotId,)> = self
            .q("SELECT snapshot_id FROM pins WHERE until IS NULL OR until > $1")
            .bind(ms(now))
            .fetch_all(self)
            .await
            .map_err(self.err("cannot read pins"))?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// When `snapshot_id`'s pin ends, if it is pinned for a while only.
    pub async fn pin_ends(&self, snapshot_id: SnapshotId) -> DbResult<Option<DateTime<Utc>>> {
        let row: Option<(Option<super::StoredTime>,)> = self
            .q("SELECT until FROM pins WHERE snapshot_id = $1")
            .bind(snapshot_id)
            .fetch_optional(self)
            .await
            .map_err(self.err("cannot read pins"))?;
        Ok(row.and_then(|(u,)| u).map(|t| t.0))
    }
}
