//! Per-server locks in SQLite, shared by every agent process on the database (the daemon
//! and `run-once`). A holder on this host is dead when its process is gone (pid and start
//! time no longer match); a holder on another host when its agent's presence beat lapses (or,
//! for an agent too old to heartbeat, the lock's own lease).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Database, DbResult, StoredTime, ms};
use crate::domain::{RunId, ServerId};
use crate::identity::{Owner, liveness, run_may_be_alive};

impl Database {
    /// Takes the lock on `server_id` if free (or held by a dead process). `Err` describes
    /// the live holder.
    pub async fn try_lock(
        &self,
        server_id: ServerId,
        owner: &Owner,
        run_id: Option<RunId>,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> DbResult<Result<(), String>> {
        // Free, the usual case: taken in one statement.
        if self
            .insert_lock(server_id, owner, run_id, now, lease)
            .await?
        {
            return Ok(Ok(()));
        }
        let existing: Option<(String, Option<RunId>, StoredTime)> = self
            .q("SELECT holder, run_id, expires_at FROM locks WHERE server_id = $1")
            .bind(server_id)
            .fetch_optional(self)
            .await
            .map_err(self.err("cannot read a lock"))?;
        if let Some((holder, run, expires)) = existing {
            // Left by this very run (its release was lost with the database, and it is
            // being resumed here): it is ours already. Judged by liveness, it would look
            // held by a run in flight — the resumption itself — and wait on itself.
            if holder == owner.as_str() && run.is_some() && run == run_id {
                self.renew_lock(server_id, owner, now, lease).await?;
                return Ok(Ok(()));
            }
            let expires = Some(expires.0);
            let lease = match liveness(&holder) {
                Some(_) => None,
                None => self.leases().await?.of(&holder, expires),
            };
            if run_may_be_alive(&holder, run, lease, now) {
                return Ok(Err(match run {
                    Some(r) => format!("run {r} of process {holder}"),
                    None => format!("process {holder}"),
                }));
            }
            tracing::info!(%server_id, %holder, "taking over a lock left by a process that is gone");
            self.q("DELETE FROM locks WHERE server_id = $1 AND holder = $2")
                .bind(server_id)
                .bind(&holder)
                .execute(self)
                .await
                .map_err(self.err("cannot clear a stale lock"))?;
        }
        Ok(
            if self
                .insert_lock(server_id, owner, run_id, now, lease)
                .await?
            {
                Ok(())
            } else {
                Err("another process (it took the lock just now)".to_string())
            },
        )
    }

    /// Takes the lock on `server_id` if nobody holds it; whether it did.
    async fn insert_lock(
        &self,
        server_id: ServerId,
        owner: &Owner,
        run_id: Option<RunId>,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> DbResult<bool> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let took = self
            .q(
                "INSERT INTO locks (server_id, holder, run_id, acquired_at, expires_at) \
                VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(server_id)
            .bind(owner.as_str())
            .bind(run_id)
            .bind(ms(now))
            .bind(ms(now) + lease_ms)
            .execute(self)
            .await
            .map_err(self.err("cannot take a lock"))?;
        Ok(took == 1)
    }

    pub async fn renew_lock(
        &self,
        server_id: ServerId,
        owner: &Owner,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> DbResult<()> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        self.q("UPDATE locks SET expires_at = $1 WHERE server_id = $2 AND holder = $3")
            .bind(ms(now) + lease_ms)
            .bind(server_id)
            .bind(owner.as_str())
            .execute(self)
            .await
            .map_err(self.err("cannot renew a lock"))?;
        Ok(())
    }

    pub async fn release_lock(&self, server_id: ServerId, owner: &Owner) -> DbResult<()> {
        self.q("DELETE FROM locks WHERE server_id = $1 AND holder = $2")
            .bind(server_id)
            .bind(owner.as_str())
            .execute(self)
            .await
            .map_err(self.err("cannot release a lock"))?;
        Ok(())
    }
}
