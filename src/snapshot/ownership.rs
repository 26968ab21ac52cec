//! Which snapshots are the agent's own. A name in the agent's pattern proves nothing:
//! anyone can type one in the panel. A snapshot is the agent's only when its name matches
//! **and** either its description carries the agent's mark or the journal records it.
//!
//! The mark ([`crate::snapshot::mark`]) is an HMAC of the snapshot's server and name keyed with the
//! API token. Snapshots made before marks existed are the agent's only while the journal
//! knows them.

use std::collections::HashSet;

use crate::config::JobSettings;
use chrono::{DateTime, Utc};

use crate::db::{Database, DbError, JournalOf};
use crate::domain::Snapshot;
use crate::domain::{ServerId, SnapshotId};
use crate::retention::Candidate;
use crate::snapshot::mark::{Mark, Marker};
use crate::snapshot::naming;

/// What makes a snapshot the agent's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Its description carries a mark that verifies.
    Mark,
    /// The journal records the agent creating (or adopting) it.
    Journal,
}

/// Why a snapshot is not the agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOurs {
    /// Its name is not one the agent makes.
    Name,
    /// Named like one of `job`'s, but neither marked nor known to the journal.
    Unproven { job: String, bad_mark: bool },
    /// A copy: the journal records the agent making a snapshot of this name under
    /// another id. The mark binds server and name, not the id, so a copy's (name and
    /// description alike) verifies; the journal knows better.
    Copy { job: String, of: SnapshotId },
}

/// Whose a snapshot is, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Made by the agent for `job` (the job its name says).
    Agent {
        job: String,
        proof: Proof,
    },
    Foreign(NotOurs),
}

impl Ownership {
    /// Judges `snap`; `known` holds the ids the journal records as the agent's.
    pub fn of(snap: &Snapshot, marker: &Marker, known: &HashSet<SnapshotId>) -> Self {
        let Some(parsed) = naming::parse(&snap.name) else {
            return Self::Foreign(NotOurs::Name);
        };
        let mark = marker.check(snap.server.id, &snap.name, snap.description.as_deref());
        let proof = if mark == Mark::Valid {
            Proof::Mark
        } else if known.contains(&snap.id) {
            Proof::Journal
        } else {
            return Self::Foreign(NotOurs::Unproven {
                job: parsed.job,
                bad_mark: mark == Mark::Invalid,
            });
        };
        Self::Agent {
            job: parsed.job,
            proof,
        }
    }

    /// `self`, unless the journal made a snapshot of this name under the id `original`
    /// (another than `snap`'s): then a copy, not the agent's.
    pub fn unless_copy(self, snap: &Snapshot, original: Option<SnapshotId>) -> Self {
        match (self, original) {
            (Self::Agent { job, .. }, Some(of)) if of != snap.id => {
                Self::Foreign(NotOurs::Copy { job, of })
            }
            (o, _) => o,
        }
    }

    /// Whether it is `job`'s to rotate.
    pub fn is_of(&self, job: &str) -> bool {
        matches!(self, Self::Agent { job: j, .. } if j == job)
    }

    /// The job whose snapshot it is, if it is the agent's.
    pub fn job(&self) -> Option<&str> {
        match self {
            Self::Agent { job, .. } => Some(job),
            Self::Foreign(_) => None,
        }
    }

    /// Why it is (or is not) the agent's: `marked`, `no marker, not in the journal; …`.
    pub fn reason(&self) -> String {
        match self {
            Self::Agent {
                proof: Proof::Mark, ..
            } => "marked".into(),
            Self::Agent {
                proof: Proof::Journal,
                ..
            } => "in the journal".into(),
            Self::Foreign(NotOurs::Name) => "not named as the agent names its snapshots".into(),
            Self::Foreign(NotOurs::Unproven {
                job,
                bad_mark: false,
            }) => format!("no marker, not in the journal; named like {job}'s"),
            Self::Foreign(NotOurs::Unproven {
                job,
                bad_mark: true,
            }) => format!("marker does not verify, not in the journal; named like {job}'s"),
            Self::Foreign(NotOurs::Copy { job, of }) => format!(
                "a copy: the journal has {job}'s snapshot of this name as {of}, not this one"
            ),
        }
    }

    /// For `agent snapshots`: `yes (web, marked)`, `no (no marker, not in the journal)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Agent { job, .. } => format!("yes ({job}, {})", self.reason()),
            Self::Foreign(NotOurs::Name) => "no".to_string(),
            Self::Foreign(_) => format!("no ({})", self.reason()),
        }
    }
}

/// The planner's view of a server's snapshots for `job`; `owners` says whose each one is
/// (in the order of `listing`).
pub fn candidates(
    listing: &[Snapshot],
    owners: &[Ownership],
    job: &JobSettings,
    pins: &HashSet<SnapshotId>,
) -> Vec<Candidate> {
    listing
        .iter()
        .zip(owners)
        .filter(|(s, _)| s.server.id == job.server_id)
        .map(|(s, o)| Candidate {
            id: s.id,
            created_at: s.created_at,
            status: s.status.clone(),
            managed: o.is_of(&job.name),
            pinned: pins.contains(&s.id),
        })
        .collect()
}

/// Whose each snapshot of `listing` (all on `server_id`) is: the mark, or the journal of
/// `db` when there is one.
pub async fn owners(
    db: Option<&Database>,
    marker: &Marker,
    server_id: ServerId,
    listing: &[Snapshot],
) -> Result<Vec<Ownership>, DbError> {
    Ok(owners_and_pins(db, marker, server_id, listing, None)
        .await?
        .0)
}

/// [`owners`], and with `pins_at` the snapshots pinned at that time, read together.
pub async fn owners_and_pins(
    db: Option<&Database>,
    marker: &Marker,
    server_id: ServerId,
    listing: &[Snapshot],
    pins_at: Option<DateTime<Utc>>,
) -> Result<(Vec<Ownership>, HashSet<SnapshotId>), DbError> {
    let journal = match db {
        Some(db) => {
            let ids: Vec<SnapshotId> = listing.iter().map(|s| s.id).collect();
            let names: Vec<&str> = listing.iter().map(|s| s.name.as_str()).collect();
            db.journal_of(server_id, &ids, &names, pins_at).await?
        }
        None => JournalOf::default(),
    };
    let owners = listing
        .iter()
        .map(|s| {
            Ownership::of(s, marker, &journal.known)
                .unless_copy(s, journal.made.get(&s.name).copied())
        })
        .collect();
    Ok((owners, journal.pins))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RunId, ServerId};
    use crate::domain::{ServerRef, SnapshotStatus};
    use chrono::Utc;

    fn snap(id: u64, server: u64, name: &str, description: Option<String>) -> Snapshot {
        Snapshot {
            id: SnapshotId::new(id),
            server: ServerRef {
                id: ServerId::new(server),
                name: None,
            },
            name: name.to_string(),
            status: SnapshotStatus::Completed,
            size_mb: None,
            created_at: Utc::now(),
            description,
        }
    }

    #[test]
    fn a_mark_proves_ownership_only_for_its_own_name_server_and_key() {
        let m = Marker::new(b"token-a");
        let name = naming::new_name("web", Utc::now());
        let desc = m.description("web", ServerId::new(5), RunId::new(12), &name);
        assert!(desc.contains("job web, run 12"), "{desc}");
        let none = HashSet::new();
        let mine = snap(1, 5, &name, Some(desc.clone()));
        assert_eq!(
            Ownership::of(&mine, &m, &none),
            Ownership::Agent {
                job: "web".into(),
                proof: Proof::Mark
            }
        );
        // Copied onto another name, onto another server, or checked with another key.
        let other_name = naming::new_name("web", Utc::now() - chrono::Duration::days(1));
        for (s, key) in [
            (snap(2, 5, &other_name, Some(desc.clone())), "token-a"),
            (snap(3, 6, &name, Some(desc.clone())), "token-a"),
            (snap(4, 5, &name, Some(desc.clone())), "token-b"),
        ] {
            let o = Ownership::of(&s, &Marker::new(key.as_bytes()), &none);
            assert!(!o.is_of("web"), "{s:?}");
            assert!(
                o.describe().starts_with("no (marker does not verify"),
                "{o:?}"
            );
        }
    }

    #[test]
    fn the_journal_proves_ownership_and_a_name_alone_never_does() {
        let m = Marker::new(b"t");
        let s = snap(7, 5, "agent-web-20250101T000000Z-abcdef", None);
        assert_eq!(
            Ownership::of(&s, &m, &HashSet::new()).describe(),
            "no (no marker, not in the journal; named like web's)"
        );
        let known = HashSet::from([SnapshotId::new(7)]);
        assert!(Ownership::of(&s, &m, &known).is_of("web"));
        assert!(!Ownership::of(&s, &m, &known).is_of("db"));
        let foreign = snap(8, 5, "before-upgrade", None);
        assert_eq!(
            Ownership::of(&foreign, &m, &HashSet::from([SnapshotId::new(8)])),
            Ownership::Foreign(NotOurs::Name)
        );
    }
}
