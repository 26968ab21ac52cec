//! A connection kept by the writer or a reader between the statements it runs.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

/// How long the writer or a reader keeps its connection after its last statement.
pub(super) const HOLD: Duration = Duration::from_secs(5);

/// A connection kept from one statement (or group) to the next while they keep coming:
/// sqlx tests a connection handed back to its pool with a round trip to it, which would
/// otherwise cost every one of them one more. Given back after [`HOLD`] idle, when the
/// pool closes (which waits for every connection), and after any error (a connection a
/// failed commit left inside its transaction is then closed by the pool, not reused).
pub(super) struct Held<DB: Database> {
    pool: Pool<DB>,
    conn: Option<PoolConnection<DB>>,
}

impl<DB: Database> Held<DB> {
    pub(super) fn new(pool: Pool<DB>) -> Self {
        Self { pool, conn: None }
    }

    /// Whether a connection is held now.
    pub(super) fn holds(&self) -> bool {
        self.conn.is_some()
    }

    /// The connection, taken from the pool if none is held.
    pub(super) async fn conn(&mut self) -> sqlx::Result<&mut DB::Connection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(&mut **self.conn.insert(conn))
    }

    pub(super) fn release(&mut self) {
        self.conn = None;
    }

    /// `next`, awaited; meanwhile a connection held is given back after `hold` without
    /// it, or when the pool closes.
    pub(super) async fn idle_until<T>(
        &mut self,
        hold: Duration,
        next: impl Future<Output = T>,
    ) -> T {
        let mut next = std::pin::pin!(next);
        if self.holds() {
            tokio::select! {
                v = &mut next => return v,
                () = tokio::time::sleep(hold) => {}
                () = self.pool.close_event() => {}
            }
            self.release();
        }
        next.await
    }

    /// `r`, the connection given back first if it is an error.
    pub(super) fn after<T, E>(&mut self, r: Result<T, E>) -> Result<T, E> {
        if r.is_err() {
            self.release();
        }
        r
    }
}
