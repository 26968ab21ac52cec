//! Runs: one row per job run (snapshot or restore), from start to finish. The row is the
//! run's summary; what it did is in its journal ([`super::journal`]).

use super::journal::{self, Action, State};
use super::sql::Q;
use super::unit::Part;
use super::{
    Database, DbError, DbResult, Engine, NewAlert, NewPing, StoredTime, alerts, ms, pings,
};
use crate::domain::{RunId, ServerId, SnapshotId};
use crate::identity::Owner;
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunKind {
    Snapshot,
    Restore,
    /// `agent prune`: the retention policy applied without a snapshot.
    Prune,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunTrigger {
    Schedule,
    Manual,
    CatchUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
    /// A restore the API accepted: it offers no way to see one complete.
    Started,
}

/// The last step a run reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Step {
    Start,
    Lock,
    List,
    MakeRoom,
    Create,
    Poll,
    Rotate,
    Restore,
    /// Running the `before` hooks.
    Before,
    /// Running the `after` hooks.
    After,
    Done,
}

names!(RunKind { Snapshot = "snapshot", Restore = "restore", Prune = "prune" });
names!(RunTrigger { Schedule = "schedule", Manual = "manual", CatchUp = "catch_up" });
names!(RunStatus { Running = "running", Succeeded = "succeeded", Failed = "failed", Interrupted = "interrupted", Started = "started" });
names!(Step { Start = "start", Lock = "lock", List = "list", MakeRoom = "make_room", Create = "create", Poll = "poll", Rotate = "rotate", Restore = "restore", Before = "before", After = "after", Done = "done" });

/// The snapshot a run made or worked on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSnapshot {
    pub id: Option<SnapshotId>,
    pub name: String,
    pub status: Option<String>,
}

/// One run as history shows it (SPEC's JSON shape).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: RunId,
    pub job: String,
    pub server_id: ServerId,
    pub kind: RunKind,
    pub trigger: RunTrigger,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The fire time of a scheduled or caught-up run.
    pub scheduled_for: Option<DateTime<Utc>>,
    pub snapshot: Option<RunSnapshot>,
    pub deleted_snapshot_ids: Vec<SnapshotId>,
    pub error: Option<String>,
    /// A restore: the snapshot of the server's state taken just before it.
    pub safety_snapshot_id: Option<SnapshotId>,
    /// For the operator: what was done and how to undo it.
    pub note: Option<String>,
    /// The step the run reached.
    pub step: Step,
    /// The agent that ran it (its host name).
    pub host: String,
    /// The hooks it ran (or, pending, must still run), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookEntry>,
    #[serde(skip)]
    pub owner: String,
    #[serde(skip)]
    pub snapshot_created_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
    id: RunId,
    job: String,
    server_id: ServerId,
    kind: RunKind,
    trigger: RunTrigger,
    status: RunStatus,
    started_at: StoredTime,
    finished_at: Option<StoredTime>,
    step: Step,
    owner: String,
    scheduled_for: Option<StoredTime>,
    snapshot_name: Option<String>,
    snapshot_id: Option<SnapshotId>,
    snapshot_status: Option<String>,
    snapshot_created_at: Option<StoredTime>,
    error: Option<String>,
    safety_snapshot_id: Option<SnapshotId>,
    note: Option<String>,
    deleted: Option<String>,
    hooks: Option<String>,
}

/// One hook of a run, as history shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HookEntry {
    /// `before`, `after` or `on_failure`.
    pub phase: String,
    /// As the configuration wrote it: a shell string, or an argv array.
    pub command: serde_json::Value,
    /// `pending` (not run yet, or cut off by a crash), `ok` or `error`, `unknown`.
    pub state: String,
    /// Its exit status, how long it took, and the end of its output.
    pub result: Option<String>,
}

#[derive(serde::Deserialize)]
struct StoredHook {
    phase: String,
    command: Option<String>,
    state: String,
    result: Option<String>,
}

/// The hooks of a run in the order they ran: `before`, `after` (journaled first, as what
/// the run owes, but run once the snapshot is started), `on_failure`; each phase's in id
/// order.
fn hooks_of(json: Option<&str>) -> Vec<HookEntry> {
    let mut stored: Vec<StoredHook> = json
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    stored.sort_by_key(|h| match h.phase.as_str() {
        "before" => 0,
        "after" => 1,
        _ => 2,
    });
    stored
        .into_iter()
        .map(|h| HookEntry {
            phase: h.phase,
            command: h
                .command
                .and_then(|c| serde_json::from_str(&c).ok())
                .unwrap_or_default(),
            state: h.state,
            result: h.result,
        })
        .collect()
}

impl From<RunRow> for Run {
    fn from(r: RunRow) -> Self {
        Run {
            id: r.id,
            job: r.job,
            server_id: r.server_id,
            kind: r.kind,
            trigger: r.trigger,
            status: r.status,
            started_at: r.started_at.0,
            finished_at: r.finished_at.map(|t| t.0),
            scheduled_for: r.scheduled_for.map(|t| t.0),
            snapshot: r.snapshot_name.map(|name| RunSnapshot {
                id: r.snapshot_id,
                name,
                status: r.snapshot_status,
            }),
            deleted_snapshot_ids: r
                .deleted
                .map(|s| {
                    s.split(',')
                        .filter_map(|v| v.trim().parse().ok())
                        .map(SnapshotId::from_stored)
                        .collect()
                })
                .unwrap_or_default(),
            error: r.error,
            safety_snapshot_id: r.safety_snapshot_id,
            note: r.note,
            step: r.step,
            host: crate::identity::host_of(&r.owner),
            hooks: hooks_of(r.hooks.as_deref()),
            owner: r.owner,
            snapshot_created_at: r.snapshot_created_at.map(|t| t.0),
        }
    }
}

/// What a new run starts as.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub job: &'a str,
    pub server_id: ServerId,
    pub kind: RunKind,
    pub trigger: RunTrigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
}

/// How a run ends.
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub status: RunStatus,
    pub error: Option<&'a str>,
    /// The step it stopped at (`None`: keep the recorded one); a success ends at `done`.
    pub step: Option<Step>,
    pub at: DateTime<Utc>,
    /// Queued in the same transaction: a failure recorded is a failure alerted.
    pub alerts: &'a [NewAlert],
    /// The job's end-of-run ping, queued in the same transaction.
    pub ping: Option<NewPing>,
}

macro_rules! plain_run_columns {
    () => {
        "id, job, server_id, kind, trigger, status, started_at, finished_at, step, owner, \
         scheduled_for, snapshot_name, snapshot_id, snapshot_status, snapshot_created_at, error, \
         safety_snapshot_id, note, "
    };
}

/// A run row's columns, with the snapshots it deleted (comma-separated) and the hooks it
/// ran (a JSON array), which the engines aggregate differently.
pub(super) fn run_columns(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => concat!(
            plain_run_columns!(),
            "(SELECT string_agg(snapshot_id, ',') FROM journal j \
               WHERE j.run_id = runs.id AND j.action = 'delete' AND j.state = 'ok') AS deleted, \
             (SELECT json_group_array(json_object('phase', action, 'command', detail, 'state', state, \
               'result', outcome) ORDER BY id) FROM journal j \
               WHERE j.run_id = runs.id AND j.action IN ('before', 'after', 'on_failure')) AS hooks"
        ),
        Engine::Postgres => concat!(
            plain_run_columns!(),
            "(SELECT string_agg(CAST(snapshot_id AS TEXT), ',') FROM journal j \
               WHERE j.run_id = runs.id AND j.action = 'delete' AND j.state = 'ok') AS deleted, \
             (SELECT CAST(json_agg(json_build_object('phase', action, 'command', detail, 'state', state, \
               'result', outcome) ORDER BY id) AS TEXT) FROM journal j \
               WHERE j.run_id = runs.id AND j.action IN ('before', 'after', 'on_failure')) AS hooks"
        ),
    }
}

/// Records a run's start; it returns the run's id.
pub(super) fn insert_run(engine: Engine, run: &NewRun<'_>, owner: &Owner) -> Q {
    Q::new(
        engine,
        "INSERT INTO runs (job, server_id, kind, trigger, status, scheduled_for, started_at, owner) \
         VALUES ($1, $2, $3, $4, 'running', $5, $6, $7) RETURNING id",
    )
    .bind(run.job)
    .bind(run.server_id)
    .bind(run.kind)
    .bind(run.trigger)
    .bind(run.scheduled_for.map(ms))
    .bind(ms(run.started_at))
    .bind(owner.as_str())
}

impl Database {
    pub async fn start_run(&self, run: NewRun<'_>, owner: &Owner) -> DbResult<RunId> {
        // One statement, committed on its own.
        insert_run(self.engine(), &run, owner)
            .scalar(self)
            .await
            .map_err(self.err(format!("cannot record the start of a run of {}", run.job)))
    }

    pub async fn set_step(&self, run_id: RunId, step: Step) -> DbResult<()> {
        self.q("UPDATE runs SET step = $1 WHERE id = $2")
            .bind(step)
            .bind(run_id)
            .execute(self)
            .await
            .map_err(self.err(format!("cannot record step {step} of run {run_id}")))?;
        Ok(())
    }

    /// The snapshot a run works on that it did not create (a restore's).
    pub async fn set_run_snapshot(
        &self,
        run_id: RunId,
        id: SnapshotId,
        name: &str,
        status: &str,
    ) -> DbResult<()> {
        self.q(
            "UPDATE runs SET snapshot_id = $1, snapshot_name = $2, snapshot_status = $3 WHERE id = $4",
        )
        .bind(id)
        .bind(name)
        .bind(status)
        .bind(run_id)
        .execute(self)
        .await
        .map_err(self.err(format!("cannot record the snapshot of run {run_id}")))?;
        Ok(())
    }

    /// The run's view of its snapshot: status, and when it completed.
    pub async fn set_snapshot_status(
        &self,
        run_id: RunId,
        status: &str,
        completed_at: Option<DateTime<Utc>>,
    ) -> DbResult<()> {
        self.q("UPDATE runs SET snapshot_status = $1, snapshot_completed_at = $2 WHERE id = $3")
            .bind(status)
            .bind(completed_at.map(ms))
            .bind(run_id)
            .execute(self)
            .await
            .map_err(self.err(format!("cannot record the snapshot of run {run_id}")))?;
        Ok(())
    }

    /// Takes over a run left `running` by `from` (a process that is gone), in one
    /// conditional write: of several processes trying at once, exactly one gets it.
    pub async fn claim_run(&self, run_id: RunId, from: &str, to: &Owner) -> DbResult<Option<Run>> {
        let took = self
            .q("UPDATE runs SET owner = $1 WHERE id = $2 AND status = 'running' AND owner = $3")
            .bind(to.as_str())
            .bind(run_id)
            .bind(from)
            .execute(self)
            .await
            .map_err(self.err(format!("cannot claim run {run_id}")))?;
        if took == 0 {
            return Ok(None);
        }
        self.run(run_id).await
    }

    /// Ends a run still running and owned by `owner`, and queues its alerts, in one
    /// transaction. A run that is not (or no longer) this owner's is an error: a run is
    /// finished once.
    /// A restore's safety snapshot (taken before it, pinned) and the note for the
    /// operator (how to undo it).
    pub async fn set_restore_safety(
        &self,
        run_id: RunId,
        safety: Option<SnapshotId>,
        note: &str,
    ) -> DbResult<()> {
        self.q("UPDATE runs SET safety_snapshot_id = $1, note = $2 WHERE id = $3")
            .bind(safety)
            .bind(note)
            .bind(run_id)
            .execute(self)
            .await
            .map_err(self.err(format!("cannot record run {run_id}'s safety snapshot")))?;
        Ok(())
    }

    /// Notes on a run still `running` under `owner` why it stops here unfinished.
    pub async fn note_unfinished(&self, run_id: RunId, owner: &Owner, note: &str) -> DbResult<()> {
        self.q("UPDATE runs SET error = $1 WHERE id = $2 AND status = 'running' AND owner = $3")
            .bind(note)
            .bind(run_id)
            .bind(owner.as_str())
            .execute(self)
            .await
            .map_err(self.err(format!("cannot note why run {run_id} stops")))?;
        Ok(())
    }

    pub async fn finish_run(&self, run_id: RunId, owner: &Owner, end: Finish<'_>) -> DbResult<()> {
        let step = if end.status == RunStatus::Succeeded {
            Some(Step::Done)
        } else {
            end.step
        };
        let what = format!("cannot record the end of run {run_id}");
        let mut parts = vec![
            Part::new(
                self.q(
                    "UPDATE runs SET status = $1, error = $2, finished_at = $3, step = COALESCE($4, step) \
                     WHERE id = $5 AND status = 'running' AND owner = $6",
                )
                .bind(end.status)
                .bind(end.error)
                .bind(ms(end.at))
                .bind(step)
                .bind(run_id)
                .bind(owner.as_str()),
            )
            .or_stop(),
            Part::new(journal::insert_resolved(
                self.engine(),
                run_id,
                Action::Finish,
                State::Ok,
                Some(end.status.as_str()),
                end.at,
            )),
        ];
        parts.extend(
            end.alerts
                .iter()
                .map(|a| Part::new(alerts::insert(self.engine(), a))),
        );
        parts.extend(
            end.ping
                .iter()
                .map(|p| Part::new(pings::insert(self.engine(), p))),
        );
        let did = self.write_all(&what, parts).await?;
        if did.first().is_none_or(|d| d.changed == 0) {
            return Err(DbError {
                path: self.path().to_path_buf(),
                what,
                detail: "it is no longer running under this process".to_string(),
                source: None,
            });
        }
        Ok(())
    }
}
