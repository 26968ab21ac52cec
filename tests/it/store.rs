//! The two stores the job-run, daemon and alert tests run on: a SQLite file (always) and
//! a PostgreSQL schema (when `AGENT_TEST_POSTGRES_URL` names a database; `scripts/test-postgres`
//! starts one). A test body opens its database with [`open`]; `on_postgres` runs the
//! same bodies with this thread switched to PostgreSQL.

use std::cell::RefCell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use vps_snapshot_agent::db::{Database, Location};

pub const POSTGRES_URL: &str = "AGENT_TEST_POSTGRES_URL";

thread_local! {
    /// `Some(url)` while this thread's test runs on PostgreSQL; the schemas it made.
    static POSTGRES: RefCell<Option<(String, Vec<String>)>> = const { RefCell::new(None) };
}

/// The database at `path`: the SQLite file, or, on PostgreSQL, a schema of its own
/// named after the path (the same path opens the same schema again).
pub async fn open(path: &Path) -> Database {
    Database::open_at(&location(path).await).await.unwrap()
}

/// Where [`open`] puts the database at `path`, made ready (its schema exists).
pub async fn location(path: &Path) -> Location {
    match postgres_url(path).await {
        Some(url) => {
            let (url, password) = vps_snapshot_agent::db::split_password(&url).unwrap();
            Location::Postgres { url, password }
        }
        None => Location::File(path.to_path_buf()),
    }
}

/// On PostgreSQL, the URL (with its password) of the schema for `path`, made if new.
pub async fn postgres_url(path: &Path) -> Option<String> {
    let url = POSTGRES.with(|p| p.borrow().as_ref().map(|(u, _)| u.clone()))?;
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    let schema = format!("t_{:016x}", h.finish());
    admin(&url, &format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await;
    POSTGRES.with(|p| {
        if let Some((_, made)) = p.borrow_mut().as_mut()
            && !made.contains(&schema)
        {
            made.push(schema.clone());
        }
    });
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}

/// Points the config file `cfg` at the store for `path` (its `database` line becomes the
/// PostgreSQL URL on PostgreSQL) and opens it.
pub async fn configure(cfg: &Path, path: &Path) -> Database {
    if let Some(url) = postgres_url(path).await {
        let text = std::fs::read_to_string(cfg).unwrap();
        let text: String = text
            .lines()
            .map(|l| match l.starts_with("database = ") {
                true => format!("database = \"{url}\"\n"),
                false => format!("{l}\n"),
            })
            .collect();
        std::fs::write(cfg, text).unwrap();
    }
    open(path).await
}

/// Runs `test` (a `#[tokio::test]` body) on PostgreSQL, then drops the schemas it made.
/// Without `AGENT_TEST_POSTGRES_URL`, skips it, counted ([`crate::needs`]).
pub fn run_on_postgres(test: fn()) {
    let Ok(url) = std::env::var(POSTGRES_URL) else {
        crate::needs::missing(crate::needs::Need::Postgres);
        return;
    };
    POSTGRES.with(|p| *p.borrow_mut() = Some((url.clone(), Vec::new())));
    let outcome = std::panic::catch_unwind(test);
    let made = POSTGRES.with(|p| p.borrow_mut().take().map(|(_, m)| m).unwrap_or_default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for schema in made {
            admin(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
        }
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `sql` (making or dropping a schema) on the test database at `url`; without TLS,
/// which on loopback only costs each connection a handshake.
pub async fn admin(url: &str, sql: &str) {
    let sep = if url.contains('?') { '&' } else { '?' };
    let pool = sqlx::PgPool::connect(&format!("{url}{sep}sslmode=disable"))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// A transaction on `pool` holding the schema's write lock, the advisory lock every
/// write of the agent takes first: the agent's writes wait until it ends.
pub async fn hold_postgres_writes(
    pool: &sqlx::PgPool,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('vps-snapshot-agent ' || current_schema(), 0))",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// Tests of other modules, run again on PostgreSQL: `module::test, …`.
macro_rules! on_postgres {
    ($($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::store::run_on_postgres(crate::$module::$test);
            }
        )*
    };
}
pub(crate) use on_postgres;

/// A statement of the harness's own on either engine: `raw!(db, sqlx::query_as("…").bind(x),
/// fetch_all)` runs `sqlx::query_as("…").bind(x).fetch_all(pool)` on the database's pool,
/// SQLite's or PostgreSQL's (placeholders `$1`, `$2`…, which both read); `execute` gives
/// `Result<(), _>`.
macro_rules! raw {
    ($db:expr, $query:expr, execute) => {
        match ($db.sqlite_pool(), $db.postgres_pool()) {
            (Some(pool), _) => $query.execute(pool).await.map(|_| ()),
            (_, Some(pool)) => $query.execute(pool).await.map(|_| ()),
            (None, None) => unreachable!("a database is on one engine or the other"),
        }
    };
    ($db:expr, $query:expr, $fetch:ident) => {
        match ($db.sqlite_pool(), $db.postgres_pool()) {
            (Some(pool), _) => $query.$fetch(pool).await,
            (_, Some(pool)) => $query.$fetch(pool).await,
            (None, None) => unreachable!("a database is on one engine or the other"),
        }
    };
}
pub(crate) use raw;

/// The store writes its placeholders as `$1`, `$2`, … on both engines: each binds the
/// n-th value, whatever order they come in and however often one is used.
#[tokio::test]
pub(crate) async fn numbered_placeholders_bind_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("placeholders.db")).await;
    let row: (String, String, i64) = raw!(
        db,
        sqlx::query_as("SELECT CAST($2 AS TEXT) || '-' || CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS BIGINT) + 1")
            .bind("first")
            .bind("second")
            .bind(41_i64),
        fetch_one
    )
    .unwrap();
    assert_eq!(row, ("second-first".into(), "second".into(), 42));
    db.close().await;
}
