//! Per-server locks in SQLite, shared by every agent process on the database (the daemon
//! and `run-once`). A holder on this host is dead when its process is gone (pid and start
//! time no longer match); a holder on another host when its agent's presence beat lapses (or,
//! for an agent too old to heartbeat, the lock's own lease).

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Database, DbResult, from_ms, ms};
use crate::domain::{RunId, ServerId};

/// Who runs things: `host/pid/process-start-time/random`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

/// Process `pid`'s start time (field 22 of `/proc/PID/stat`): `Ok(None)` when there is no
/// such process, `Err` when `/proc` could not be read (out of descriptors, say), which
/// proves nothing.
fn process_start(pid: u32) -> std::io::Result<Option<u64>> {
    if unreadable_now(pid) {
        return Err(std::io::Error::other(
            "made unreadable by the fault explorer",
        ));
    }
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Field 22 (starttime) counts from the fields after the command name's ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        .map(Some)
        .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/stat has no start time")))
}

/// Reads of `/proc/PID/stat` still to fail, by pid: how the fault explorer makes
/// liveness unreadable for the processes it simulates. Empty outside its tests (a list:
/// a handful of pids at most, and less code in the binary than a map).
static UNREADABLE: Mutex<Vec<(u32, u32)>> = Mutex::new(Vec::new());

/// Makes the next `reads` reads of process `pid`'s start time fail, as `/proc` does when
/// the process is out of descriptors (for the fault explorer).
#[doc(hidden)]
pub fn fail_liveness_reads(pid: u32, reads: u32) {
    let mut left = UNREADABLE.lock().unwrap_or_else(PoisonError::into_inner);
    left.retain(|(p, _)| *p != pid);
    if reads > 0 {
        left.push((pid, reads));
    }
}

fn unreadable_now(pid: u32) -> bool {
    let mut left = UNREADABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(i) = left.iter().position(|(p, _)| *p == pid) else {
        return false;
    };
    left[i].1 -= 1;
    if left[i].1 == 0 {
        left.swap_remove(i);
    }
    true
}

/// This process's start time, read once.
fn own_start() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        process_start(std::process::id())
            .ok()
            .flatten()
            .unwrap_or(0)
    })
}

/// Logs, once per process, that liveness could not be read (and is taken as alive).
fn unreadable(pid: u32, e: &std::io::Error) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "cannot read /proc/{pid}/stat ({e}); a process whose liveness cannot be read counts as alive"
        );
    }
}

/// The host name as an owner identity holds it (its `/` would split the identity).
fn hostname() -> String {
    crate::identity::host_name().replace('/', "_")
}

impl Owner {
    /// The agent (process) it belongs to: `host/pid/process start`.
    pub fn agent_id(&self) -> &str {
        super::agents::agent_id(&self.0)
    }

    /// This process, distinguished from other owners in it by a random suffix.
    pub fn current() -> Self {
        Self::of_process(std::process::id())
    }

    /// Process `pid` on this host: it is alive while that process is. (The fault explorer
    /// gives each agent it simulates in one test process a helper process of its own.)
    pub fn of_process(pid: u32) -> Self {
        let start = if pid == std::process::id() {
            own_start()
        } else {
            process_start(pid).ok().flatten().unwrap_or(0)
        };
        Self(format!(
            "{}/{pid}/{start}/{:08x}",
            hostname(),
            fastrand::u32(..)
        ))
    }

    /// An owner identity read back from the database (or made up by a test to stand for
    /// a process that is gone).
    pub fn from_recorded(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host it runs on.
    pub fn host(&self) -> &str {
        self.0.split('/').next().unwrap_or_default()
    }

    /// `Some(alive)` when this host can tell, `None` when it cannot: an owner on another
    /// host, or a process hidden from us (systemd's `ProtectProc=invisible` hides other
    /// users' processes, so a missing `/proc/PID` proves nothing unless pid 1 is visible).
    /// Only a definite answer is "gone" — no such process, or one of another start time;
    /// `/proc` that cannot be read (out of descriptors) counts as alive, and this process
    /// never judges itself gone.
    pub fn liveness(owner: &str) -> Option<bool> {
        let mut parts = owner.split('/');
        let (host, pid, start) = (parts.next()?, parts.next()?, parts.next()?);
        if host != hostname() {
            return None;
        }
        let pid: u32 = pid.parse().ok()?;
        let start: u64 = start.parse().ok()?;
        if pid == std::process::id() && start == own_start() {
            return Some(true);
        }
        match process_start(pid) {
            Ok(Some(s)) => Some(s == start),
            Ok(None) => match std::fs::metadata("/proc/1/stat") {
                Ok(_) => Some(false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    unreadable(1, &e);
                    Some(true)
                }
            },
            Err(e) => {
                unreadable(pid, &e);
                Some(true)
            }
        }
    }

    /// Marks `run` as going on in this process under this owner until the guard drops.
    pub fn in_flight(&self, run: RunId) -> InFlight {
        let key = (self.0.clone(), run);
        lock_in_flight().insert(key.clone());
        InFlight(key)
    }

    /// Whether `owner`'s run `run` may still be going at `now`. A run of this process is
    /// while it is in flight here: one whose task ended without recording its end (the
    /// database was lost meanwhile) is left over, its lock free and the run for resuming,
    /// although the process lives on. Any other is as [`Owner::may_be_alive`] says.
    pub fn run_may_be_alive(
        owner: &str,
        run: Option<RunId>,
        lease_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> bool {
        match run {
            Some(run) if super::agents::agent_id(owner) == super::agents::this_agent() => {
                lock_in_flight().contains(&(owner.to_string(), run))
            }
            _ => Self::may_be_alive(owner, lease_until, now),
        }
    }

    /// Whether a process recorded as `owner` may still be running at `now`: as this host
    /// sees it, or while its lease (if it holds one) runs.
    pub fn may_be_alive(
        owner: &str,
        lease_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> bool {
        match Self::liveness(owner) {
            Some(alive) => alive,
            None => lease_until.is_some_and(|t| t > now),
        }
    }
}

/// The runs going on in this process, by owner: what `/proc` is to the host.
static IN_FLIGHT: LazyLock<Mutex<HashSet<(String, RunId)>>> = LazyLock::new(Mutex::default);

fn lock_in_flight() -> MutexGuard<'static, HashSet<(String, RunId)>> {
    IN_FLIGHT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run going on in this process ([`Owner::in_flight`]); dropping it ends that.
#[derive(Debug)]
pub struct InFlight((String, RunId));

impl Drop for InFlight {
    fn drop(&mut self) {
        lock_in_flight().remove(&self.0);
    }
}

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
        let existing: Option<(String, Option<RunId>, i64)> = self
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
            let expires = Some(from_ms(expires));
            let lease = match Owner::liveness(&holder) {
                Some(_) => None,
                None => self.leases().await?.of(&holder, expires),
            };
            if Owner::run_may_be_alive(&holder, run, lease, now) {
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
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let took = self.q(
            "INSERT INTO locks (server_id, holder, run_id, acquired_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(server_id)
        .bind(owner.as_str())
        .bind(run_id)
        .bind(ms(now))
        .bind(ms(now) + lease_ms)
        .execute(self)
        .await
        .map_err(self.err("cannot take a lock"))?
            == 1;
        Ok(if took {
            Ok(())
        } else {
            Err("another process (it took the lock just now)".to_string())
        })
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
