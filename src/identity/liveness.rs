//! Whether the process behind a recorded identity still lives. On this host `/proc` says
//! (pid and start time); for a run of this very process, the runs in flight here say;
//! for another host the caller weighs a lease (its agent's presence beat, or the lock's).

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use super::{AgentId, Owner};
use crate::domain::RunId;

/// Process `pid`'s start time (field 22 of `/proc/PID/stat`): `Ok(None)` when there is no
/// such process, or only its exit status is left (a zombie its parent has not reaped
/// yet: it can do nothing more, and its parent may never reap it); `Err` when `/proc`
/// could not be read (out of descriptors, say), which proves nothing.
pub(super) fn process_start(pid: u32) -> std::io::Result<Option<u64>> {
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
    // Field 3 (state) and field 22 (starttime) count from the fields after the command
    // name's ')'.
    let fields = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace());
    let mut fields = fields.into_iter().flatten();
    let state = fields.next();
    if matches!(state, Some("Z" | "X" | "x")) {
        return Ok(None);
    }
    fields
        .nth(18)
        .and_then(|f| f.parse().ok())
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
pub(super) fn own_start() -> u64 {
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

/// Of the process `recorded` names (an agent or an owner): `Some(alive)` when this host
/// can tell, `None` when it cannot: another host, an identity that does not parse, or a
/// process hidden from us (systemd's `ProtectProc=invisible` hides other users'
/// processes, so a missing `/proc/PID` proves nothing unless pid 1 is visible). Only a
/// definite answer is "gone" — no such process, or one of another start time; `/proc`
/// that cannot be read (out of descriptors) counts as alive, and this process never
/// judges itself gone.
pub fn liveness(recorded: &str) -> Option<bool> {
    let agent = AgentId::of_recorded(recorded).ok()?;
    let this = AgentId::this();
    if agent.host() != this.host() {
        return None;
    }
    if agent == *this {
        return Some(true);
    }
    match process_start(agent.pid()) {
        Ok(Some(s)) => Some(s == agent.start()),
        Ok(None) => match std::fs::metadata("/proc/1/stat") {
            Ok(_) => Some(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                unreadable(1, &e);
                Some(true)
            }
        },
        Err(e) => {
            unreadable(agent.pid(), &e);
            Some(true)
        }
    }
}

/// Whether a process recorded as `recorded` may still be running at `now`: as this host
/// sees it, or while its lease (if it holds one) runs.
pub fn may_be_alive(
    recorded: &str,
    lease_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    match liveness(recorded) {
        Some(alive) => alive,
        None => lease_until.is_some_and(|t| t > now),
    }
}

/// Whether `owner`'s run `run` may still be going at `now`. A run of this process is
/// while it is in flight here: one whose task ended without recording its end (the
/// database was lost meanwhile) is left over, its lock free and the run for resuming,
/// although the process lives on. Any other is as [`may_be_alive`] says.
pub fn run_may_be_alive(
    owner: &str,
    run: Option<RunId>,
    lease_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    match run {
        Some(run) if AgentId::of_recorded(owner).is_ok_and(|a| a == *AgentId::this()) => {
            lock_in_flight().contains(&(owner.to_string(), run))
        }
        _ => may_be_alive(owner, lease_until, now),
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

impl Owner {
    /// Marks `run` as going on in this process under this owner until the guard drops.
    pub fn in_flight(&self, run: RunId) -> InFlight {
        let key = (self.as_str().to_string(), run);
        lock_in_flight().insert(key.clone());
        InFlight(key)
    }
}

#[cfg(test)]
mod tests {
    use super::process_start;

    #[test]
    fn a_killed_process_not_yet_reaped_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(matches!(process_start(pid), Ok(Some(_))), "a running child");
        child.kill().unwrap();
        // Not reaped: its /proc entry stays, in state Z, until `wait`.
        let zombie = (0..1000).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let z = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            if !z {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            z
        });
        assert!(zombie, "the child never became a zombie");
        assert!(matches!(process_start(pid), Ok(None)), "a zombie is gone");
        child.wait().unwrap();
        assert!(matches!(process_start(pid), Ok(None)));
    }
}
