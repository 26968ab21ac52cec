//! Each snapshot of a server as the operator sees it: whose it is (and why), whether it
//! is pinned, and the verdict of the job it belongs to. `agent snapshots`, the demo and
//! the status page show the same rows.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::config::JobSettings;
use crate::domain::Snapshot;
use crate::domain::SnapshotId;
use crate::retention;
use crate::snapshot::candidates;
use crate::snapshot::ownership::Ownership;

/// One snapshot as `agent snapshots` shows it.
#[derive(Debug, serde::Serialize)]
pub struct SnapshotRow {
    pub id: SnapshotId,
    pub name: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// Whether it is the agent's (a job's, `owner_job`), and why (`reason`).
    pub managed: bool,
    pub owner_job: Option<String>,
    pub reason: String,
    /// The same in words: `yes (web, marked)`, `no`, …
    #[serde(skip)]
    pub managed_text: String,
    pub pinned: bool,
    /// The policy's verdict: `keep: last #1`, `delete next`, `keep: not managed`, …
    pub verdict: String,
}

/// A server's snapshots with, for each, whose it is (and why), whether it is pinned and
/// the verdict of the job it belongs to.
pub fn snapshot_rows(
    listing: &[Snapshot],
    owners: &[Ownership],
    jobs: &[&JobSettings],
    pins: &HashSet<SnapshotId>,
) -> Vec<SnapshotRow> {
    let mut verdicts = std::collections::HashMap::new();
    for job in jobs {
        let cands = candidates(listing, owners, job, pins);
        for v in retention::plan(&cands, &job.retention, job.timezone) {
            if cands.iter().any(|c| c.id == v.id && c.managed) {
                verdicts.insert(v.id, v.reason);
            }
        }
    }
    listing
        .iter()
        .zip(owners)
        .map(|(s, owner)| {
            let pinned = pins.contains(&s.id);
            let verdict = verdicts.get(&s.id).cloned().unwrap_or_else(|| {
                if pinned {
                    "keep: pinned".into()
                } else {
                    "keep: not managed".into()
                }
            });
            SnapshotRow {
                id: s.id,
                name: s.name.clone(),
                status: s.status.to_string(),
                created_at: s.created_at,
                managed: owner.job().is_some(),
                owner_job: owner.job().map(str::to_string),
                reason: owner.reason(),
                managed_text: owner.describe(),
                pinned,
                verdict,
            }
        })
        .collect()
}
