//! An agent's presence on its database: a row beaten every `agent_beat` while the
//! process lives, which is how agents on other hosts know its runs and locks are still
//! held (`/proc` cannot tell across hosts). A daemon also looks, at each beat, for daemons
//! whose beat lapsed and queues the alert about them (once, whichever daemon sees it
//! first).

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alert::text;
use crate::clock::SharedClock;
use crate::db::{AgentRole, Database};
use crate::identity::Owner;

/// The presence beat of this process, until [`Presence::leave`].
pub struct Presence {
    db: Database,
    clock: SharedClock,
    id: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Presence {
    /// The presence of a `run-once` (or `restore`) running `runner`.
    pub fn of_runner(runner: &crate::run::Runner) -> Self {
        let (db, clock) = (runner.db.clone(), runner.clock.clone());
        Self::start(db, clock, &runner.owner, AgentRole::RunOnce)
    }

    /// The presence of this process as `agent run`.
    pub fn of_daemon(db: Database, clock: SharedClock) -> Self {
        Self::start(db, clock, &Owner::current(), AgentRole::Daemon)
    }

    /// Starts beating as `owner`'s agent, in the background (the first beat at once).
    pub fn start(db: Database, clock: SharedClock, owner: &Owner, role: AgentRole) -> Self {
        let id = owner.agent().to_string();
        let stop = CancellationToken::new();
        let task = tokio::spawn(beat(
            db.clone(),
            clock.clone(),
            id.clone(),
            role,
            stop.clone(),
        ));
        Self {
            db,
            clock,
            id,
            stop,
            task,
        }
    }

    /// Stops beating, waiting for a beat on its way to land, then records a
    /// clean stop (no alert about it). Aborting the task would not do: a beat
    /// already handed to the database could land after the stop.
    pub async fn leave(mut self) {
        self.stop.cancel();
        // Bounded: a database that hangs must not hold the process (the beat never
        // clears a recorded stop anyway).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task).await;
        if let Err(e) = self.db.agent_stopped(&self.id, self.clock.now()).await {
            tracing::warn!("{e}");
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat(
    db: Database,
    clock: SharedClock,
    id: String,
    role: AgentRole,
    stop: CancellationToken,
) {
    let host = crate::identity::host_of(&id);
    let dead_here = |other: &str| other != id && crate::identity::liveness(other) == Some(false);
    if let Err(e) = db.tidy_agents(&host, dead_here, clock.now()).await {
        tracing::warn!("{e}");
    }
    let mut tick = tokio::time::interval(db.timing().agent_beat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock.now();
        match db.beat(&id, role, now).await {
            Ok(()) if failing => {
                tracing::info!("the agent's presence beat is recorded again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!("{e}; other agents take over this one's runs if it lasts");
                failing = true;
            }
            Err(_) => {}
        }
        if role == AgentRole::Daemon && !failing {
            match db.alert_gone_agents(&id, now, text::agent_gone).await {
                Ok(hosts) => {
                    for host in hosts {
                        tracing::warn!(%host, "an agent on this database stopped heartbeating");
                    }
                }
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
}
