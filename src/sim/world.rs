//! The simulated world: every server's snapshots, how they progress, and the log of what
//! happened to them. No HTTP here: [`super::http`] turns requests into these calls.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::api::{ServerRef, Snapshot, SnapshotStatus};
use crate::domain::{LIMIT, ServerId, SnapshotId};

/// How a server's snapshots end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Snapshots end `failed`.
    Fail,
    /// Snapshots stay `in_progress` for ever.
    Stuck,
}

/// What happened to the simulated world, for invariant checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created {
        id: SnapshotId,
        server_id: ServerId,
        name: String,
    },
    Deleted {
        id: SnapshotId,
        server_id: ServerId,
        name: String,
        description: Option<String>,
        status: SnapshotStatus,
        /// Deleted through `delete_external`, not the API.
        external: bool,
        /// At that moment a completed snapshot of the same job (by name), on the same
        /// server and newer (by time, then id, as the agent orders them), existed: the
        /// deleted one was not the newest good one.
        newer_completed_sibling: bool,
    },
    Restored {
        id: SnapshotId,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Snap {
    pub id: SnapshotId,
    pub server_id: ServerId,
    pub name: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub ready_at: DateTime<Utc>,
    pub fate: Mode,
}

impl Snap {
    pub fn status(&self, now: DateTime<Utc>) -> SnapshotStatus {
        match self.fate {
            Mode::Stuck => SnapshotStatus::InProgress,
            _ if now < self.ready_at => SnapshotStatus::InProgress,
            Mode::Normal => SnapshotStatus::Completed,
            Mode::Fail => SnapshotStatus::Failed("failed".into()),
        }
    }

    pub fn to_api(&self, now: DateTime<Utc>) -> Snapshot {
        let status = self.status(now);
        Snapshot {
            id: self.id,
            server: ServerRef {
                id: self.server_id,
                name: Some(format!("server-{}", self.server_id)),
            },
            name: self.name.clone(),
            size_mb: (status == SnapshotStatus::Completed).then_some(5120),
            status,
            created_at: self.created_at,
            description: self.description.clone(),
        }
    }
}

/// Why the world refuses a create.
pub(super) enum Refusal {
    AtLimit,
}

#[derive(Debug)]
pub(super) struct World {
    snaps: BTreeMap<SnapshotId, Snap>,
    next_id: u64,
    pub modes: HashMap<ServerId, Mode>,
    /// Creates accepted but not carried out yet (a create that lands late).
    late: Vec<Snap>,
    pub events: Vec<Event>,
}

impl Default for World {
    fn default() -> Self {
        Self {
            snaps: BTreeMap::new(),
            next_id: 800,
            modes: HashMap::new(),
            late: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl World {
    fn count(&self, server: ServerId) -> usize {
        self.snaps
            .values()
            .filter(|s| s.server_id == server)
            .count()
    }

    fn fate(&self, server: ServerId) -> Mode {
        self.modes.get(&server).copied().unwrap_or(Mode::Normal)
    }

    fn new_id(&mut self) -> SnapshotId {
        self.next_id = self.next_id.wrapping_add(1);
        SnapshotId::new(self.next_id)
    }

    /// Ids never go back (an API hands each out once): a lower `id` changes nothing.
    pub fn set_next_id(&mut self, id: u64) {
        self.next_id = self.next_id.max(id.wrapping_sub(1));
    }

    /// Carries out late creates whose time has come (while the limit allows).
    pub fn land(&mut self, now: DateTime<Utc>) {
        if self.late.is_empty() {
            return;
        }
        let (due, later): (Vec<Snap>, Vec<Snap>) = std::mem::take(&mut self.late)
            .into_iter()
            .partition(|s| s.created_at <= now);
        self.late = later;
        for snap in due {
            if self.count(snap.server_id) < LIMIT as usize {
                self.add(snap);
            }
        }
    }

    fn add(&mut self, snap: Snap) {
        self.events.push(Event::Created {
            id: snap.id,
            server_id: snap.server_id,
            name: snap.name.clone(),
        });
        self.snaps.insert(snap.id, snap);
    }

    /// A snapshot put in place directly (made by hand): completed, failed, in progress
    /// (completing after `delay`) or stuck with an unknown status.
    pub fn put(
        &mut self,
        server: ServerId,
        name: &str,
        description: Option<&str>,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
        delay: chrono::Duration,
    ) -> SnapshotId {
        let (fate, ready_at) = match status {
            SnapshotStatus::Completed => (Mode::Normal, created_at),
            SnapshotStatus::Failed(_) => (Mode::Fail, created_at),
            SnapshotStatus::InProgress => (self.fate(server), created_at + delay),
            SnapshotStatus::Unknown(_) => (Mode::Stuck, created_at),
        };
        let id = self.new_id();
        let snap = Snap {
            id,
            server_id: server,
            name: name.to_string(),
            description: description.map(str::to_string),
            created_at,
            ready_at,
            fate,
        };
        self.snaps.insert(id, snap);
        id
    }

    /// Starts a snapshot at `at`, completing `delay` later; with `late`, it is only
    /// carried out at `at` (which lies ahead) and the limit is judged then.
    pub fn create(
        &mut self,
        server: ServerId,
        name: &str,
        description: Option<String>,
        at: DateTime<Utc>,
        delay: chrono::Duration,
        late: bool,
    ) -> Result<Snap, Refusal> {
        if !late && self.count(server) >= LIMIT as usize {
            return Err(Refusal::AtLimit);
        }
        let snap = Snap {
            id: self.new_id(),
            server_id: server,
            name: name.to_string(),
            description,
            created_at: at,
            ready_at: at + delay,
            fate: self.fate(server),
        };
        if late {
            self.late.push(snap.clone());
        } else {
            self.add(snap.clone());
        }
        Ok(snap)
    }

    /// Removes a snapshot and logs it, noting whether a newer completed sibling existed.
    pub fn remove(&mut self, id: SnapshotId, external: bool, now: DateTime<Utc>) -> bool {
        let Some(snap) = self.snaps.remove(&id) else {
            return false;
        };
        let job = crate::snapshot::naming::parse(&snap.name).map(|p| p.job);
        let newer_completed_sibling = self.snaps.values().any(|o| {
            o.server_id == snap.server_id
                && (o.created_at, o.id) > (snap.created_at, snap.id)
                && o.status(now) == SnapshotStatus::Completed
                && job.is_some()
                && crate::snapshot::naming::parse(&o.name).map(|p| p.job) == job
        });
        self.events.push(Event::Deleted {
            id,
            server_id: snap.server_id,
            status: snap.status(now),
            name: snap.name,
            description: snap.description,
            external,
            newer_completed_sibling,
        });
        true
    }

    /// Every snapshot (of `server`, if given) as the API lists them, by id.
    pub fn listing(&self, server: Option<ServerId>, now: DateTime<Utc>) -> Vec<Snapshot> {
        self.snaps
            .values()
            .filter(|s| server.is_none_or(|id| s.server_id == id))
            .map(|s| s.to_api(now))
            .collect()
    }

    /// Nothing left to happen by itself: no create waiting to land, no snapshot in
    /// progress that will complete (a stuck one never does).
    pub fn settled(&self, now: DateTime<Utc>) -> bool {
        self.late.is_empty()
            && self
                .snaps
                .values()
                .all(|s| s.fate == Mode::Stuck || s.ready_at <= now)
    }

    pub fn get(&self, id: SnapshotId) -> Option<&Snap> {
        self.snaps.get(&id)
    }

    /// A restore from `id` starts (logged); the snapshot it restores.
    pub fn restore(&mut self, id: SnapshotId) -> Option<Snap> {
        let snap = self.snaps.get(&id)?.clone();
        self.events.push(Event::Restored { id });
        Some(snap)
    }
}
