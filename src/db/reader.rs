//! This process's readers of a SQLite database: a few tasks, each keeping a connection
//! while reads keep coming, that run every read outside a transaction.
//!
//! A read straight on the pool takes a connection and hands it back, and sqlx tests
//! every connection handed back with a round trip to it (to SQLite's connection thread):
//! a second hop for every read, and a task spawned to make it. Measured on a `run-once`
//! of 1,000 jobs: 39 µs of CPU per read through the pool, 15 µs on a kept connection
//! (README, Benchmarks). A read handed to a reader runs on the connection the reader
//! keeps ([`Held`]), to its end even if its caller stops waiting, so the connection is
//! never left in the middle of a statement. Not on PostgreSQL (see `sql::Pool`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Database, Executor, IntoArguments, Pool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::held::{HOLD, Held};

/// What a read asks back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetch {
    /// Every row.
    All,
    /// The first row, if any (the statement stops there).
    First,
}

/// A read waiting for a reader.
struct Read<DB: Database> {
    sql: String,
    args: DB::Arguments,
    fetch: Fetch,
    answer: oneshot::Sender<sqlx::Result<Vec<DB::Row>>>,
}

/// The readers of a database in this process: the queue their tasks share. Cheap to
/// clone; the tasks end when the last clone is dropped.
#[derive(Debug)]
pub(crate) struct Reader<DB: Database> {
    queue: mpsc::UnboundedSender<Read<DB>>,
}

impl<DB: Database> Clone for Reader<DB> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<DB> Reader<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Send + 'static,
{
    /// `readers` tasks reading `pool`, started on this runtime. They keep at most
    /// `readers` of its connections (the rest stay free for the writer and for
    /// transactions), each for [`HOLD`] after its last read.
    pub(crate) fn start(pool: &Pool<DB>, readers: usize) -> Self {
        Self::holding(pool, readers, HOLD)
    }

    /// [`Reader::start`], each connection kept `hold` after its last read.
    fn holding(pool: &Pool<DB>, readers: usize, hold: Duration) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..readers.max(1) {
            tokio::spawn(serve(pool.clone(), hold, waiting.clone()));
        }
        Self { queue }
    }

    /// Runs `sql` with `args`: its rows (at most one for [`Fetch::First`]).
    pub(crate) async fn read(
        &self,
        pool: &Pool<DB>,
        sql: String,
        args: DB::Arguments,
        fetch: Fetch,
    ) -> sqlx::Result<Vec<DB::Row>> {
        let (answer, answered) = oneshot::channel();
        let read = Read {
            sql,
            args,
            fetch,
            answer,
        };
        match self.queue.send(read) {
            Ok(()) => answered.await.unwrap_or(Err(sqlx::Error::WorkerCrashed)),
            // The tasks are gone with the runtime that started them: straight on the pool.
            Err(mpsc::error::SendError(r)) => {
                // Boxed as `Send`, as the writer's lone write (rust-lang/rust#102211).
                let alone: std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>> = Box::pin(
                    async move { fetched(pool, AssertSqlSafe(r.sql), r.args, r.fetch).await },
                );
                alone.await
            }
        }
    }
}

/// A reader task: takes the next read, runs it on the connection it keeps.
async fn serve<DB>(
    pool: Pool<DB>,
    hold: Duration,
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<Read<DB>>>>,
) where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Send + 'static,
{
    let mut held = Held::new(pool);
    loop {
        let next = async { waiting.lock().await.recv().await };
        let Some(read) = held.idle_until(hold, next).await else {
            break;
        };
        // A caller that stopped waiting (cancelled) is not read for.
        if read.answer.is_closed() {
            continue;
        }
        let r = match held.conn().await {
            Ok(conn) => fetched(conn, AssertSqlSafe(read.sql), read.args, read.fetch).await,
            Err(e) => Err(e),
        };
        let _ = read.answer.send(held.after(r));
    }
}

/// The rows of `sql` with `args` on `on` (at most one for [`Fetch::First`]), not decoded.
pub(crate) async fn fetched<'e, DB, E>(
    on: E,
    sql: AssertSqlSafe<String>,
    args: DB::Arguments,
    fetch: Fetch,
) -> sqlx::Result<Vec<DB::Row>>
where
    DB: Database,
    E: Executor<'e, Database = DB>,
    DB::Arguments: IntoArguments<DB> + Send + 'static,
{
    let q = sqlx::query_with(sql, args);
    match fetch {
        Fetch::All => q.fetch_all(on).await,
        Fetch::First => q.fetch_optional(on).await.map(|r| r.into_iter().collect()),
    }
}

#[cfg(test)]
mod tests;
