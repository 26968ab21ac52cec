//! The ping outbox: dead-man pings (the Healthchecks protocol) queued as rows, sent by
//! the same delivery pass as alerts, dropped rather than sent once they have expired.

use super::sql::{Engine, Q};
use super::{Database, DbResult, StoredTime, ms};
use crate::domain::RunId;
use chrono::{DateTime, Utc};

/// Which ping: Healthchecks' `/start`, the bare URL, `/fail`, or the daemon's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum PingKind {
    Start,
    Success,
    Fail,
    Heartbeat,
}

impl PingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PingKind::Start => "start",
            PingKind::Success => "success",
            PingKind::Fail => "fail",
            PingKind::Heartbeat => "heartbeat",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewPing {
    /// `None` for the heartbeat.
    pub job: Option<String>,
    pub run_id: Option<RunId>,
    pub kind: PingKind,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct PendingPing {
    pub id: i64,
    pub job: Option<String>,
    pub kind: PingKind,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub attempts: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    job: Option<String>,
    kind: PingKind,
    body: String,
    created_at: StoredTime,
    expires_at: StoredTime,
    attempts: i64,
}

/// Queues a ping.
pub(super) fn insert(engine: Engine, p: &NewPing) -> Q {
    Q::new(
        engine,
        "INSERT INTO pings (job, run_id, kind, body, created_at, expires_at, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&p.job)
    .bind(p.run_id)
    .bind(p.kind)
    .bind(&p.body)
    .bind(ms(p.created_at))
    .bind(ms(p.expires_at))
    .bind(ms(p.created_at))
}

impl Database {
    pub async fn queue_ping(&self, p: &NewPing) -> DbResult<()> {
        insert(self.engine(), p)
            .execute(self)
            .await
            .map(drop)
            .map_err(self.err("cannot queue a ping"))
    }

    /// Pings neither sent nor dropped whose next attempt is due at `now`, oldest first.
    pub async fn due_pings(&self, now: DateTime<Utc>) -> DbResult<Vec<PendingPing>> {
        self.pings_where(
            "next_attempt_at <= {now} AND (claimed_until IS NULL OR claimed_until <= {now})",
            now,
            None,
        )
        .await
    }

    /// Claims, until `until`, each check's oldest unsent ping (a job's, or the
    /// heartbeat's) when it is due at `now` (or has expired, to be dropped) and no other
    /// process is sending it; returns them. A check's later pings wait for it: pings reach
    /// a check one at a time, in the order queued, so that a `/fail` held up by an outage
    /// is never overtaken by the `/start` after it. The claim ends when the ping is
    /// recorded sent, failed or dropped.
    pub async fn claim_pings(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> DbResult<Vec<PendingPing>> {
        self.claim_ping_heads(now, until, false).await
    }

    /// [`Database::claim_pings`]; with `all`, each check's oldest ping whether its backoff
    /// has run out or not (an operator running a command by hand may just have fixed the
    /// receiver).
    pub async fn claim_ping_heads(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        all: bool,
    ) -> DbResult<Vec<PendingPing>> {
        let due = if all {
            "id IN (SELECT min(id) FROM pings WHERE sent_at IS NULL AND dropped_at IS NULL GROUP BY job) \
             AND (claimed_until IS NULL OR claimed_until <= {now})"
        } else {
            "id IN (SELECT min(id) FROM pings WHERE sent_at IS NULL AND dropped_at IS NULL GROUP BY job) \
             AND (next_attempt_at <= {now} OR expires_at <= {now}) \
             AND (claimed_until IS NULL OR claimed_until <= {now})"
        };
        self.pings_where(due, now, Some(until)).await
    }

    /// The pings `due` selects (a condition whose `{now}` stands for `now`), claimed
    /// until `claim` if given.
    async fn pings_where(
        &self,
        due: &str,
        now: DateTime<Utc>,
        claim: Option<DateTime<Utc>>,
    ) -> DbResult<Vec<PendingPing>> {
        let what = "cannot read the ping outbox";
        let open = "sent_at IS NULL AND dropped_at IS NULL";
        if claim.is_some() {
            self.free_dead_claims("pings", now).await?;
        }
        let mut tx = self.begin().await?;
        let select = "SELECT id, job, kind, body, created_at, expires_at, attempts FROM pings";
        let rows: Vec<Row> = match claim {
            // Claimed, then read back by the claim's value (as alerts are).
            Some(until) => {
                let sql = format!(
                    "UPDATE pings SET claimed_until = $1, claimed_by = $2 WHERE {open} AND {}",
                    due.replace("{now}", "$3")
                );
                tx.q(&sql)
                    .bind(ms(until))
                    .bind(crate::identity::AgentId::this().to_string())
                    .bind(ms(now))
                    .execute(&mut tx)
                    .await
                    .map_err(self.err(what))?;
                let sql = format!("{select} WHERE {open} AND claimed_until = $1");
                tx.q(&sql).bind(ms(until)).fetch_all(&mut tx).await
            }
            None => {
                let sql = format!("{select} WHERE {open} AND {}", due.replace("{now}", "$1"));
                tx.q(&sql).bind(ms(now)).fetch_all(&mut tx).await
            }
        }
        .map_err(self.err(what))?;
        tx.commit().await.map_err(self.err(what))?;
        let mut rows = rows;
        rows.sort_by_key(|r| r.id);
        Ok(rows
            .into_iter()
            .map(|r| PendingPing {
                id: r.id,
                job: r.job,
                kind: r.kind,
                body: r.body,
                created_at: r.created_at.0,
                expires_at: r.expires_at.0,
                attempts: r.attempts,
            })
            .collect())
    }

    /// Records how a ping went: sent (`error` None), failed (retried at `retry_at`), or
    /// dropped (`retry_at` None).
    pub async fn ping_attempted(
        &self,
        id: i64,
        at: DateTime<Utc>,
        error: Option<&str>,
        retry_at: Option<DateTime<Utc>>,
    ) -> DbResult<()> {
        let sql = match (error, retry_at) {
            (None, _) => {
                "UPDATE pings SET attempts = attempts + 1, sent_at = $1, last_error = $2, claimed_until = NULL WHERE id = $3"
            }
            (Some(_), Some(_)) => {
                "UPDATE pings SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2, claimed_until = NULL WHERE id = $3"
            }
            (Some(_), None) => {
                "UPDATE pings SET dropped_at = $1, last_error = $2, claimed_until = NULL WHERE id = $3"
            }
        };
        self.q(sql)
            .bind(ms(retry_at.unwrap_or(at)))
            .bind(error)
            .bind(id)
            .execute(self)
            .await
            .map_err(self.err("cannot record a ping"))?;
        Ok(())
    }

    /// Forgets pings sent or dropped before `before` (a heartbeat a minute is half a
    /// million rows a year otherwise).
    pub async fn prune_pings(&self, before: DateTime<Utc>) -> DbResult<u64> {
        self.q(
            "DELETE FROM pings WHERE created_at < $1 AND (sent_at IS NOT NULL OR dropped_at IS NOT NULL)",
        )
        .bind(ms(before))
        .execute(self)
        .await
        .map_err(self.err("cannot prune old pings"))
    }
}
