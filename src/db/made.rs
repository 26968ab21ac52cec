//! What the journal says the agent made: whose each snapshot of a listing is (read with
//! the pins, which a run asks of every listing), and what drift compares a listing with.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{Database, DbResult, ms};
use crate::domain::{ServerId, SnapshotId};

/// What [`Database::journal_of`] read.
#[derive(Debug, Default)]
pub struct JournalOf {
    /// The snapshots the journal records as the agent's: created or adopted by one of
    /// its runs, or asked for by a create whose answer was lost.
    pub known: HashSet<SnapshotId>,
    /// For each name the journal recorded with an id, that id (a snapshot of that name
    /// under another id is a copy).
    pub made: HashMap<String, SnapshotId>,
    /// The snapshots pinned (when asked).
    pub pins: HashSet<SnapshotId>,
}

impl Database {
    /// Of the snapshots `ids` (named `names`) on `server_id`, those the journal records as
    /// the agent's: created or adopted by one of its runs, or asked for by a create whose
    /// answer was lost.
    pub async fn known_snapshots(
        &self,
        server_id: ServerId,
        ids: &[SnapshotId],
        names: &[&str],
    ) -> DbResult<HashSet<SnapshotId>> {
        Ok(self.journal_of(server_id, ids, names, None).await?.known)
    }

    /// What the journal says of the snapshots `ids` (named `names`) on `server_id`; with
    /// `pins_at`, in the same read, the snapshots pinned at that time (a run asks both of
    /// every listing).
    pub async fn journal_of(
        &self,
        server_id: ServerId,
        ids: &[SnapshotId],
        names: &[&str],
        pins_at: Option<DateTime<Utc>>,
    ) -> DbResult<JournalOf> {
        let mut sql = format!(
            "SELECT snapshot_id, snapshot_name, FALSE AS pin FROM journal \
             WHERE action IN ('create', 'adopt') AND state != 'error' AND server_id = $1 \
             AND (snapshot_id IN ({}) OR snapshot_name IN ({}))",
            self.engine().json_integers(2),
            self.engine().json_texts(3)
        );
        if pins_at.is_some() {
            sql.push_str(
                " UNION ALL SELECT snapshot_id, NULL, TRUE FROM pins \
                 WHERE until IS NULL OR until > $4",
            );
        }
        let mut q = self
            .q(&sql)
            .bind(server_id)
            .bind(
                serde_json::to_string(&ids.iter().map(|i| i.stored()).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .bind(serde_json::to_string(names).unwrap_or_default());
        if let Some(at) = pins_at {
            q = q.bind(ms(at));
        }
        let all: Vec<(Option<SnapshotId>, Option<String>, bool)> = q
            .fetch_all(self)
            .await
            .map_err(self.err("cannot read the journal"))?;
        let (pins, rows): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| r.2);
        let pins = pins.into_iter().filter_map(|r| r.0).collect();
        // A name proves nothing once the journal knows the id its create got: a snapshot
        // made by hand under a name the agent once used (under another id) is not the
        // agent's. Only a create whose answer was lost (no id recorded) is matched by
        // name, and only when one snapshot in the listing bears it.
        let lost_names: HashSet<String> = rows
            .iter()
            .filter(|r| r.0.is_none())
            .filter_map(|r| r.1.clone())
            .collect();
        let made: HashMap<String, SnapshotId> = rows
            .iter()
            .filter_map(|r| Some((r.1.clone()?, r.0?)))
            .collect();
        let mut known: HashSet<SnapshotId> = rows.iter().filter_map(|r| r.0).collect();
        known.retain(|id| ids.contains(id));
        known.extend(
            ids.iter()
                .zip(names)
                .filter(|(_, n)| {
                    lost_names.contains(**n) && names.iter().filter(|m| *m == *n).count() == 1
                })
                .map(|(id, _)| *id),
        );
        Ok(JournalOf { known, made, pins })
    }

    /// Snapshots `job` made on `server_id` and saw completed that the agent never tried
    /// to delete (whatever became of the attempt, it wanted them gone) nor already
    /// reported vanished, newest first, each once: what drift detection compares with a
    /// listing.
    pub async fn made_by(
        &self,
        job: &str,
        server_id: ServerId,
        limit: u32,
    ) -> DbResult<Vec<(SnapshotId, String)>> {
        // The limit is written into the statement (see `snapshot_durations`). `gone = 0`
        // reads the creates through `journal_made`, which leaves out those a delete or
        // vanished entry names (migration 20261206000001): the read costs what is left on
        // the server, not the job's whole history. The `NOT EXISTS` still decides.
        self.q(&format!(
            "SELECT j.snapshot_id, COALESCE(j.snapshot_name, r.snapshot_name, '') FROM journal j \
             JOIN runs r ON r.id = j.run_id \
             WHERE j.server_id = $2 AND j.action IN ('create', 'adopt') AND j.state = 'ok' \
             AND j.snapshot_id IS NOT NULL AND j.gone = 0 \
             AND r.job = $1 AND r.kind = 'snapshot' AND r.status = 'succeeded' \
             AND NOT EXISTS (SELECT 1 FROM journal d WHERE d.snapshot_id = j.snapshot_id \
                             AND d.action IN ('vanished', 'delete')) \
             ORDER BY r.id DESC LIMIT {limit}"
        ))
        .bind(job)
        .bind(server_id)
        .fetch_all(self)
        .await
        .map_err(self.err("cannot read the journal"))
        .map(|mut rows: Vec<(SnapshotId, String)>| {
            // A create whose answer was lost and the adopt that found its snapshot name
            // one snapshot twice: each is one snapshot, reported vanished once.
            let mut seen = HashSet::new();
            rows.retain(|(id, _)| seen.insert(*id));
            rows
        })
    }
}
