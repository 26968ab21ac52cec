//! Step 1: the per-server lock, shared by every agent process on the database, renewed in
//! the background while held.

use std::time::Duration;

use anyhow::anyhow;

use super::{Failure, Runner, fail};
use crate::db::{Database, Step};
use crate::domain::{RunId, ServerId};
use crate::identity::Owner;
use crate::timing::Backoff;

/// Holds a server lock; renews it in the background until released.
pub(super) struct LockGuard {
    db: Database,
    server_id: ServerId,
    owner: Owner,
    renew: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    pub(super) async fn release(self) {
        self.renew.abort();
        if let Err(e) = self.db.release_lock(self.server_id, &self.owner).await {
            tracing::warn!("{e}");
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

impl Runner {
    /// Takes `server_id`'s lock, waiting up to `lock_wait` for another run to finish.
    pub(super) async fn lock(
        &self,
        server_id: ServerId,
        run_id: Option<RunId>,
    ) -> Result<LockGuard, Failure> {
        // Measured in monotonic time, not on the injected clock: a virtual clock that
        // jumps on every sleep would give up before the holder had time to finish.
        let waited_from = tokio::time::Instant::now();
        let timing = self.db.timing();
        let mut told = false;
        // Look again soon (a short hold hands over quickly), then less often. Slept in
        // monotonic time too: a virtual clock returns at once and the loop would spin.
        let backoff = Backoff {
            base: Duration::from_millis(10),
            cap: timing.lock_poll,
        };
        let mut tries = 0;
        loop {
            match self
                .db
                .try_lock(
                    server_id,
                    &self.owner,
                    run_id,
                    self.now(),
                    timing.lock_lease,
                )
                .await?
            {
                Ok(()) => break,
                Err(_) if self.stop.is_cancelled() => return Err(Failure::stopped(Step::Lock)),
                Err(holder) => {
                    if waited_from.elapsed() >= self.lock_wait {
                        return Err(fail(
                            Step::Lock,
                            anyhow!(
                                "server {server_id} is busy: locked by {holder} for over {}",
                                crate::human::span(self.lock_wait)
                            ),
                        ));
                    }
                    if !told {
                        tracing::info!(%server_id, "waiting for {holder} to finish with the server");
                        told = true;
                    }
                    tokio::time::sleep(backoff.after(tries)).await;
                    tries += 1;
                }
            }
        }
        let (db, owner, clock) = (self.db.clone(), self.owner.clone(), self.clock.clone());
        let renew = tokio::spawn(async move {
            let mut tick = tokio::time::interval(timing.lock_lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = db
                    .renew_lock(server_id, &owner, clock.now(), timing.lock_lease)
                    .await
                {
                    tracing::warn!("{e}");
                }
            }
        });
        Ok(LockGuard {
            db: self.db.clone(),
            server_id,
            owner: self.owner.clone(),
            renew,
        })
    }
}
