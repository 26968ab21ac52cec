//! The history store: one SQLite file (WAL), or a PostgreSQL database shared by several
//! agents, migrated on open. Runs (`runs`) and their write-ahead journal (`journal`) are
//! written as they happen; pins, per-server locks, the agents' presence, and the alert and
//! ping outboxes live here too.

/// Gives an enum stored as text its name, for messages and tables.
macro_rules! names {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

mod agents;
mod alerts;
mod copy;
mod fires;
#[cfg(test)]
mod fixture;
mod held;
mod history;
mod journal;
mod locks;
mod made;
mod pings;
mod pins;
mod postgres;
mod reader;
mod runs;
mod sql;
mod unit;
mod writer;

pub use agents::{AgentRole, AgentRow, Leases};
pub use alerts::{NewAlert, OutboxCounts, PendingAlert};
pub use copy::Copied;
pub use fires::FireTaken;
pub use history::{HistoryQuery, JobSummary};
pub use journal::{Action, BEGUN, Entry, EntryId, Intent, State};
pub use made::JournalOf;

pub use pings::{NewPing, PendingPing, PingKind};
pub use postgres::{Location, split_password};
pub use runs::{Finish, NewRun, Run, RunKind, RunSnapshot, RunStatus, RunTrigger, Step};
pub use sql::Engine;
pub(crate) use sql::Tx;
pub(crate) use unit::{Did, Part};

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use sql::{On, Pool, Q};

use crate::timing::Timing;

/// The readers of a SQLite database (see `reader`): as many as the pool's connections
/// for reads before readers kept them.
const SQLITE_READERS: usize = 3;

/// A database problem, always naming the file. `detail` is the underlying error with
/// its causes as one scrubbed line, so the message is whole wherever it is printed;
/// `source` keeps that error itself, for a caller that asks what it was (an error chain
/// printed by [`crate::errors`] says it once).
#[derive(Debug, thiserror::Error)]
#[error("database {path}: {what}: {detail}")]
pub struct DbError {
    pub path: PathBuf,
    pub what: String,
    pub detail: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DbError {
    fn new(path: &Path, what: impl Into<String>, cause: impl Into<anyhow::Error>) -> Self {
        let cause = cause.into();
        Self {
            path: path.to_path_buf(),
            what: what.into(),
            detail: crate::errors::line(&cause),
            source: Some(cause.into()),
        }
    }
}

pub type DbResult<T> = Result<T, DbError>;

pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A time as the store keeps it (milliseconds since 1970), read back: a value that is no
/// time fails the read with an error naming its column, rather than becoming 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredTime(pub DateTime<Utc>);

impl<DB: sqlx::Database> sqlx::Type<DB> for StoredTime
where
    i64: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <i64 as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <i64 as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for StoredTime
where
    i64: sqlx::Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let v = <i64 as sqlx::Decode<'r, DB>>::decode(value)?;
        DateTime::from_timestamp_millis(v)
            .map(StoredTime)
            .ok_or_else(|| format!("{v} is not a time (milliseconds since 1970)").into())
    }
}

/// How [`Database::open_with`] opens.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Extra per-connection pragmas (`cache_size`, `max_page_count`, ...).
    pub pragmas: Vec<(&'static str, String)>,
    /// Names the connections' threads `LABEL-N` (default `agent-db`), as `top -H` shows
    /// them.
    pub label: Option<String>,
}

/// The history database: a SQLite file, or a PostgreSQL database several agents share.
/// Cheap to clone (a pool).
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    /// The file, or the URL without its password: what messages name.
    path: PathBuf,
    /// The leases and intervals of the agents on this database ([`Timing`]).
    timing: Timing,
}

impl<'a> From<&'a Database> for On<'a> {
    fn from(db: &'a Database) -> Self {
        On::Pool(&db.pool)
    }
}

/// Creates the file's directory and, unless it exists, the file itself, 0600 (SQLite
/// would use the umask); another opener may win the race to create it.
fn create_private(path: &Path) -> DbResult<()> {
    let err = |what: &str, e: anyhow::Error| DbError::new(path, what, e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err("cannot create its directory", e.into()))?;
    }
    if !path.exists() {
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
    Ok(())
}

/// Takes the advisory lock on the database's sidecar `.db.lock` file, held while it is
/// opened and migrated. Two agents opening a new database at once (the daemon and
/// `run-once`) would race to switch it to WAL (which does not wait for locks) and to
/// create the tables (sqlx's migrator takes no lock across processes for SQLite): the
/// lock makes the second opener wait for the first.
async fn open_lock(path: &Path) -> DbResult<std::fs::File> {
    let err = |what: &str, e: anyhow::Error| DbError::new(path, what, e);
    let lock_path = path.with_extension("db.lock");
    tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
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
    .map_err(|e| err("cannot take its open lock", e.into()))
}

/// How each connection to the SQLite file at `path` is set up: WAL, foreign keys, a
/// busy timeout, named threads, and the extra pragmas of `options`.
fn connect_options(path: &Path, options: &OpenOptions) -> SqliteConnectOptions {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
        .row_buffer_size(1024);
    let label = options.label.clone().unwrap_or_else(|| "agent-db".into());
    let opts = opts.thread_name(move |id| format!("{label}-{id}"));
    options
        .pragmas
        .iter()
        .fold(opts, |o, (k, v)| o.pragma(*k, v.clone()))
}

impl Database {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub async fn open(path: &Path) -> DbResult<Self> {
        Self::open_with(path, &OpenOptions::default()).await
    }

    /// [`Database::open`] with [`OpenOptions`].
    pub async fn open_with(path: &Path, options: &OpenOptions) -> DbResult<Self> {
        let err = |what: &str, e: anyhow::Error| DbError::new(path, what, e);
        create_private(path)?;
        let lock = open_lock(path).await?;
        let opts = connect_options(path, options);
        let pool = SqlitePoolOptions::new()
            // The writer's, three readers', and one for a transaction (which holds the
            // process's turn to write: one at a time).
            .max_connections(2 + SQLITE_READERS as u32)
            // A connection to a local file needs no round trip to test it before each
            // use; sqlx still tests each one handed back.
            .test_before_acquire(false)
            // A failed COMMIT (a full disk) makes SQLite roll back by itself, so the ROLLBACK
            // sqlx sends when the transaction is dropped fails and sqlx still counts the
            // connection as inside one; every later `BEGIN IMMEDIATE` on it would be refused.
            // A connection released still counting one may only have its ROLLBACK queued:
            // the ping waits for it (only then, not on every release); one still counting a
            // transaction after it is closed, not reused.
            .after_release(|conn, _| {
                Box::pin(async move {
                    if conn.is_in_transaction() {
                        conn.ping().await?;
                    }
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| err("cannot open", e.into()))?;
        let migrated = sqlx::migrate!("./migrations/sqlite").run(&pool).await;
        drop(lock);
        migrated.map_err(|e| err("cannot migrate (is it an agent database?)", e.into()))?;
        Ok(Self {
            pool: Pool::Sqlite(
                pool.clone(),
                writer::Writer::start(&pool),
                reader::Reader::start(&pool, SQLITE_READERS),
            ),
            path: path.to_path_buf(),
            timing: Timing::default(),
        })
    }

    /// The same database, its agents on `timing` (shorter leases, in tests).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The leases and intervals the agents on this database keep to.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The file, or the PostgreSQL URL without its password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn engine(&self) -> Engine {
        self.pool.engine()
    }

    /// The SQLite pool, for tools and tests that read the file directly.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(p, ..) => Some(p),
            Pool::Postgres(..) => None,
        }
    }

    /// The PostgreSQL pool, for tools and tests that read the tables directly.
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.pool {
            Pool::Sqlite(..) => None,
            Pool::Postgres(p, ..) => Some(p),
        }
    }

    /// A statement on this database (placeholders `$1`, `$2`, …: see [`sql`]).
    pub(crate) fn q(&self, sql: &str) -> Q {
        Q::new(self.engine(), sql)
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> DbError + '_ {
        let what = what.into();
        move |e| DbError::new(&self.path, what, e)
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p, ..) => p.close().await,
            Pool::Postgres(p, ..) => p.close().await,
        }
    }

    /// Writes `parts` in order, each while the one before it that says so
    /// ([`Part::or_stop`]) changed a row, all kept or none; committed when this returns,
    /// by this process's writer, with the other writes waiting at the same moment (see
    /// `writer`). What each statement run did.
    pub(crate) async fn write_all(&self, what: &str, parts: Vec<Part>) -> DbResult<Vec<Did>> {
        unit::on_writer(&self.pool, parts)
            .await
            .map_err(self.err(what))
    }

    /// A write transaction, holding the database's write lock from its start, so that
    /// the transactions of all agents on the database run one after another.
    ///
    /// On SQLite, `BEGIN IMMEDIATE`: a deferred transaction that reads first fails at its
    /// first write if another connection wrote meanwhile (SQLITE_BUSY_SNAPSHOT, which the
    /// busy timeout cannot wait out), while this one waits its turn. On PostgreSQL, a
    /// transaction-scoped advisory lock does the same: every read-check-write the agent
    /// does (a fire claim, a lock takeover, a resumption) sees the last writer's commit,
    /// as on SQLite, and the server frees the lock when the transaction or its
    /// connection ends.
    pub(crate) async fn begin(&self) -> DbResult<Tx> {
        let err = self.err("cannot begin a transaction");
        let tx = match &self.pool {
            Pool::Sqlite(p, writer, _) => {
                // This process's turn first, then a connection: writers waiting their turn
                // hold none of the pool's connections, which stay free for readers.
                let turn = writer.turn(writer::WRITER_PATIENCE).await;
                p.begin_with("BEGIN IMMEDIATE")
                    .await
                    .map(|t| Tx::Sqlite(t, turn))
            }
            Pool::Postgres(p, ..) => match p.begin().await {
                Ok(mut tx) => writer::hold_postgres_writes(&mut tx)
                    .await
                    .map(|()| Tx::Postgres(tx)),
                Err(e) => Err(e),
            },
        };
        tx.map_err(err)
    }
}
