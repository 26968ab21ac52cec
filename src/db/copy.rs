//! `agent db copy`: a SQLite history moved into an empty PostgreSQL database, so that a
//! team that started on one box keeps its runs, journal, pins and outbox when it adds more.

use sqlx::sqlite::SqlitePool;
use sqlx::{AssertSqlSafe, Row as _};

use super::sql::Pool;
use super::{Database, DbError, DbResult, Engine};

/// The tables copied, in an order that satisfies their references. Left out: `locks` and
/// `agents`, which belong to the processes of the old box (the new agents record their
/// own). `alerts` comes before `channels`, so that its trigger fans nothing out: the
/// deliveries are copied as they stand. `job_state`, which triggers fill as runs go in,
/// is replaced by the copy's own last.
const TABLES: [&str; 9] = [
    "runs",
    "journal",
    "pins",
    "alerts",
    "channels",
    "deliveries",
    "pings",
    "fires",
    "job_state",
];

/// The tables whose `id` is an identity, moved on past the copied ids.
const IDENTITIES: [&str; 4] = ["runs", "journal", "alerts", "pings"];

/// Rows read and written at a time.
const PAGE: i64 = 2000;

/// What a copy moved: rows per table.
#[derive(Debug, Clone, Default)]
pub struct Copied(pub Vec<(&'static str, u64)>);

struct Column {
    name: String,
    integer: bool,
}

/// A table's columns, and the key columns it is paged by.
struct Table {
    columns: Vec<Column>,
    key: Vec<String>,
}

/// One column's value, as both engines store it.
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Database {
    /// Copies this SQLite history into `to`, an agent database on PostgreSQL holding no
    /// history yet, in one transaction there: all of it or nothing.
    pub async fn copy_to(&self, to: &Database) -> DbResult<Copied> {
        let from = match (&self.pool, to.engine()) {
            (Pool::Sqlite(p, ..), Engine::Postgres) => p,
            _ => {
                return Err(DbError::new(
                    &self.path,
                    "cannot copy",
                    anyhow::anyhow!("a copy goes from a SQLite file to PostgreSQL"),
                ));
            }
        };
        let what = "cannot copy the history";
        let (held,): (i64,) = to
            .q("SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM alerts)")
            .fetch_one(to)
            .await
            .map_err(to.err(what))?;
        if held > 0 {
            return Err(DbError::new(
                &to.path,
                what,
                anyhow::anyhow!(
                    "it already holds a history ({held} runs and alerts); copy into an empty database"
                ),
            ));
        }
        let mut tx = to.begin().await?;
        // Channels an agent recorded here already would fan the copied alerts out again.
        tx.q("DELETE FROM channels")
            .execute(&mut tx)
            .await
            .map_err(to.err(what))?;
        let mut copied = Copied::default();
        for table in TABLES {
            let columns = columns(from, table).await.map_err(self.err(what))?;
            if table == "job_state" {
                tx.q("DELETE FROM job_state")
                    .execute(&mut tx)
                    .await
                    .map_err(to.err(what))?;
            }
            let mut n = 0;
            loop {
                let rows = page(from, table, &columns, n)
                    .await
                    .map_err(self.err(what))?;
                if rows.is_empty() {
                    break;
                }
                n += rows.len() as i64;
                insert(&mut tx, table, &columns, rows)
                    .await
                    .map_err(to.err(format!("cannot copy the table {table}")))?;
            }
            copied.0.push((table, n as u64));
        }
        for table in IDENTITIES {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 (SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            );
            tx.q(&sql).execute(&mut tx).await.map_err(to.err(what))?;
        }
        tx.commit().await.map_err(to.err(what))?;
        Ok(copied)
    }
}

/// `table`'s columns, with whether each holds integers, and its key columns to page by.
async fn columns(from: &SqlitePool, table: &str) -> sqlx::Result<Table> {
    let rows = sqlx::query(AssertSqlSafe(format!("PRAGMA table_info({table})")))
        .fetch_all(from)
        .await?;
    let mut key: Vec<(i64, String)> = Vec::new();
    let mut columns = Vec::new();
    for r in rows {
        let name: String = r.try_get("name")?;
        let pk: i64 = r.try_get("pk")?;
        if pk > 0 {
            key.push((pk, name.clone()));
        }
        let ty: String = r.try_get("type")?;
        columns.push(Column {
            name,
            integer: ty.eq_ignore_ascii_case("INTEGER"),
        });
    }
    key.sort();
    Ok(Table {
        columns,
        key: key.into_iter().map(|(_, k)| k).collect(),
    })
}

/// The rows of `table` after the first `skip`, in key order.
async fn page(
    from: &SqlitePool,
    table: &str,
    Table { columns, key }: &Table,
    skip: i64,
) -> sqlx::Result<Vec<Vec<Value>>> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let sql = format!(
        "SELECT {} FROM {table} ORDER BY {} LIMIT $1 OFFSET $2",
        names.join(", "),
        key.join(", ")
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(PAGE)
        .bind(skip)
        .fetch_all(from)
        .await?;
    rows.iter()
        .map(|r| {
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| match c.integer {
                    true => r.try_get(i).map(Value::Int),
                    false => r.try_get(i).map(Value::Text),
                })
                .collect()
        })
        .collect()
}

/// Inserts `rows` into `table` in one statement.
async fn insert(
    tx: &mut super::Tx,
    table: &str,
    Table { columns, .. }: &Table,
    rows: Vec<Vec<Value>>,
) -> sqlx::Result<u64> {
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let values: Vec<String> = (0..rows.len())
        .map(|r| {
            let row: Vec<String> = (1..=names.len())
                .map(|c| format!("${}", r * names.len() + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES {}",
        names.join(", "),
        values.join(", ")
    );
    let mut q = tx.q(&sql);
    for v in rows.into_iter().flatten() {
        q = match v {
            Value::Int(v) => q.bind(v),
            Value::Text(v) => q.bind(v),
        };
    }
    q.execute(tx).await
}
