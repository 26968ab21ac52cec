//! The alert outbox: alerts are rows first, mail second. A row leaves the pending set only
//! when the SMTP server has accepted it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

use super::{Database, DbResult, from_ms, ms};

#[derive(Debug, Clone)]
pub struct NewAlert {
    pub job: Option<String>,
    pub server_id: Option<u64>,
    pub run_id: Option<i64>,
    /// `failed`, `recovered`, `stale`, `not_ready_before_window`, `drift`, `no_room`.
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingAlert {
    pub id: i64,
    pub job: Option<String>,
    pub server_id: Option<u64>,
    pub run_id: Option<i64>,
    pub kind: String,
    pub subject: String,
    #[serde(skip)]
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

fn pending_from_row(r: &SqliteRow) -> PendingAlert {
    PendingAlert {
        id: r.get("id"),
        job: r.get("job"),
        server_id: r.get::<Option<i64>, _>("server_id").map(|v| v as u64),
        run_id: r.get("run_id"),
        kind: r.get("kind"),
        subject: r.get("subject"),
        body: r.get("body"),
        created_at: from_ms(r.get("created_at")),
        attempts: r.get("attempts"),
        next_attempt_at: from_ms(r.get("next_attempt_at")),
        last_error: r.get("last_error"),
    }
}

pub(super) async fn insert(
    tx: &mut Transaction<'_, Sqlite>,
    a: &NewAlert,
) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO alerts (job, server_id, run_id, kind, subject, body, created_at, next_attempt_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&a.job)
    .bind(a.server_id.map(|v| v as i64))
    .bind(a.run_id)
    .bind(&a.kind)
    .bind(&a.subject)
    .bind(&a.body)
    .bind(ms(a.created_at))
    .bind(ms(a.created_at))
    .execute(&mut **tx)
    .await?
    .last_insert_rowid())
}

const COLUMNS: &str = "id, job, server_id, run_id, kind, subject, body, created_at, attempts, next_attempt_at, last_error";

impl Database {
    pub async fn queue_alert(&self, a: &NewAlert) -> DbResult<i64> {
        let mut tx = self.begin().await?;
        let id = insert(&mut tx, a)
            .await
            .map_err(self.err("cannot queue an alert"))?;
        tx.commit()
            .await
            .map_err(self.err("cannot queue an alert"))?;
        Ok(id)
    }

    /// Undelivered alerts whose next attempt is due at `now`, oldest first.
    pub async fn due_alerts(&self, now: DateTime<Utc>) -> DbResult<Vec<PendingAlert>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM alerts WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY id"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(ms(now))
            .fetch_all(self.pool())
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(rows.iter().map(pending_from_row).collect())
    }

    /// Every undelivered alert, oldest first.
    pub async fn pending_alerts(&self) -> DbResult<Vec<PendingAlert>> {
        let sql = format!("SELECT {COLUMNS} FROM alerts WHERE sent_at IS NULL ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(rows.iter().map(pending_from_row).collect())
    }

    pub async fn mark_alerts_sent(&self, ids: &[i64], at: DateTime<Utc>) -> DbResult<()> {
        let mut tx = self.begin().await?;
        for id in ids {
            sqlx::query("UPDATE alerts SET sent_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?")
                .bind(ms(at))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(self.err("cannot mark an alert sent"))?;
        }
        tx.commit()
            .await
            .map_err(self.err("cannot mark alerts sent"))?;
        Ok(())
    }

    pub async fn mark_alerts_failed(
        &self,
        ids: &[i64],
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> DbResult<()> {
        let mut tx = self.begin().await?;
        for id in ids {
            sqlx::query("UPDATE alerts SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?")
                .bind(error)
                .bind(ms(retry_at))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(self.err("cannot record a failed delivery"))?;
        }
        tx.commit()
            .await
            .map_err(self.err("cannot record failed deliveries"))?;
        Ok(())
    }

    /// When `job` last had an alert of one of `kinds` queued.
    pub async fn last_alert_at(
        &self,
        job: &str,
        kinds: &[&str],
    ) -> DbResult<Option<DateTime<Utc>>> {
        let placeholders = vec!["?"; kinds.len()].join(", ");
        let sql = format!(
            "SELECT created_at FROM alerts WHERE job = ? AND kind IN ({placeholders}) ORDER BY id DESC LIMIT 1"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(job);
        for k in kinds {
            q = q.bind(*k);
        }
        let row = q
            .fetch_optional(self.pool())
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(row.map(|r| from_ms(r.get(0))))
    }
}
