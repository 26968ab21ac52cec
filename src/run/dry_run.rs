//! `run-once --dry-run`: what a run would do now, changing and recording nothing.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::api::{Client, Listing, SnapshotStatus};
use crate::config::JobSettings;
use crate::db::Database;
use crate::domain::SnapshotId;
use crate::retention::{self, Candidate, LIMIT};
use crate::snapshot::naming;
use crate::snapshot::ownership::Ownership;
use crate::snapshot::{candidates, owners};

/// A plan for `--dry-run`: what a run would do now, changing nothing.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// The server's snapshots; a listing with anomalies would make the run delete
    /// nothing (and fail if the server is at the limit).
    pub listing: Listing,
    /// Whose each snapshot of the listing is.
    pub owners: Vec<Ownership>,
    pub verdicts: Vec<retention::Verdict>,
    pub make_room: Result<Vec<SnapshotId>, retention::NoRoom>,
    pub name: String,
    /// What rotation would delete once the new snapshot completes.
    pub rotate: Vec<SnapshotId>,
    /// What `agent prune` would delete now, without a new snapshot.
    pub prune: Vec<SnapshotId>,
}

/// What a run of `job` would do now; `db` (when there is one) supplies pins and the
/// journal's knowledge of the agent's snapshots. `spare`: a snapshot never to delete,
/// as if pinned (the one a restore goes back to).
pub async fn dry_run(
    client: &Client,
    db: Option<&Database>,
    job: &JobSettings,
    now: DateTime<Utc>,
    spare: Option<SnapshotId>,
) -> anyhow::Result<DryRun> {
    let listing = client.list(Some(job.server_id)).await?;
    let mut pins = match db {
        Some(db) => db.pins(now).await?,
        None => HashSet::new(),
    };
    pins.extend(spare);
    let owners = owners(db, client.marker(), job.server_id, &listing.snapshots).await?;
    let cands = candidates(&listing.snapshots, &owners, job, &pins);
    let verdicts = retention::plan(&cands, &job.retention, job.timezone);
    let make_room = if listing.held() >= LIMIT as usize && !listing.consistent() {
        Err(retention::NoRoom {
            blocking: Vec::new(),
        })
    } else if listing.held() >= LIMIT as usize {
        retention::make_room(
            &cands,
            &job.retention,
            job.timezone,
            now,
            job.max_deletions_per_run,
        )
    } else {
        Ok(Vec::new())
    };
    let name = naming::new_name(&job.name, now);
    let prune = if listing.consistent() {
        retention::victims(
            &cands,
            &job.retention,
            job.timezone,
            job.max_deletions_per_run,
        )
    } else {
        Vec::new()
    };
    let mut after: Vec<Candidate> = cands
        .into_iter()
        .filter(|c| !make_room.as_ref().is_ok_and(|v| v.contains(&c.id)))
        .collect();
    // An id no listed snapshot has, for the one the run would make.
    let phantom = (0..=u64::MAX)
        .map(SnapshotId::new)
        .find(|id| after.iter().all(|c| c.id != *id))
        .unwrap_or(SnapshotId::new(0));
    after.push(Candidate {
        id: phantom,
        created_at: now,
        status: SnapshotStatus::Completed,
        managed: true,
        pinned: false,
    });
    let budget = job
        .max_deletions_per_run
        .saturating_sub(make_room.as_ref().map_or(0, |v| v.len() as u32));
    let rotate = if listing.consistent() {
        retention::victims(&after, &job.retention, job.timezone, budget)
    } else {
        Vec::new()
    };
    Ok(DryRun {
        listing,
        owners,
        verdicts,
        make_room,
        name,
        rotate,
        prune,
    })
}

impl DryRun {
    /// Why the run would fail before creating anything: the server is at the limit and
    /// nothing may be deleted (by the policy, or because the listing is inconsistent).
    pub fn no_room(&self) -> Option<String> {
        match &self.make_room {
            Ok(_) => None,
            Err(_) if !self.listing.consistent() => Some(format!(
                "the server is at the limit by a listing the agent cannot trust ({}); \
                 nothing is deleted on such a listing",
                self.listing.odd()
            )),
            Err(no) => Some(format!(
                "the server is at the limit and nothing may be deleted; blocking: {}",
                no.list()
            )),
        }
    }
}
