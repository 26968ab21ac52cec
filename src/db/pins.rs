//! Pins: a pinned snapshot is never rotated out.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Database, DbResult, ms};

impl Database {
    pub async fn pin(&self, snapshot_id: u64, at: DateTime<Utc>) -> DbResult<bool> {
        let n = sqlx::query("INSERT OR IGNORE INTO pins (snapshot_id, pinned_at) VALUES (?, ?)")
            .bind(snapshot_id as i64)
            .bind(ms(at))
            .execute(self.pool())
            .await
            .map_err(self.err("cannot pin"))?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn unpin(&self, snapshot_id: u64) -> DbResult<bool> {
        let n = sqlx::query("DELETE FROM pins WHERE snapshot_id = ?")
            .bind(snapshot_id as i64)
            .execute(self.pool())
            .await
            .map_err(self.err("cannot unpin"))?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn pins(&self) -> DbResult<HashSet<u64>> {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT snapshot_id FROM pins")
            .fetch_all(self.pool())
            .await
            .map_err(self.err("cannot read pins"))?;
        Ok(rows.into_iter().map(|(id,)| id as u64).collect())
    }
}
