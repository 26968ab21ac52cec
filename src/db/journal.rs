//! The run journal, written ahead of every effect: a create, delete or restore is an entry
//! in state `pending`, committed before its request is sent, then resolved with what
//! happened. An answer lost to a crash or the network leaves the entry `pending` or
//! `unknown`, so that later runs resolve it from what the API shows instead of mistaking
//! the agent's own doing for someone else's, or doing it again.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::sql::{Engine, On, Q};
use super::{Database, DbError, DbResult, Did, Part, StoredTime, ms};
use crate::domain::{RunId, ServerId, SnapshotId};
use crate::identity::Owner;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Action {
    /// The run took its server's lock.
    Lock,
    /// The run listed its server's snapshots.
    List,
    /// An effect: a snapshot was asked for.
    Create,
    /// A snapshot found by name after its create's answer was lost.
    Adopt,
    /// A listing while waiting for the snapshot.
    Poll,
    /// An effect: a snapshot was asked to go.
    Delete,
    /// An effect: a server was asked to go back to a snapshot.
    Restore,
    /// A snapshot the agent made is gone, and the agent did not delete it.
    Vanished,
    /// The run ended (its status in `detail`).
    Finish,
    /// A `before` hook (its command in `detail`, its exit and output in `outcome`).
    Before,
    /// An `after` hook: written, still pending, with the first `before`; a pending one
    /// is an obligation the next start carries out if the run's process is gone.
    After,
    /// An `on_failure` hook.
    OnFailure,
}

/// How an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum State {
    /// Recorded; the request may be on its way. What a crash leaves behind.
    Pending,
    Ok,
    /// Refused: not carried out.
    Error,
    /// The answer was lost: it may have been carried out.
    Unknown,
}

names!(Action { Lock = "lock", List = "list", Create = "create", Adopt = "adopt", Poll = "poll", Delete = "delete", Restore = "restore", Vanished = "vanished", Finish = "finish", Before = "before", After = "after", OnFailure = "on_failure" });
names!(State { Pending = "pending", Ok = "ok", Error = "error", Unknown = "unknown" });

/// How [`Database::begun`] marks an entry's outcome.
pub const BEGUN: &str = "begun at";

/// An entry's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, sqlx::Type)]
#[sqlx(transparent)]
pub struct EntryId(i64);

/// One journal entry.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub id: EntryId,
    pub run_id: RunId,
    pub server_id: ServerId,
    pub action: Action,
    pub state: State,
    pub snapshot_id: Option<SnapshotId>,
    pub snapshot_name: Option<String>,
    /// When it was recorded (Unix milliseconds).
    pub at: StoredTime,
    /// Why (an effect's reason, an observation's content).
    pub detail: Option<String>,
    /// What became of an effect.
    pub outcome: Option<String>,
}

impl Entry {
    pub fn snapshot(&self) -> Option<SnapshotId> {
        self.snapshot_id
    }

    pub fn recorded_at(&self) -> DateTime<Utc> {
        self.at.0
    }

    /// Not settled: the request may or may not have been carried out.
    pub fn open(&self) -> bool {
        matches!(self.state, State::Pending | State::Unknown)
    }
}

/// What an entry is about.
#[derive(Debug, Clone, Copy)]
pub struct Intent<'a> {
    pub run_id: RunId,
    pub server_id: ServerId,
    pub action: Action,
    pub snapshot_id: Option<SnapshotId>,
    pub snapshot_name: Option<&'a str>,
    pub detail: Option<&'a str>,
}

const ENTRY_COLUMNS: &str =
    "id, run_id, server_id, action, state, snapshot_id, snapshot_name, at, detail, outcome";

/// Inserts an entry `on` a transaction, or on its own (a single statement commits by
/// itself, and saves the two hops to SQLite's thread a transaction adds).
async fn insert(
    on: On<'_>,
    i: &Intent<'_>,
    state: State,
    at: DateTime<Utc>,
) -> Result<EntryId, sqlx::Error> {
    let resolved = (state != State::Pending).then_some(ms(at));
    on.q(
        "INSERT INTO journal (run_id, server_id, action, state, snapshot_id, snapshot_name, at, resolved_at, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(i.run_id)
    .bind(i.server_id)
    .bind(i.action)
    .bind(state)
    .bind(i.snapshot_id)
    .bind(i.snapshot_name)
    .bind(ms(at))
    .bind(resolved)
    .bind(i.detail)
    .scalar(on)
    .await
}

/// Inserts a pending entry only while its run is still running under `owner`: an agent
/// whose run another agent took over (its presence beat lapsed, say, cut off from the
/// database) records no intent, and so sends no request, for it again. A delete is
/// recorded only while its snapshot is not pinned: a pin committed after the run chose
/// its victim still saves it (and `agent pin`, after its own commit, sees any delete
/// recorded before it). It returns the entry's id, or no row when not.
fn insert_fenced(engine: Engine, i: &Intent<'_>, owner: &Owner, at: DateTime<Utc>) -> Q {
    Q::new(
        engine,
        "INSERT INTO journal (run_id, server_id, action, state, snapshot_id, snapshot_name, at, detail) \
         SELECT $1, $2, $3, 'pending', $4, $5, $6, $7 \
         WHERE EXISTS (SELECT 1 FROM runs WHERE id = $8 AND status = 'running' AND owner = $9) \
         AND NOT EXISTS (SELECT 1 FROM pins WHERE $3 = 'delete' AND snapshot_id = $4 \
                         AND (until IS NULL OR until > $6)) \
         RETURNING id",
    )
    .bind(i.run_id)
    .bind(i.server_id)
    .bind(i.action)
    .bind(i.snapshot_id)
    .bind(i.snapshot_name)
    .bind(ms(at))
    .bind(i.detail)
    .bind(i.run_id)
    .bind(owner.as_str())
}

/// The entry id a fenced insert returned, if it did.
fn entry_of(did: &[Did]) -> Option<EntryId> {
    did.first()?.ids.first().copied().map(EntryId)
}

/// A resolved entry about the run itself (its end), on its run's server.
pub(super) fn insert_resolved(
    engine: Engine,
    run_id: RunId,
    action: Action,
    state: State,
    detail: Option<&str>,
    at: DateTime<Utc>,
) -> Q {
    Q::new(
        engine,
        "INSERT INTO journal (run_id, server_id, action, state, at, resolved_at, detail) \
         SELECT id, server_id, $1, $2, $3, $4, $5 FROM runs WHERE id = $6",
    )
    .bind(action)
    .bind(state)
    .bind(ms(at))
    .bind((state != State::Pending).then_some(ms(at)))
    .bind(detail)
    .bind(run_id)
}

impl Database {
    /// Records an effect about to be requested by `owner`'s run; committed when this
    /// returns. An error when the run is no longer `owner`'s.
    pub async fn intend(
        &self,
        i: Intent<'_>,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> DbResult<EntryId> {
        let what = self.intent_of(&i);
        let entry = self.record_intent(i, owner, at, &what).await?;
        entry.ok_or_else(|| self.taken_over(&what, i.run_id))
    }

    /// [`Self::intend`] for a delete: `None` when the snapshot is pinned at `at` (pinned
    /// after the run chose it), and nothing is recorded.
    pub async fn intend_delete(
        &self,
        i: Intent<'_>,
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> DbResult<Option<EntryId>> {
        let what = self.intent_of(&i);
        if let Some(entry) = self.record_intent(i, owner, at, &what).await? {
            return Ok(Some(entry));
        }
        match i.snapshot_id {
            Some(id) if self.pins(at).await?.contains(&id) => Ok(None),
            _ => Err(self.taken_over(&what, i.run_id)),
        }
    }

    fn intent_of(&self, i: &Intent<'_>) -> String {
        format!(
            "cannot record the intent to {} (run {})",
            i.action, i.run_id
        )
    }

    /// The fenced intent (with a create, its run's snapshot name); `None` when the fence
    /// refused it.
    async fn record_intent(
        &self,
        i: Intent<'_>,
        owner: &Owner,
        at: DateTime<Utc>,
        what: &str,
    ) -> DbResult<Option<EntryId>> {
        let mut parts =
            vec![Part::returning(insert_fenced(self.engine(), &i, owner, at)).or_stop()];
        if i.action == Action::Create {
            // The run's summary names its snapshot from the moment it is asked for.
            parts.push(Part::new(
                self.q("UPDATE runs SET snapshot_name = $1, step = 'create' WHERE id = $2")
                    .bind(i.snapshot_name)
                    .bind(i.run_id),
            ));
        }
        let did = self.write_all(what, parts).await?;
        Ok(entry_of(&did))
    }

    fn taken_over(&self, what: &str, run_id: RunId) -> DbError {
        DbError::new(
            &self.path,
            what,
            anyhow::anyhow!(
                "run {run_id} is no longer this agent's (another agent took it over after this one's presence beat lapsed)"
            ),
        )
    }

    /// Records several intents of `owner`'s runs at once, committed together when this
    /// returns.
    pub async fn intend_all(
        &self,
        intents: &[Intent<'_>],
        owner: &Owner,
        at: DateTime<Utc>,
    ) -> DbResult<Vec<EntryId>> {
        let what = "cannot record the run's hooks in the journal";
        let mut tx = self.begin().await?;
        let mut ids = Vec::with_capacity(intents.len());
        for i in intents {
            let q = insert_fenced(self.engine(), i, owner, at);
            ids.push(
                q.scalar_optional(&mut tx)
                    .await
                    .map_err(self.err(what))?
                    .ok_or_else(|| self.taken_over(what, i.run_id))?,
            );
        }
        tx.commit().await.map_err(self.err(what))?;
        Ok(ids)
    }

    /// Notes on an entry still pending that its effect has begun (an `after` hook started:
    /// if the process dies now, the next start knows it may have run).
    pub async fn begun(&self, entry: EntryId, at: DateTime<Utc>) -> DbResult<()> {
        self.q("UPDATE journal SET outcome = $1 WHERE id = $2 AND state = 'pending'")
            .bind(format!("{BEGUN} {}", ms(at)))
            .bind(entry)
            .execute(self)
            .await
            .map_err(self.err("cannot record that a hook started"))?;
        Ok(())
    }

    /// Records what became of an effect (`outcome` in words; the intent's reason stays).
    /// `made` is, for a create that made a snapshot, its id and status (written to the
    /// run's summary too).
    pub async fn resolve(
        &self,
        entry: EntryId,
        state: State,
        made: Option<(SnapshotId, &str)>,
        outcome: Option<&str>,
        at: DateTime<Utc>,
    ) -> DbResult<()> {
        let what = format!("cannot record an outcome ({state}) in the journal");
        let Some((id, status)) = made else {
            // One statement: nothing else changes with it.
            self.q("UPDATE journal SET state = $1, outcome = $2, resolved_at = $3 WHERE id = $4")
                .bind(state)
                .bind(outcome)
                .bind(ms(at))
                .bind(entry)
                .execute(self)
                .await
                .map_err(self.err(what))?;
            return Ok(());
        };
        // A create's run names the snapshot it made (and when it was asked for) with it.
        let parts = vec![
            Part::returning(
                self.q(
                    "UPDATE journal SET state = $1, snapshot_id = COALESCE($2, snapshot_id), \
                     outcome = $3, resolved_at = $4 WHERE id = $5 RETURNING id",
                )
                .bind(state)
                .bind(id)
                .bind(outcome)
                .bind(ms(at))
                .bind(entry),
            )
            .or_stop(),
            Part::new(
                self.q("UPDATE runs SET snapshot_id = $1, snapshot_status = $2, \
                     snapshot_created_at = COALESCE(snapshot_created_at, \
                       (SELECT at FROM journal WHERE id = $3)) \
                     WHERE id = (SELECT run_id FROM journal WHERE id = $3 AND action = 'create')")
                    .bind(id)
                    .bind(status)
                    .bind(entry),
            ),
        ];
        let did = self.write_all(&what, parts).await?;
        if entry_of(&did).is_none() {
            return Err(DbError::new(
                &self.path,
                what,
                anyhow::anyhow!("journal entry {} is not there", entry.0),
            ));
        }
        Ok(())
    }

    /// Records something seen (a listing, a poll, an adoption), resolved at once.
    pub async fn observe(&self, i: Intent<'_>, state: State, at: DateTime<Utc>) -> DbResult<()> {
        let what = format!("cannot record a {} of run {}", i.action, i.run_id);
        insert(self.into(), &i, state, at)
            .await
            .map(drop)
            .map_err(self.err(what))
    }

    /// A run's entries, oldest first.
    pub async fn entries(&self, run_id: RunId) -> DbResult<Vec<Entry>> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM journal WHERE run_id = $1 ORDER BY id");
        self.q(&sql)
            .bind(run_id)
            .fetch_all(self)
            .await
            .map_err(self.err(format!("cannot read the journal of run {run_id}")))
    }

    /// Effects on `server_id` whose outcome nobody knows yet, oldest first.
    pub async fn unresolved(&self, server_id: ServerId) -> DbResult<Vec<Entry>> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM journal WHERE server_id = $1 \
             AND state IN ('pending', 'unknown') ORDER BY id"
        );
        self.q(&sql)
            .bind(server_id)
            .fetch_all(self)
            .await
            .map_err(self.err("cannot read the journal"))
    }

    /// How many deletes run `run_id` has asked for that may have been carried out.
    pub async fn deletes_spent(&self, run_id: RunId) -> DbResult<u32> {
        let (n,): (i64,) = self.q(
            "SELECT count(*) FROM journal WHERE run_id = $1 AND action = 'delete' AND state != 'error'",
        )
        .bind(run_id)
        .fetch_one(self)
        .await
        .map_err(self.err("cannot read the journal"))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }
}
