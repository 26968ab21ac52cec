//! The alert outbox: alerts are rows first, mail second. A row leaves the pending set only
//! when the SMTP server has accepted it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Row as _, Sqlite, Transaction};

use super::{Database, DbResult, from_ms, ms};
use crate::domain::{AlertKind, RunId, ServerId};

#[derive(Debug, Clone)]
pub struct NewAlert {
    pub job: Option<String>,
    pub server_id: Option<ServerId>,
    pub run_id: Option<RunId>,
    pub kind: AlertKind,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingAlert {
    pub id: i64,
    pub job: Option<String>,
    pub server_id: Option<ServerId>,
    pub run_id: Option<RunId>,
    pub kind: AlertKind,
    pub subject: String,
    #[serde(skip)]
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    job: Option<String>,
    server_id: Option<ServerId>,
    run_id: Option<RunId>,
    kind: AlertKind,
    subject: String,
    body: String,
    created_at: i64,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
}

impl From<Row> for PendingAlert {
    fn from(r: Row) -> Self {
        PendingAlert {
            id: r.id,
            job: r.job,
            server_id: r.server_id,
            run_id: r.run_id,
            kind: r.kind,
            subject: r.subject,
            body: r.body,
            created_at: from_ms(r.created_at),
            attempts: r.attempts,
            next_attempt_at: from_ms(r.next_attempt_at),
            last_error: r.last_error,
        }
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
    .bind(a.server_id)
    .bind(a.run_id)
    .bind(a.kind)
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
        let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(ms(now))
            .fetch_all(self.pool())
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(rows.into_iter().map(PendingAlert::from).collect())
    }

    /// Every undelivered alert, oldest first.
    pub async fn pending_alerts(&self) -> DbResult<Vec<PendingAlert>> {
        let sql = format!("SELECT {COLUMNS} FROM alerts WHERE sent_at IS NULL ORDER BY id");
        let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(rows.into_iter().map(PendingAlert::from).collect())
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
        kinds: &[AlertKind],
    ) -> DbResult<Option<DateTime<Utc>>> {
        let placeholders = vec!["?"; kinds.len()].join(", ");
        let sql = format!(
            "SELECT created_at FROM alerts WHERE job = ? AND kind IN ({placeholders}) ORDER BY id DESC LIMIT 1"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(job);
        for k in kinds {
            q = q.bind(k);
        }
        let row = q
            .fetch_optional(self.pool())
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(row.map(|r| from_ms(r.get(0))))
    }
}
