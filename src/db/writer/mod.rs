//! The one writer of the database in this process, and its group commit.
//!
//! SQLite lets one connection write at a time. Without a turn taken here, the pool's
//! other connections that want to write wait in SQLite's busy handler, which sleeps and
//! polls (1 ms, 2 ms, 5 ms, … up to the busy timeout); with it, this process's writers
//! queue here and each starts the moment the last one is done, and the busy handler is
//! left to arbitrate between processes only. On PostgreSQL the schema's advisory lock
//! ([`Store::hold_writes`]) is that turn, between the agents too.
//!
//! A write — one statement outside a transaction (most of the journal), or a unit of a
//! few that must be kept together (an intent and its run's summary, a run's end with its
//! alerts) — is handed to the writer task, which commits every write waiting at that
//! moment in one transaction: one commit instead of one each, and the turn (or the
//! advisory lock) taken once. The caller's answer comes only after that commit, so an
//! intent is on disk before its request leaves, as when it committed on its own. A
//! group that fails is never half kept: a write that fails is rolled back with the
//! rest, answered with its own error, and the others are written again without it; a
//! group that cannot begin is written one by one, each getting its own answer; a
//! commit that fails fails them all.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{
    AssertSqlSafe, Connection, Database, Executor, IntoArguments, Pool, Postgres, Sqlite,
    Transaction,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::held::{HOLD, Held};

/// What the writer needs of an engine: a transaction that holds the database's write
/// lock from its start.
pub(crate) trait Store: Database
where
    for<'c> &'c mut Self::Connection: Executor<'c, Database = Self>,
    for<'p> &'p Pool<Self>: Executor<'p, Database = Self>,
    Self::Arguments: IntoArguments<Self> + Clone + Send + Sync + 'static,
{
    /// The statement that begins a write transaction, if not the engine's plain `BEGIN`.
    const BEGIN: Option<&'static str>;

    /// Whether one statement committing by itself holds the write lock throughout, and
    /// so needs no transaction of its own.
    const STATEMENT_HOLDS_THE_LOCK: bool;

    /// Takes the write lock in `tx`, if its `BEGIN` did not.
    fn hold_writes(tx: &mut Self::Connection) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// The rows a statement changed.
    fn changed(r: &Self::QueryResult) -> u64;
}

impl Store for Sqlite {
    /// `BEGIN IMMEDIATE` takes the write lock at once (see `Database::begin`).
    const BEGIN: Option<&'static str> = Some("BEGIN IMMEDIATE");

    /// One writer at a time, the whole statement long.
    const STATEMENT_HOLDS_THE_LOCK: bool = true;

    async fn hold_writes(_: &mut sqlx::SqliteConnection) -> sqlx::Result<()> {
        Ok(())
    }

    fn changed(r: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        r.rows_affected()
    }
}

impl Store for Postgres {
    const BEGIN: Option<&'static str> = None;

    /// No: under READ COMMITTED a fenced insert alone reads a run's owner as last
    /// committed, while another agent's takeover of the run may be committing.
    const STATEMENT_HOLDS_THE_LOCK: bool = false;

    async fn hold_writes(tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        hold_postgres_writes(tx).await
    }

    fn changed(r: &sqlx::postgres::PgQueryResult) -> u64 {
        r.rows_affected()
    }
}

/// This schema's write lock on PostgreSQL, for the transaction `tx`: a
/// transaction-scoped advisory lock (see `Database::begin`).
pub(crate) async fn hold_postgres_writes(tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('vps-snapshot-agent ' || current_schema(), 0))",
    )
    .execute(tx)
    .await
    .map(drop)
}

/// A transaction on `conn` that holds the database's write lock.
async fn begin_writing<DB>(conn: &mut DB::Connection) -> sqlx::Result<Transaction<'_, DB>>
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    let mut tx = match DB::BEGIN {
        Some(begin) => conn.begin_with(begin).await?,
        None => conn.begin().await?,
    };
    DB::hold_writes(&mut tx).await?;
    Ok(tx)
}

/// How long a writer waits for its turn in the process before going ahead anyway: the
/// busy timeout SQLite is opened with.
pub(crate) const WRITER_PATIENCE: Duration = Duration::from_secs(10);

/// The most writes one commit takes (the rest wait for the next one).
const MOST_IN_A_GROUP: usize = 256;

/// The writer of a database in this process: its turn, and the queue of its
/// group-commit task. Cheap to clone.
#[derive(Debug)]
pub(crate) struct Writer<DB: Database> {
    turn: Arc<Semaphore>,
    queue: mpsc::UnboundedSender<Write<DB>>,
}

impl<DB: Database> Clone for Writer<DB> {
    fn clone(&self) -> Self {
        Self {
            turn: self.turn.clone(),
            queue: self.queue.clone(),
        }
    }
}

/// What a statement asks back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The number of rows it changed.
    Count,
    /// The rows it returned (`RETURNING`).
    Rows,
}

/// What a statement gave back.
pub(crate) enum Written<DB: Database> {
    Count(u64),
    Rows(Vec<DB::Row>),
}

impl<DB: Database> Written<DB> {
    /// How many rows it changed (or returned).
    pub(crate) fn changed(&self) -> u64 {
        match self {
            Written::Count(n) => *n,
            Written::Rows(rows) => rows.len() as u64,
        }
    }
}

/// One statement of a write, ready for its engine.
pub(crate) struct Statement<DB: Database> {
    pub(crate) sql: String,
    pub(crate) args: DB::Arguments,
    pub(crate) want: Want,
    /// When it changes no row, the statements after it are not run.
    pub(crate) or_stop: bool,
}

/// A write waiting for the writer: its statements, kept together.
struct Write<DB: Database> {
    unit: Vec<Statement<DB>>,
    answer: oneshot::Sender<sqlx::Result<Vec<Written<DB>>>>,
}

impl<DB> Writer<DB>
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    /// The writer of `pool`, its task started on this runtime; the task ends when the
    /// last clone of the writer is dropped.
    pub(crate) fn start(pool: &Pool<DB>) -> Self {
        Self::holding(pool, HOLD)
    }

    /// [`Writer::start`], its connection kept `hold` after its last write.
    fn holding(pool: &Pool<DB>, hold: Duration) -> Self {
        let turn = Arc::new(Semaphore::new(1));
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(serve(pool.clone(), hold, turn.clone(), waiting));
        Self { turn, queue }
    }

    /// This process's turn to write. `None` when it did not come within `patience` (a
    /// writer that waits on itself, or a stuck one): the statement then goes ahead and
    /// SQLite's busy timeout decides, as it would without the turn.
    pub(crate) async fn turn(&self, patience: Duration) -> Option<OwnedSemaphorePermit> {
        turn_of(&self.turn, patience).await
    }

    /// Writes `unit`'s statements in order, each while the one before it that says so
    /// changed a row, kept together; committed when this returns (with the other writes
    /// waiting at the same moment, in one commit). What each statement run gave back.
    pub(crate) async fn write(
        &self,
        pool: &Pool<DB>,
        unit: Vec<Statement<DB>>,
    ) -> sqlx::Result<Vec<Written<DB>>> {
        let (answer, answered) = oneshot::channel();
        let write = Write { unit, answer };
        match self.queue.send(write) {
            Ok(()) => answered.await.unwrap_or(Err(sqlx::Error::WorkerCrashed)),
            // The task is gone with the runtime that started it: the write goes alone.
            Err(mpsc::error::SendError(w)) => {
                let _turn = self.turn(WRITER_PATIENCE).await;
                // Boxed as `Send`: unboxed, rustc cannot prove the callers' futures `Send`
                // through this one's higher-ranked bounds (rust-lang/rust#102211).
                let alone: std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>> =
                    Box::pin(async move { alone(&mut Held::new(pool.clone()), &w).await });
                alone.await
            }
        }
    }
}

async fn turn_of(turn: &Arc<Semaphore>, patience: Duration) -> Option<OwnedSemaphorePermit> {
    tokio::time::timeout(patience, turn.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
}

/// The writer task: waits for a write, takes the turn, and commits it with every other
/// one waiting by then, on the connection it holds.
async fn serve<DB>(
    pool: Pool<DB>,
    hold: Duration,
    turn: Arc<Semaphore>,
    mut queue: mpsc::UnboundedReceiver<Write<DB>>,
) where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    let mut held = Held::new(pool);
    let mut group = Vec::new();
    loop {
        let Some(first) = held.idle_until(hold, queue.recv()).await else {
            break;
        };
        group.push(first);
        let _turn = turn_of(&turn, WRITER_PATIENCE).await;
        while group.len() < MOST_IN_A_GROUP {
            match queue.try_recv() {
                Ok(w) => group.push(w),
                Err(_) => break,
            }
        }
        commit(&mut held, &mut group).await;
        group.clear();
    }
}

/// How a group's transaction failed.
enum Failed {
    /// Before any statement ran.
    Begin,
    /// The statement at this place in the group.
    Statement(usize, sqlx::Error),
    /// At the commit: none of it was kept.
    Commit(sqlx::Error),
}

/// Writes `group` and answers each of its writes.
async fn commit<DB>(held: &mut Held<DB>, group: &mut Vec<Write<DB>>)
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    // A caller that stopped waiting (cancelled) is not written for.
    group.retain(|w| !w.answer.is_closed());
    loop {
        if group.len() <= 1 {
            for w in group.drain(..) {
                let r = alone(held, &w).await;
                let _ = w.answer.send(r);
            }
            return;
        }
        match together(held, group).await {
            Ok(written) => {
                for (w, r) in group.drain(..).zip(written) {
                    let _ = w.answer.send(Ok(r));
                }
                return;
            }
            Err(Failed::Statement(at, e)) => {
                // Rolled back with the rest; the others go again without it.
                let w = group.remove(at);
                let _ = w.answer.send(Err(e));
            }
            Err(Failed::Begin) => {
                for w in group.drain(..) {
                    let r = alone(held, &w).await;
                    let _ = w.answer.send(r);
                }
                return;
            }
            Err(Failed::Commit(e)) => {
                let text = e.to_string();
                let mut first = Some(e);
                for w in group.drain(..) {
                    let e = first.take().unwrap_or_else(|| {
                        sqlx::Error::InvalidArgument(format!(
                            "the commit of this write with others failed: {text}"
                        ))
                    });
                    let _ = w.answer.send(Err(e));
                }
                return;
            }
        }
    }
}

/// The group's writes in one transaction, what each gave back.
async fn together<DB>(
    held: &mut Held<DB>,
    group: &[Write<DB>],
) -> Result<Vec<Vec<Written<DB>>>, Failed>
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    let r = match held.conn().await {
        Ok(conn) => together_on(conn, group).await,
        Err(_) => Err(Failed::Begin),
    };
    held.after(r)
}

async fn together_on<DB>(
    conn: &mut DB::Connection,
    group: &[Write<DB>],
) -> Result<Vec<Vec<Written<DB>>>, Failed>
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    let mut tx = begin_writing(conn).await.map_err(|_| Failed::Begin)?;
    let mut written = Vec::with_capacity(group.len());
    for (i, w) in group.iter().enumerate() {
        match unit(&mut tx, &w.unit).await {
            Ok(r) => written.push(r),
            // Dropping the transaction rolls it back.
            Err(e) => return Err(Failed::Statement(i, e)),
        }
    }
    tx.commit().await.map_err(Failed::Commit)?;
    Ok(written)
}

/// One write on its own: on SQLite a lone statement commits by itself; a unit, or any
/// write on PostgreSQL, in a transaction holding the write lock.
async fn alone<DB>(held: &mut Held<DB>, w: &Write<DB>) -> sqlx::Result<Vec<Written<DB>>>
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    let r = match held.conn().await {
        Ok(conn) => alone_on(conn, w).await,
        Err(e) => Err(e),
    };
    held.after(r)
}

async fn alone_on<DB>(conn: &mut DB::Connection, w: &Write<DB>) -> sqlx::Result<Vec<Written<DB>>>
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    if let [s] = w.unit.as_slice()
        && DB::STATEMENT_HOLDS_THE_LOCK
    {
        return Ok(vec![run(&mut *conn, s).await?]);
    }
    let mut tx = begin_writing(conn).await?;
    let written = unit(&mut tx, &w.unit).await?;
    tx.commit().await?;
    Ok(written)
}

/// A write's statements in order on one connection, until one that says so changes no
/// row.
async fn unit<DB>(
    conn: &mut DB::Connection,
    statements: &[Statement<DB>],
) -> sqlx::Result<Vec<Written<DB>>>
where
    DB: Store,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    let mut written = Vec::with_capacity(statements.len());
    for s in statements {
        let w = run(&mut *conn, s).await?;
        let stop = s.or_stop && w.changed() == 0;
        written.push(w);
        if stop {
            break;
        }
    }
    Ok(written)
}

async fn run<'e, DB, E>(on: E, s: &Statement<DB>) -> sqlx::Result<Written<DB>>
where
    DB: Store,
    E: Executor<'e, Database = DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Clone + Send + Sync + 'static,
{
    let q = sqlx::query_with(AssertSqlSafe(s.sql.clone()), s.args.clone());
    match s.want {
        Want::Count => q.execute(on).await.map(|r| Written::Count(DB::changed(&r))),
        Want::Rows => q.fetch_all(on).await.map(Written::Rows),
    }
}

#[cfg(test)]
mod tests;
