//! SQLite pools for the unit tests of the writer and the readers: a file in a temporary
//! directory with one table `t` (`x` never negative).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub(crate) async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
    pool_waiting(dir, Duration::from_secs(10)).await
}

pub(crate) async fn pool_waiting(dir: &tempfile::TempDir, busy: Duration) -> SqlitePool {
    pool_with(dir, busy, SqlitePoolOptions::new()).await
}

/// A pool that counts the connections handed back to it.
pub(crate) async fn counting_pool(dir: &tempfile::TempDir) -> (SqlitePool, Arc<AtomicUsize>) {
    let released = Arc::new(AtomicUsize::new(0));
    let count = released.clone();
    let options = SqlitePoolOptions::new().after_release(move |_, _| {
        count.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(true) })
    });
    (
        pool_with(dir, Duration::from_secs(10), options).await,
        released,
    )
}

async fn pool_with(
    dir: &tempfile::TempDir,
    busy: Duration,
    options: SqlitePoolOptions,
) -> SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(dir.path().join("w.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(busy);
    let pool = options.max_connections(4).connect_with(opts).await.unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER NOT NULL CHECK (x >= 0))")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

/// Once every connection of `p` is back in it: how many were handed back so far.
pub(crate) async fn settled(p: &SqlitePool, released: &AtomicUsize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while p.num_idle() < p.size() as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a connection never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    released.load(Ordering::SeqCst)
}
