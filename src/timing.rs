//! How long the agent waits on itself — heartbeats and leases, lock renewal, the daemon's
//! periodic checks, a fire's patience with its database, the outbox's backoffs — in one
//! policy, carried by the database handle (every agent on one database must judge the
//! others by the same leases) and read by the runner, the daemon and the outbox. The
//! defaults are what runs in production. Tests set shorter ones: in process, or through
//! the binary with `AGENT_TIMING="agent_lease=3s,check_every=1s"` (a test knob, not a
//! setting: it is not in the configuration file).

use std::time::Duration;

/// A doubling backoff: `base`, twice that, … up to `cap`. The one backoff type: the API's
/// retries (drawn with jitter from `[d, 2d)`, slept on the injected clock), the outbox's
/// redeliveries (a due time stored with the row), a fire's claim and a run's wait for a
/// locked server (slept in monotonic time: they wait on another process on this box).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait after `attempts` failed attempts (0: the first wait).
    pub fn after(self, attempts: u32) -> Duration {
        let exp = attempts.min(20);
        self.base.saturating_mul(1u32 << exp.min(31)).min(self.cap)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often an agent writes its heartbeat.
    pub agent_beat: Duration,
    /// How long after its last heartbeat an agent on another host counts as gone.
    pub agent_lease: Duration,
    /// How long a server lock is good for without renewal (renewed every third of it).
    pub lock_lease: Duration,
    /// How long a run waits before looking again at a server locked by another (doubling
    /// from a few milliseconds up to this).
    pub lock_poll: Duration,
    /// The daemon's resumption and delivery rhythm.
    pub check_every: Duration,
    /// How often the daemon looks for stale jobs.
    pub stale_every: Duration,
    /// How often the daemon compares the wall clock with monotonic time.
    pub step_every: Duration,
    /// How long SIGTERM waits for running snapshots (systemd's stop timeout is 90 s).
    pub grace: Duration,
    /// How long a fire keeps trying to claim itself while the database cannot be written.
    pub claim_patience: Duration,
    /// Between those tries.
    pub claim_retry: Backoff,
    /// A channel that failed is tried again after this.
    pub alert_backoff: Backoff,
    /// A ping that failed is tried again after this (it is worth nothing once expired).
    pub ping_backoff: Backoff,
    /// How long a delivery or a ping is held by the process sending it (a process that
    /// dies mid-send leaves it to the others after this).
    pub outbox_claim: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            agent_beat: s(10),
            agent_lease: s(60),
            lock_lease: s(120),
            lock_poll: s(1),
            check_every: s(30),
            stale_every: s(300),
            step_every: s(1),
            grace: s(75),
            claim_patience: s(600),
            claim_retry: Backoff {
                base: s(1),
                cap: s(30),
            },
            alert_backoff: Backoff {
                base: s(30),
                cap: s(30 * 60),
            },
            ping_backoff: Backoff {
                base: s(5),
                cap: s(120),
            },
            outbox_claim: s(300),
        }
    }
}

/// The variable a test sets to run the binary on a shorter timing.
pub const ENV: &str = "AGENT_TIMING";

impl Timing {
    /// The default timing with `spec`'s changes: `key=duration` pairs, comma-separated,
    /// keys as the fields are named (`alert_backoff` sets the base, `alert_backoff_cap`
    /// the cap).
    pub fn with(mut self, spec: &str) -> Result<Self, String> {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=duration"))?;
            let d = humantime::parse_duration(value.trim())
                .map_err(|e| format!("{key}: {value:?} is not a duration: {e}"))?;
            let field = match key.trim() {
                "agent_beat" => &mut self.agent_beat,
                "agent_lease" => &mut self.agent_lease,
                "lock_lease" => &mut self.lock_lease,
                "lock_poll" => &mut self.lock_poll,
                "check_every" => &mut self.check_every,
                "stale_every" => &mut self.stale_every,
                "step_every" => &mut self.step_every,
                "grace" => &mut self.grace,
                "claim_patience" => &mut self.claim_patience,
                "claim_retry" => &mut self.claim_retry.base,
                "claim_retry_cap" => &mut self.claim_retry.cap,
                "alert_backoff" => &mut self.alert_backoff.base,
                "alert_backoff_cap" => &mut self.alert_backoff.cap,
                "ping_backoff" => &mut self.ping_backoff.base,
                "ping_backoff_cap" => &mut self.ping_backoff.cap,
                "outbox_claim" => &mut self.outbox_claim,
                other => return Err(format!("unknown key {other:?}")),
            };
            *field = d;
        }
        if self.agent_beat >= self.agent_lease {
            return Err("agent_beat must be shorter than agent_lease".into());
        }
        Ok(self)
    }

    /// The timing this process runs on: the default, or `AGENT_TIMING`'s.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(ENV) {
            Ok(spec) => Self::default()
                .with(&spec)
                .map_err(|e| format!("{ENV}: {e}")),
            Err(_) => Ok(Self::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_changes_only_what_it_names_and_refuses_what_it_does_not_know() {
        let t = Timing::default()
            .with("agent_beat=1s,agent_lease=3s, check_every=500ms,alert_backoff_cap=2s")
            .unwrap();
        assert_eq!(t.agent_lease, Duration::from_secs(3));
        assert_eq!(t.check_every, Duration::from_millis(500));
        assert_eq!(t.alert_backoff.cap, Duration::from_secs(2));
        assert_eq!(t.lock_lease, Timing::default().lock_lease);
        assert!(
            Timing::default()
                .with("lease=3s")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(Timing::default().with("agent_beat=2m").is_err());
        assert!(Timing::default().with("grace=soon").is_err());
    }

    #[test]
    fn a_backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            base: Duration::from_secs(30),
            cap: Duration::from_secs(600),
        };
        let waits: Vec<u64> = (0..7).map(|a| b.after(a).as_secs()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(b.after(u32::MAX).as_secs(), 600);
    }
}
