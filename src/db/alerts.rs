//! The alert outbox: alerts are rows first, deliveries second. Each configured channel
//! (email, each `[[notify]]`) has its own delivery row per alert, which leaves the pending
//! set only when that channel's server has accepted it.

use super::sql::{Engine, Q};
use super::{Database, DbResult, StoredTime, ms};
use crate::domain::{AlertKind, RunId, ServerId};
use chrono::{DateTime, Utc};
use serde::Serialize;

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
    /// Delivery attempts so far (the most on any channel still owed it).
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The configured channels it has not reached yet.
    pub channels: Vec<String>,
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
    created_at: StoredTime,
    attempts: i64,
    next_attempt_at: StoredTime,
    last_error: Option<String>,
    channels: Option<String>,
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
            created_at: r.created_at.0,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at.0,
            last_error: r.last_error,
            channels: r
                .channels
                .map(|c| c.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        }
    }
}

/// What the outbox holds, for metrics.
#[derive(Debug, Clone, Default)]
pub struct OutboxCounts {
    /// Alerts ever queued.
    pub queued: i64,
    /// Per configured channel: alerts delivered, alerts still owed.
    pub channels: Vec<(String, i64, i64)>,
}

/// Queues an alert; it returns the alert's id.
pub(super) fn insert(engine: Engine, a: &NewAlert) -> Q {
    let q = Q::new(
        engine,
        "INSERT INTO alerts (job, server_id, run_id, kind, subject, body, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    );
    bind_alert(q, a)
}

/// Binds an alert's seven columns, in the order the inserts name them.
fn bind_alert(q: Q, a: &NewAlert) -> Q {
    q.bind(&a.job)
        .bind(a.server_id)
        .bind(a.run_id)
        .bind(a.kind)
        .bind(&a.subject)
        .bind(&a.body)
        .bind(ms(a.created_at))
}

const ALERT_COLUMNS: &str =
    "a.id, a.job, a.server_id, a.run_id, a.kind, a.subject, a.body, a.created_at";

impl Database {
    pub async fn queue_alert(&self, a: &NewAlert) -> DbResult<i64> {
        insert(self.engine(), a)
            .scalar(self)
            .await
            .map_err(self.err("cannot queue an alert"))
    }

    /// Queues `a` unless an alert of its kind about its job was queued after `since`: of
    /// several agents checking at once, one queues it. Whether it did. A read-check-write,
    /// so it holds the write lock (`begin`): on PostgreSQL two such statements at once
    /// would each see no alert and both insert one.
    pub async fn queue_alert_unless_since(
        &self,
        a: &NewAlert,
        since: DateTime<Utc>,
    ) -> DbResult<bool> {
        let what = "cannot queue an alert";
        let mut tx = self.begin().await?;
        let q = tx.q(
            "INSERT INTO alerts (job, server_id, run_id, kind, subject, body, created_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS \
               (SELECT 1 FROM alerts WHERE job = $1 AND kind = $4 AND created_at > $8)",
        );
        let done = bind_alert(q, a)
            .bind(ms(since))
            .execute(&mut tx)
            .await
            .map_err(self.err(what))?;
        tx.commit().await.map_err(self.err(what))?;
        Ok(done == 1)
    }

    /// Makes `names` the channels new alerts are delivered to. A channel new to the
    /// database also takes the alerts that no channel has taken yet (queued while none
    /// was configured, or before this version): queued is never lost.
    pub async fn set_channels(&self, names: &[&str]) -> DbResult<()> {
        let what = "cannot record the alert channels";
        let mut tx = self.begin().await?;
        let known: Vec<(String,)> = tx
            .q("SELECT name FROM channels ORDER BY name")
            .fetch_all(&mut tx)
            .await
            .map_err(self.err(what))?;
        let mut wanted = names.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if known
            .iter()
            .map(|(n,)| n.as_str())
            .eq(wanted.iter().copied())
        {
            return Ok(());
        }
        let orphans: Vec<(i64,)> = tx.q(
            "SELECT id FROM alerts a WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.alert_id = a.id)",
        )
        .fetch_all(&mut tx)
        .await
        .map_err(self.err(what))?;
        tx.q("DELETE FROM channels")
            .execute(&mut tx)
            .await
            .map_err(self.err(what))?;
        for name in &wanted {
            tx.q("INSERT INTO channels (name) VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(name)
                .execute(&mut tx)
                .await
                .map_err(self.err(what))?;
            for (id,) in &orphans {
                tx.q(
                    "INSERT INTO deliveries (alert_id, channel, next_attempt_at) \
                     SELECT id, $1, created_at FROM alerts WHERE id = $2 ON CONFLICT DO NOTHING",
                )
                .bind(name)
                .bind(id)
                .execute(&mut tx)
                .await
                .map_err(self.err(what))?;
            }
        }
        tx.commit().await.map_err(self.err(what))
    }

    /// Claims, until `until`, every alert `channel` still owes, when its oldest one is
    /// due at `now` (or with `all`) and no other process is sending any of them; returns
    /// them, oldest first. A channel's alerts go in the order queued: a newer one never
    /// overtakes an older one still waiting out its backoff, and when the channel comes
    /// back what it owes goes out together. The claim ends when the delivery is marked
    /// sent or failed.
    pub async fn claim_alerts(
        &self,
        channel: &str,
        now: DateTime<Utc>,
        all: bool,
        until: DateTime<Utc>,
    ) -> DbResult<Vec<PendingAlert>> {
        let what = "cannot read the alert outbox";
        self.free_dead_claims("deliveries", now).await?;
        let mut tx = self.begin().await?;
        tx.q(
            "UPDATE deliveries SET claimed_until = $1, claimed_by = $2 WHERE channel = $3 AND sent_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.channel = $4 AND o.sent_at IS NULL \
                   AND o.claimed_until > $5) \
               AND ($6 OR (SELECT h.next_attempt_at FROM deliveries h WHERE h.channel = $7 \
                   AND h.sent_at IS NULL ORDER BY h.alert_id LIMIT 1) <= $8)",
        )
        .bind(ms(until))
        .bind(crate::identity::AgentId::this().to_string())
        .bind(channel)
        .bind(channel)
        .bind(ms(now))
        .bind(all)
        .bind(channel)
        .bind(ms(now))
        .execute(&mut tx)
        .await
        .map_err(self.err(what))?;
        let sql = format!(
            "SELECT {ALERT_COLUMNS}, d.attempts, d.next_attempt_at, d.last_error, d.channel AS channels \
             FROM deliveries d JOIN alerts a ON a.id = d.alert_id \
             WHERE d.channel = $1 AND d.sent_at IS NULL AND d.claimed_until = $2 ORDER BY a.id"
        );
        let rows: Vec<Row> = tx
            .q(&sql)
            .bind(channel)
            .bind(ms(until))
            .fetch_all(&mut tx)
            .await
            .map_err(self.err(what))?;
        tx.commit().await.map_err(self.err(what))?;
        Ok(rows.into_iter().map(PendingAlert::from).collect())
    }

    /// Every alert a configured channel still owes (or that no channel has taken yet),
    /// oldest first.
    pub async fn pending_alerts(&self) -> DbResult<Vec<PendingAlert>> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS}, coalesce(max(d.attempts), 0) AS attempts, \
               coalesce(min(d.next_attempt_at), a.created_at) AS next_attempt_at, \
               max(d.last_error) AS last_error, string_agg(d.channel, ',') AS channels \
             FROM alerts a LEFT JOIN deliveries d ON d.alert_id = a.id AND d.sent_at IS NULL \
               AND d.channel IN (SELECT name FROM channels) \
             WHERE d.alert_id IS NOT NULL \
                OR NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.alert_id = a.id) \
             GROUP BY a.id ORDER BY a.id"
        );
        let rows: Vec<Row> = self
            .q(&sql)
            .fetch_all(self)
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(rows.into_iter().map(PendingAlert::from).collect())
    }

    pub async fn mark_alerts_sent(
        &self,
        channel: &str,
        ids: &[i64],
        at: DateTime<Utc>,
    ) -> DbResult<()> {
        let mut tx = self.begin().await?;
        for id in ids {
            tx.q(
                "UPDATE deliveries SET sent_at = $1, attempts = attempts + 1, last_error = NULL, claimed_until = NULL \
                 WHERE alert_id = $2 AND channel = $3",
            )
            .bind(ms(at))
            .bind(id)
            .bind(channel)
            .execute(&mut tx)
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
        channel: &str,
        ids: &[i64],
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> DbResult<()> {
        let mut tx = self.begin().await?;
        for id in ids {
            tx.q(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2, claimed_until = NULL \
                 WHERE alert_id = $3 AND channel = $4",
            )
            .bind(error)
            .bind(ms(retry_at))
            .bind(id)
            .bind(channel)
            .execute(&mut tx)
            .await
            .map_err(self.err("cannot record a failed delivery"))?;
        }
        tx.commit()
            .await
            .map_err(self.err("cannot record failed deliveries"))?;
        Ok(())
    }

    /// Alerts queued, and per configured channel delivered and owed.
    pub async fn outbox_counts(&self) -> DbResult<OutboxCounts> {
        let what = "cannot count the alert outbox";
        let queued: i64 = self
            .q("SELECT coalesce(max(id), 0) FROM alerts")
            .scalar(self)
            .await
            .map_err(self.err(what))?;
        let channels: Vec<(String, i64, i64)> = self.q(
            "SELECT c.name, \
               (SELECT count(*) FROM deliveries d WHERE d.channel = c.name AND d.sent_at IS NOT NULL), \
               (SELECT count(*) FROM deliveries d WHERE d.channel = c.name AND d.sent_at IS NULL) \
             FROM channels c ORDER BY c.name",
        )
        .fetch_all(self)
        .await
        .map_err(self.err(what))?;
        Ok(OutboxCounts { queued, channels })
    }

    /// When `job` last had an alert of one of `kinds` queued for a snapshot run (a failed
    /// `agent prune` alerts on its own and never silences a failed snapshot).
    pub async fn last_alert_at(
        &self,
        job: &str,
        kinds: &[AlertKind],
    ) -> DbResult<Option<DateTime<Utc>>> {
        let placeholders: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 2)).collect();
        let placeholders = placeholders.join(", ");
        let sql = format!(
            "SELECT created_at FROM alerts WHERE job = $1 AND kind IN ({placeholders}) \
             AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = alerts.run_id AND r.kind = 'prune') \
             ORDER BY id DESC LIMIT 1"
        );
        let mut q = self.q(&sql).bind(job);
        for k in kinds {
            q = q.bind(k);
        }
        let at: Option<StoredTime> = q
            .scalar_optional(self)
            .await
            .map_err(self.err("cannot read the alert outbox"))?;
        Ok(at.map(|t| t.0))
    }
}
