//! Pins: a pinned snapshot is never rotated out.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Database, DbResult, ms};
use crate::domain::SnapshotId;

impl Database {
    pub async fn pin(&self, snapshot_id: SnapshotId, at: DateTime<Utc>) -> DbResult<bool> {
        let n = sqlx::query("INSERT OR IGNORE INTO pins (snapshot_id, pinned_at) VALUES (?, ?)")
            .bind(snapshot_id)
            .bind(ms(at))
            .execute(self.pool())
            .await
            .map_err(self.err("cannot pin"))?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn unpin(&self, snapshot_id: SnapshotId) -> DbResult<bool> {
        let n = sqlx::query("DELETE FROM pins WHERE snapshot_id = ?")
            .bind(snapshot_id)
            .execute(self.pool())
            .await
            .map_err(self.err("cannot unpin"))?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn pins(&self) -> DbResult<HashSet<SnapshotId>> {
        let rows: Vec<(SnapshotId,)> = sqlx::query_as("SELECT snapshot_id FROM pins")
            .fetch_all(self.pool())
            .await
            .map_err(self.err("cannot read pins"))?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }
}
