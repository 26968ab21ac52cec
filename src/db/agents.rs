//! The agents using this database, each beating a presence row while it lives: how another
//! host's process is known to be alive (its runs are resumed and its locks taken only
//! once its beat lapses), what `status` lists, and the alert when a daemon stops.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Database, DbResult, NewAlert, StoredTime, alerts, ms};
use crate::identity::AgentId;

/// How long an agent not seen is kept (and listed by `status`).
const KEPT_MS: i64 = 7 * 24 * 3600 * 1000;
/// How long `status` and the page show a daemon that stopped cleanly.
const STOPPED_SHOWN: chrono::TimeDelta = chrono::TimeDelta::days(1);

impl Database {
    /// How long after its last beat an agent on another host counts as gone.
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.timing.agent_lease.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// When the agent last seen at `seen_at` counts as gone (the latest time there is,
    /// for a stored time so late that the lease would run past it).
    fn lease_from(&self, seen_at: StoredTime) -> DateTime<Utc> {
        chrono::TimeDelta::from_std(self.timing.agent_lease)
            .ok()
            .and_then(|d| seen_at.0.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// What an agent process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "kebab-case")]
#[sqlx(type_name = "text", rename_all = "kebab-case")]
pub enum AgentRole {
    Daemon,
    RunOnce,
}

impl std::fmt::Display for AgentRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentRole::Daemon => "daemon",
            AgentRole::RunOnce => "run-once",
        })
    }
}

/// An agent as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    /// `host/pid/process start`.
    pub id: String,
    pub host: String,
    pub role: AgentRole,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Heartbeating within the agent lease and not stopped.
    pub alive: bool,
}

impl AgentRow {
    /// Stopped beating without stopping cleanly.
    pub fn gone(&self) -> bool {
        !self.alive && self.stopped_at.is_none()
    }

    /// Worth listing to an operator at `now`: a daemon alive or gone (it never said it
    /// stopped), one that stopped cleanly for a day after (a restart, a move to another
    /// box), and any other agent while it runs.
    pub fn listed_at(&self, now: DateTime<Utc>) -> bool {
        match self.stopped_at {
            _ if self.alive => true,
            Some(t) => self.role == AgentRole::Daemon && now - t < STOPPED_SHOWN,
            None => self.role == AgentRole::Daemon,
        }
    }
}

/// Each agent's beat lease (its last beat plus the agent lease; `None` once it
/// stopped), by id: what [`crate::identity::may_be_alive`] weighs for another host.
#[derive(Debug, Clone, Default)]
pub struct Leases(HashMap<AgentId, Option<DateTime<Utc>>>);

impl Leases {
    /// How long the process recorded as `owner` (`host/pid/start/…`) may be alive: its
    /// agent's beat lease when the agent is recorded (an older agent did not
    /// beat), else `otherwise`.
    pub fn of(&self, owner: &str, otherwise: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        match AgentId::of_recorded(owner)
            .ok()
            .and_then(|a| self.0.get(&a))
        {
            Some(lease) => *lease,
            None => otherwise,
        }
    }
}

impl Database {
    /// Frees the outbox claims (`table`: `deliveries` or `pings`) held by processes that
    /// are gone, so that what a killed agent was sending goes now rather than when its
    /// claim runs out.
    pub(super) async fn free_dead_claims(&self, table: &str, now: DateTime<Utc>) -> DbResult<()> {
        let what = "cannot look at the outbox's claims";
        let sql = format!(
            "SELECT DISTINCT claimed_by FROM {table} \
             WHERE sent_at IS NULL AND claimed_until > $1 AND claimed_by IS NOT NULL"
        );
        let holders: Vec<(String,)> = self
            .q(&sql)
            .bind(ms(now))
            .fetch_all(self)
            .await
            .map_err(self.err(what))?;
        let holders: Vec<String> = holders
            .into_iter()
            .map(|(h,)| h)
            .filter(|h| AgentId::of_recorded(h).ok().as_ref() != Some(AgentId::this()))
            .collect();
        if holders.is_empty() {
            return Ok(());
        }
        let leases = self.leases().await?;
        for h in holders {
            if crate::identity::may_be_alive(&h, leases.of(&h, None), now) {
                continue;
            }
            tracing::info!(holder = %h, "taking back the outbox claims of a process that is gone");
            let sql = format!(
                "UPDATE {table} SET claimed_until = NULL, claimed_by = NULL \
                 WHERE claimed_by = $1 AND sent_at IS NULL"
            );
            self.q(&sql)
                .bind(&h)
                .execute(self)
                .await
                .map_err(self.err(what))?;
        }
        Ok(())
    }

    /// Records that agent `id` lives at `now` (inserting it the first time). A recorded
    /// stop stands: a beat that lands after it (it was on its way) changes nothing.
    pub async fn beat(&self, id: &str, role: AgentRole, now: DateTime<Utc>) -> DbResult<()> {
        let host = crate::identity::host_of(id);
        self.q(
            "INSERT INTO agents (id, host, role, version, started_at, seen_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at WHERE agents.stopped_at IS NULL",
        )
        .bind(id)
        .bind(host)
        .bind(role)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(ms(now))
        .bind(ms(now))
        .execute(self)
        .await
        .map_err(self.err("cannot record the agent's presence beat"))?;
        Ok(())
    }

    /// Records that agent `id` stopped cleanly (or was found dead): no alert for it.
    pub async fn agent_stopped(&self, id: &str, now: DateTime<Utc>) -> DbResult<()> {
        self.q("UPDATE agents SET stopped_at = $1 WHERE id = $2 AND stopped_at IS NULL")
            .bind(ms(now))
            .bind(id)
            .execute(self)
            .await
            .map_err(self.err("cannot record that the agent stopped"))?;
        Ok(())
    }

    /// The agents seen in the last week, newest first.
    pub async fn agents(&self, now: DateTime<Utc>) -> DbResult<Vec<AgentRow>> {
        type Row = (
            String,
            String,
            AgentRole,
            String,
            StoredTime,
            StoredTime,
            Option<StoredTime>,
        );
        let rows: Vec<Row> = self
            .q(
                "SELECT id, host, role, version, started_at, seen_at, stopped_at FROM agents \
                WHERE seen_at >= $1 ORDER BY seen_at DESC, id",
            )
            .bind(ms(now) - KEPT_MS)
            .fetch_all(self)
            .await
            .map_err(self.err("cannot read the agents"))?;
        Ok(rows
            .into_iter()
            .map(
                |(id, host, role, version, started_at, seen_at, stopped_at)| AgentRow {
                    id,
                    host,
                    role,
                    version,
                    started_at: started_at.0,
                    seen_at: seen_at.0,
                    stopped_at: stopped_at.map(|t| t.0),
                    alive: stopped_at.is_none() && self.lease_from(seen_at) > now,
                },
            )
            .collect())
    }

    /// Every recorded agent's beat lease.
    pub async fn leases(&self) -> DbResult<Leases> {
        let rows: Vec<(String, StoredTime, Option<StoredTime>)> = self
            .q("SELECT id, seen_at, stopped_at FROM agents")
            .fetch_all(self)
            .await
            .map_err(self.err("cannot read the agents"))?;
        Ok(Leases(
            rows.into_iter()
                .filter_map(|(id, seen_at, stopped)| {
                    let lease = stopped.is_none().then(|| self.lease_from(seen_at));
                    Some((AgentId::of_recorded(&id).ok()?, lease))
                })
                .collect(),
        ))
    }

    /// Queues, once per agent, an alert for each daemon whose presence beat lapsed while
    /// `me` lives and no other daemon on its host took its place; `alert` writes it.
    /// Of several daemons checking at once, one queues it (one conditional write).
    /// Returns the hosts alerted about.
    pub async fn alert_gone_agents(
        &self,
        me: &str,
        now: DateTime<Utc>,
        alert: impl Fn(&str, &str, DateTime<Utc>, DateTime<Utc>) -> NewAlert,
    ) -> DbResult<Vec<String>> {
        let what = "cannot check the other agents' presence beats";
        let cutoff = ms(now) - self.lease_ms();
        let mut tx = self.begin().await?;
        let gone: Vec<(String, String, StoredTime)> = tx
            .q("UPDATE agents SET gone_alerted_at = $1 \
             WHERE role = 'daemon' AND stopped_at IS NULL AND gone_alerted_at IS NULL \
               AND seen_at < $2 AND id <> $3 \
               AND NOT EXISTS (SELECT 1 FROM agents b WHERE b.host = agents.host \
                   AND b.role = 'daemon' AND b.stopped_at IS NULL AND b.seen_at >= $2) \
             RETURNING id, host, seen_at")
            .bind(ms(now))
            .bind(cutoff)
            .bind(me)
            .fetch_all(&mut tx)
            .await
            .map_err(self.err(what))?;
        let mut hosts = Vec::new();
        for (id, host, seen_at) in gone {
            let a = alert(&id, &host, seen_at.0, now);
            let q = alerts::insert(self.engine(), &a);
            q.execute(&mut tx).await.map_err(self.err(what))?;
            hosts.push(host);
        }
        tx.commit().await.map_err(self.err(what))?;
        Ok(hosts)
    }

    /// Marks as stopped the daemons recorded on this host that `dead` says are gone (a
    /// restarted service replaces its dead self: not an agent lost), and forgets agents
    /// not seen for a week.
    pub async fn tidy_agents(
        &self,
        host: &str,
        dead: impl Fn(&str) -> bool,
        now: DateTime<Utc>,
    ) -> DbResult<()> {
        let what = "cannot tidy the agents";
        let ids: Vec<(String,)> = self
            .q("SELECT id FROM agents WHERE host = $1 AND stopped_at IS NULL")
            .bind(host)
            .fetch_all(self)
            .await
            .map_err(self.err(what))?;
        for (id,) in ids.iter().filter(|(id,)| dead(id)) {
            self.agent_stopped(id, now).await?;
        }
        self.q("DELETE FROM agents WHERE seen_at < $1")
            .bind(ms(now) - KEPT_MS)
            .execute(self)
            .await
            .map_err(self.err(what))?;
        Ok(())
    }
}
