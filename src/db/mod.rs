//! The history store: one SQLite file (WAL), migrated on open. Runs and their API actions
//! are written as they happen; pins, per-server locks and the alert outbox live here too.

mod alerts;
mod locks;

pub use alerts::{NewAlert, PendingAlert};
pub use locks::Owner;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};

/// A database problem, always naming the file.
#[derive(Debug, thiserror::Error)]
#[error("database {path}: {what}: {source}")]
pub struct DbError {
    pub path: PathBuf,
    pub what: String,
    #[source]
    pub source: anyhow::Error,
}

pub type DbResult<T> = Result<T, DbError>;

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Snapshot,
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    Schedule,
    Manual,
    CatchUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok(Self::$v),)* other => Err(format!("unknown value {other:?}")) }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
text_enum!(RunKind { Snapshot = "snapshot", Restore = "restore" });
text_enum!(RunTrigger { Schedule = "schedule", Manual = "manual", CatchUp = "catch_up" });
text_enum!(RunStatus { Running = "running", Succeeded = "succeeded", Failed = "failed", Interrupted = "interrupted" });

/// The snapshot a run made or worked on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSnapshot {
    pub id: Option<u64>,
    pub name: String,
    pub status: Option<String>,
}

/// One run as history shows it (SPEC's JSON shape).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub job: String,
    pub server_id: u64,
    pub kind: RunKind,
    pub trigger: RunTrigger,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub snapshot: Option<RunSnapshot>,
    pub deleted_snapshot_ids: Vec<u64>,
    pub error: Option<String>,
    /// The step the run reached (`create`, `poll`, ...).
    pub step: String,
    #[serde(skip)]
    pub owner: String,
    #[serde(skip)]
    pub scheduled_for: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub snapshot_created_at: Option<DateTime<Utc>>,
}

/// What a new run starts as.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub job: &'a str,
    pub server_id: u64,
    pub kind: RunKind,
    pub trigger: RunTrigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
}

const RUN_COLUMNS: &str = "id, job, server_id, kind, trigger, status, started_at, finished_at, step, owner, \
    scheduled_for, snapshot_name, snapshot_id, snapshot_status, snapshot_created_at, error, \
    (SELECT group_concat(snapshot_id) FROM actions a \
       WHERE a.run_id = runs.id AND a.action = 'delete' AND a.outcome = 'ok') AS deleted";

fn run_from_row(row: &SqliteRow) -> Run {
    let snapshot = row
        .get::<Option<String>, _>("snapshot_name")
        .map(|name| RunSnapshot {
            id: row.get::<Option<i64>, _>("snapshot_id").map(|i| i as u64),
            name,
            status: row.get("snapshot_status"),
        });
    Run {
        id: row.get("id"),
        job: row.get("job"),
        server_id: row.get::<i64, _>("server_id") as u64,
        kind: row
            .get::<String, _>("kind")
            .parse()
            .unwrap_or(RunKind::Snapshot),
        trigger: row
            .get::<String, _>("trigger")
            .parse()
            .unwrap_or(RunTrigger::Manual),
        status: row
            .get::<String, _>("status")
            .parse()
            .unwrap_or(RunStatus::Failed),
        started_at: from_ms(row.get("started_at")),
        finished_at: row.get::<Option<i64>, _>("finished_at").map(from_ms),
        snapshot,
        deleted_snapshot_ids: row
            .get::<Option<String>, _>("deleted")
            .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default(),
        error: row.get("error"),
        step: row.get("step"),
        owner: row.get("owner"),
        scheduled_for: row.get::<Option<i64>, _>("scheduled_for").map(from_ms),
        snapshot_created_at: row
            .get::<Option<i64>, _>("snapshot_created_at")
            .map(from_ms),
    }
}

/// The history database. Cheap to clone (a pool).
#[derive(Debug, Clone)]
pub struct Database {
    pool: SqlitePool,
    path: PathBuf,
}

impl Database {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub async fn open(path: &Path) -> DbResult<Self> {
        Self::open_with(path, &[]).await
    }

    /// [`Database::open`] with extra per-connection pragmas (`cache_size`,
    /// `max_page_count`, ...).
    pub async fn open_with(path: &Path, pragmas: &[(&'static str, String)]) -> DbResult<Self> {
        let err = |what: &str, e: anyhow::Error| DbError {
            path: path.to_path_buf(),
            what: what.to_string(),
            source: e,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| err("cannot create its directory", e.into()))?;
        }
        if !path.exists() {
            // Created 0600 here (SQLite would use the umask); another opener may win the race.
            use std::os::unix::fs::OpenOptionsExt;
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            match created {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err("cannot create the file", e.into())),
            }
        }
        // Two agents opening a new database at once (the daemon and `run-once`) would race
        // to switch it to WAL (which does not wait for locks) and to create the tables
        // (sqlx's migrator takes no lock across processes for SQLite). An advisory lock
        // on a sidecar file makes the second opener wait for the first.
        let lock_path = path.with_extension("db.lock");
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| err("cannot take its open lock", e.into()))?
        .map_err(|e| err("cannot take its open lock", e.into()))?;
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let opts = pragmas
            .iter()
            .fold(opts, |o, (k, v)| o.pragma(*k, v.clone()));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| err("cannot open", e.into()))?;
        let migrated = sqlx::migrate!("./migrations").run(&pool).await;
        drop(lock);
        migrated.map_err(|e| err("cannot migrate (is it an agent database?)", e.into()))?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> DbError + '_ {
        let what = what.into();
        move |e| DbError {
            path: self.path.clone(),
            what,
            source: e.into(),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- runs ----

    pub async fn start_run(&self, run: NewRun<'_>, owner: &Owner) -> DbResult<i64> {
        let id = sqlx::query(
            "INSERT INTO runs (job, server_id, kind, trigger, status, scheduled_for, started_at, owner) \
             VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
        )
        .bind(run.job)
        .bind(run.server_id as i64)
        .bind(run.kind.as_str())
        .bind(run.trigger.as_str())
        .bind(run.scheduled_for.map(ms))
        .bind(ms(run.started_at))
        .bind(owner.as_str())
        .execute(&self.pool)
        .await
        .map_err(self.err(format!("cannot record the start of a run of {}", run.job)))?
        .last_insert_rowid();
        Ok(id)
    }

    pub async fn set_step(&self, run_id: i64, step: &str) -> DbResult<()> {
        sqlx::query("UPDATE runs SET step = ? WHERE id = ?")
            .bind(step)
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(self.err(format!("cannot record step {step} of run {run_id}")))?;
        Ok(())
    }

    /// Records the name before the create request goes out (so a crash can look for it).
    pub async fn set_planned_snapshot(&self, run_id: i64, name: &str) -> DbResult<()> {
        sqlx::query("UPDATE runs SET snapshot_name = ?, step = 'create' WHERE id = ?")
            .bind(name)
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(self.err(format!("cannot record the snapshot name of run {run_id}")))?;
        Ok(())
    }

    pub async fn set_snapshot(
        &self,
        run_id: i64,
        id: u64,
        status: &str,
        created_at: DateTime<Utc>,
        completed_at: Option<DateTime<Utc>>,
    ) -> DbResult<()> {
        sqlx::query(
            "UPDATE runs SET snapshot_id = ?, snapshot_status = ?, \
             snapshot_created_at = COALESCE(snapshot_created_at, ?), snapshot_completed_at = ? WHERE id = ?",
        )
        .bind(id as i64)
        .bind(status)
        .bind(ms(created_at))
        .bind(completed_at.map(ms))
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(self.err(format!("cannot record the snapshot of run {run_id}")))?;
        Ok(())
    }

    pub async fn record_action(
        &self,
        run_id: i64,
        action: &str,
        snapshot_id: Option<u64>,
        outcome: &str,
        detail: Option<&str>,
        at: DateTime<Utc>,
    ) -> DbResult<()> {
        sqlx::query("INSERT INTO actions (run_id, at, action, snapshot_id, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(run_id)
            .bind(ms(at))
            .bind(action)
            .bind(snapshot_id.map(|i| i as i64))
            .bind(outcome)
            .bind(detail)
            .execute(&self.pool)
            .await
            .map_err(self.err(format!("cannot record a {action} action of run {run_id}")))?;
        Ok(())
    }

    /// Ends a run and queues its alerts in one transaction: a failure recorded is a
    /// failure alerted (unless throttled, which the alert module decides).
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run(
        &self,
        run_id: i64,
        status: RunStatus,
        error: Option<&str>,
        step: Option<&str>,
        finished_at: DateTime<Utc>,
        alerts: &[NewAlert],
    ) -> DbResult<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.err("cannot begin a transaction"))?;
        // The step reached: `done` for a success, else the step it stopped at.
        let step = if status == RunStatus::Succeeded {
            Some("done")
        } else {
            step
        };
        sqlx::query("UPDATE runs SET status = ?, error = ?, finished_at = ?, step = COALESCE(?, step) WHERE id = ?")
            .bind(status.as_str())
            .bind(error)
            .bind(ms(finished_at))
            .bind(step)
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(self.err(format!("cannot record the end of run {run_id}")))?;
        for a in alerts {
            alerts::insert(&mut tx, a)
                .await
                .map_err(self.err("cannot queue an alert"))?;
        }
        tx.commit()
            .await
            .map_err(self.err(format!("cannot commit the end of run {run_id}")))?;
        Ok(())
    }

    pub async fn run(&self, run_id: i64) -> DbResult<Option<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("cannot read a run"))?;
        Ok(row.as_ref().map(run_from_row))
    }

    /// Newest first.
    pub async fn history(&self, job: Option<&str>, limit: u32) -> DbResult<Vec<Run>> {
        let sql = match job {
            Some(_) => {
                format!("SELECT {RUN_COLUMNS} FROM runs WHERE job = ? ORDER BY id DESC LIMIT ?")
            }
            None => format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?"),
        };
        let mut q = sqlx::query(AssertSqlSafe(sql));
        if let Some(j) = job {
            q = q.bind(j);
        }
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("cannot read the history"))?;
        Ok(rows.iter().map(run_from_row).collect())
    }

    pub async fn running(&self) -> DbResult<Vec<Run>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY id");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("cannot read running runs"))?;
        Ok(rows.iter().map(run_from_row).collect())
    }

    /// Whether any run of `job` started at or after `t`.
    pub async fn has_run_since(&self, job: &str, t: DateTime<Utc>) -> DbResult<bool> {
        let row = sqlx::query("SELECT 1 FROM runs WHERE job = ? AND started_at >= ? LIMIT 1")
            .bind(job)
            .bind(ms(t))
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("cannot read the history"))?;
        Ok(row.is_some())
    }

    pub async fn last_run(&self, job: &str) -> DbResult<Option<Run>> {
        Ok(self.history(Some(job), 1).await?.pop())
    }

    /// The last finished snapshot run of `job` before run `before` (any status but running).
    pub async fn previous_finished(&self, job: &str, before: i64) -> DbResult<Option<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job = ? AND id < ? AND kind = 'snapshot' \
             AND status IN ('succeeded', 'failed') ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(job)
            .bind(before)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("cannot read the previous run"))?;
        Ok(row.as_ref().map(run_from_row))
    }

    pub async fn last_success(&self, job: &str) -> DbResult<Option<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE job = ? AND status = 'succeeded' AND kind = 'snapshot' \
             ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.err("cannot read the last success"))?;
        Ok(row.as_ref().map(run_from_row))
    }

    /// How long the job's recent snapshots took from create to completed, newest first.
    pub async fn snapshot_durations(&self, job: &str, limit: u32) -> DbResult<Vec<Duration>> {
        let rows = sqlx::query(
            "SELECT snapshot_completed_at - snapshot_created_at AS d FROM runs \
             WHERE job = ? AND status = 'succeeded' AND snapshot_completed_at IS NOT NULL \
             AND snapshot_created_at IS NOT NULL ORDER BY id DESC LIMIT ?",
        )
        .bind(job)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("cannot read snapshot durations"))?;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<Option<i64>, _>("d"))
            .map(|d| Duration::from_millis(d.max(0) as u64))
            .collect())
    }

    /// Snapshot ids the agent has seen completed for `job` and not deleted itself.
    pub async fn known_snapshots(&self, job: &str, limit: u32) -> DbResult<Vec<(u64, String)>> {
        let rows = sqlx::query(
            "SELECT snapshot_id, snapshot_name FROM runs r WHERE job = ? AND status = 'succeeded' \
             AND snapshot_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.action = 'delete' \
             AND a.outcome IN ('ok', 'skipped') AND a.snapshot_id = r.snapshot_id) ORDER BY id DESC LIMIT ?",
        )
        .bind(job)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(self.err("cannot read known snapshots"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<i64, _>("snapshot_id") as u64,
                    r.get("snapshot_name"),
                )
            })
            .collect())
    }

    // ---- pins ----

    pub async fn pin(&self, snapshot_id: u64, at: DateTime<Utc>) -> DbResult<bool> {
        let n = sqlx::query("INSERT OR IGNORE INTO pins (snapshot_id, pinned_at) VALUES (?, ?)")
            .bind(snapshot_id as i64)
            .bind(ms(at))
            .execute(&self.pool)
            .await
            .map_err(self.err("cannot pin"))?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn unpin(&self, snapshot_id: u64) -> DbResult<bool> {
        let n = sqlx::query("DELETE FROM pins WHERE snapshot_id = ?")
            .bind(snapshot_id as i64)
            .execute(&self.pool)
            .await
            .map_err(self.err("cannot unpin"))?
            .rows_affected();
        Ok(n == 1)
    }

    pub async fn pins(&self) -> DbResult<std::collections::HashSet<u64>> {
        let rows = sqlx::query("SELECT snapshot_id FROM pins")
            .fetch_all(&self.pool)
            .await
            .map_err(self.err("cannot read pins"))?;
        Ok(rows.iter().map(|r| r.get::<i64, _>(0) as u64).collect())
    }

    pub(crate) async fn begin(&self) -> DbResult<Transaction<'static, Sqlite>> {
        self.pool
            .begin()
            .await
            .map_err(self.err("cannot begin a transaction"))
    }
}
