//! One way to run a statement on either store: SQLite (the embedded default) or
//! PostgreSQL (several agents on different hosts). A statement is written once, in SQL
//! both engines understand, with numbered placeholders `$1`, `$2`, … (PostgreSQL's own;
//! SQLite takes `$NNN` as a parameter named by its number, and sqlx binds it to the NNN-th
//! value, so a number may repeat or come out of order on both: `tests/it/store.rs`).
//! Values are encoded for the store at `bind`, rows decoded by `FromRow`.

use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, Encode, FromRow, Postgres, Sqlite, Transaction, Type};

use super::reader::{Fetch, Reader, fetched};
use super::writer::{Statement, Want, Writer, Written};

/// Which engine a database is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool, Writer<Sqlite>, Reader<Sqlite>),
    /// No readers: on PostgreSQL, transactions are not one at a time as on SQLite, and
    /// connections kept by readers left too few for them under load (runs failed with
    /// "pool timed out"); a read takes a connection from the pool and hands it back.
    Postgres(PgPool, Writer<Postgres>),
}

/// Whether a statement may write: anything but a plain `SELECT` (an `INSERT … RETURNING`
/// read through `fetch_one` writes too).
fn writes(sql: &str) -> bool {
    let head = sql.trim_start().get(..6).unwrap_or("");
    !head.eq_ignore_ascii_case("select")
}

impl Pool {
    pub(super) fn engine(&self) -> Engine {
        match self {
            Pool::Sqlite(..) => Engine::Sqlite,
            Pool::Postgres(..) => Engine::Postgres,
        }
    }
}

/// A write transaction on either store (see `Database::begin`).
pub(crate) enum Tx {
    /// With this process's turn to write, held until the transaction ends.
    Sqlite(
        Transaction<'static, Sqlite>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    pub(crate) fn q(&self, sql: &str) -> Q {
        Q::new(
            match self {
                Tx::Sqlite(..) => Engine::Sqlite,
                Tx::Postgres(_) => Engine::Postgres,
            },
            sql,
        )
    }

    pub(crate) async fn commit(self) -> sqlx::Result<()> {
        match self {
            Tx::Sqlite(t, _turn) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }
}

/// Where a statement runs: the pool, or an open transaction.
pub(crate) enum On<'a> {
    Pool(&'a Pool),
    Tx(&'a mut Tx),
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        On::Tx(tx)
    }
}

impl<'a> From<&'a Pool> for On<'a> {
    fn from(pool: &'a Pool) -> Self {
        On::Pool(pool)
    }
}

impl On<'_> {
    /// A statement for this pool or transaction.
    pub(crate) fn q(&self, sql: &str) -> Q {
        Q::new(
            match self {
                On::Pool(p) => p.engine(),
                On::Tx(Tx::Sqlite(..)) => Engine::Sqlite,
                On::Tx(Tx::Postgres(_)) => Engine::Postgres,
            },
            sql,
        )
    }
}

pub(crate) enum Args {
    Sqlite(SqliteArguments),
    Postgres(PgArguments),
}

/// A statement with its values, ready for one engine.
pub(crate) struct Q {
    sql: String,
    args: Args,
    /// A value that could not be encoded: reported when the statement runs.
    bad: Option<sqlx::error::BoxDynError>,
}

/// The rows a lone write returned.
fn rows_of<DB: sqlx::Database>(written: Vec<Written<DB>>) -> Vec<DB::Row> {
    match written.into_iter().next() {
        Some(Written::Rows(rows)) => rows,
        Some(Written::Count(_)) | None => Vec::new(),
    }
}

/// The rows a statement gave back, not yet decoded: all that is generic over the row
/// type is the decoding, not the futures that run the statement.
enum Rows {
    Sqlite(Vec<SqliteRow>),
    Postgres(Vec<PgRow>),
}

impl Rows {
    fn decode<T: Row>(self) -> sqlx::Result<Vec<T>> {
        match self {
            Rows::Sqlite(rows) => rows.iter().map(|r| T::from_row(r)).collect(),
            Rows::Postgres(rows) => rows.iter().map(|r| T::from_row(r)).collect(),
        }
    }
}

/// An engine a statement's values are bound for.
pub(crate) trait Engines: sqlx::Database {
    /// `args`, if they were bound for this engine.
    fn args(args: Args) -> sqlx::Result<Self::Arguments>;
}

fn other_engine() -> sqlx::Error {
    sqlx::Error::Protocol("a statement prepared for one engine was run on the other".into())
}

impl Engines for Sqlite {
    fn args(args: Args) -> sqlx::Result<SqliteArguments> {
        match args {
            Args::Sqlite(a) => Ok(a),
            Args::Postgres(_) => Err(other_engine()),
        }
    }
}

impl Engines for Postgres {
    fn args(args: Args) -> sqlx::Result<PgArguments> {
        match args {
            Args::Postgres(a) => Ok(a),
            Args::Sqlite(_) => Err(other_engine()),
        }
    }
}

/// What a row decodes into on both engines.
pub(crate) trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// Runs `$body` with `$e` the executor and `$a` the arguments of the matching engine.
macro_rules! on_engine {
    ($args:expr, $on:expr, |$e:ident, $a:ident| $body:expr) => {
        match ($args, $on) {
            (Args::Sqlite($a), On::Pool(Pool::Sqlite($e, ..))) => $body,
            (Args::Sqlite($a), On::Tx(Tx::Sqlite(t, _))) => {
                let $e = &mut **t;
                $body
            }
            (Args::Postgres($a), On::Pool(Pool::Postgres($e, ..))) => $body,
            (Args::Postgres($a), On::Tx(Tx::Postgres(t))) => {
                let $e = &mut **t;
                $body
            }
            _ => Err(other_engine()),
        }
    };
}

impl Q {
    pub(super) fn new(engine: Engine, sql: &str) -> Self {
        Self {
            sql: sql.to_string(),
            args: match engine {
                Engine::Sqlite => Args::Sqlite(SqliteArguments::default()),
                Engine::Postgres => Args::Postgres(PgArguments::default()),
            },
            bad: None,
        }
    }

    pub(crate) fn bind<'t, T>(mut self, value: T) -> Self
    where
        T: Encode<'t, Sqlite> + Type<Sqlite> + Encode<'t, Postgres> + Type<Postgres>,
    {
        let added = match &mut self.args {
            Args::Sqlite(a) => a.add(value),
            Args::Postgres(a) => a.add(value),
        };
        if let Err(e) = added {
            self.bad.get_or_insert(e);
        }
        self
    }

    /// A write outside a transaction: the pool, whose writer commits it (with others
    /// waiting at the same moment, see [`super::writer`]).
    fn lone_write<'p>(&self, on: &On<'p>) -> Option<&'p Pool> {
        match on {
            On::Pool(pool) if writes(&self.sql) => Some(pool),
            _ => None,
        }
    }

    /// The statement for a writer of engine `DB`.
    pub(super) fn statement<DB: Engines>(
        self,
        want: Want,
        or_stop: bool,
    ) -> sqlx::Result<Statement<DB>> {
        let (sql, args) = self.parts()?;
        Ok(Statement {
            sql: sql.0,
            args: DB::args(args)?,
            want,
            or_stop,
        })
    }

    /// Hands the statement to the writer of `pool`, alone: how many rows it changed.
    async fn write_count(self, pool: &Pool) -> sqlx::Result<u64> {
        let w = match pool {
            Pool::Sqlite(p, writer, _) => {
                let unit = vec![self.statement(Want::Count, false)?];
                writer.write(p, unit).await?.pop().map(|w| w.changed())
            }
            Pool::Postgres(p, writer) => {
                let unit = vec![self.statement(Want::Count, false)?];
                writer.write(p, unit).await?.pop().map(|w| w.changed())
            }
        };
        w.ok_or(sqlx::Error::RowNotFound)
    }

    /// Hands the statement to the writer of `pool`, alone: the rows it returned.
    async fn write_rows(self, pool: &Pool) -> sqlx::Result<Rows> {
        match pool {
            Pool::Sqlite(p, writer, _) => {
                let unit = vec![self.statement(Want::Rows, false)?];
                Ok(Rows::Sqlite(rows_of(writer.write(p, unit).await?)))
            }
            Pool::Postgres(p, writer) => {
                let unit = vec![self.statement(Want::Rows, false)?];
                Ok(Rows::Postgres(rows_of(writer.write(p, unit).await?)))
            }
        }
    }

    /// The statement's rows (at most one for [`Fetch::First`], all a write returns): a
    /// lone write by the writer, a read by the readers, or on the transaction.
    async fn rows(self, on: On<'_>, fetch: Fetch) -> sqlx::Result<Rows> {
        if let Some(pool) = self.lone_write(&on) {
            return self.write_rows(pool).await;
        }
        let tx = match on {
            On::Pool(pool) => return self.read(pool, fetch).await,
            On::Tx(tx) => tx,
        };
        let (sql, args) = self.parts()?;
        match (args, tx) {
            (Args::Sqlite(a), Tx::Sqlite(t, _)) => {
                fetched(&mut **t, sql, a, fetch).await.map(Rows::Sqlite)
            }
            (Args::Postgres(a), Tx::Postgres(t)) => {
                fetched(&mut **t, sql, a, fetch).await.map(Rows::Postgres)
            }
            _ => Err(other_engine()),
        }
    }

    /// Hands the read to the readers of `pool` (on PostgreSQL, runs it on the pool): its
    /// rows (at most one for [`Fetch::First`]).
    async fn read(self, pool: &Pool, fetch: Fetch) -> sqlx::Result<Rows> {
        let (AssertSqlSafe(sql), args) = self.parts()?;
        match pool {
            Pool::Sqlite(p, _, reader) => reader
                .read(p, sql, Sqlite::args(args)?, fetch)
                .await
                .map(Rows::Sqlite),
            Pool::Postgres(p, _) => fetched(p, AssertSqlSafe(sql), Postgres::args(args)?, fetch)
                .await
                .map(Rows::Postgres),
        }
    }

    fn parts(self) -> sqlx::Result<(AssertSqlSafe<String>, Args)> {
        match self.bad {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok((AssertSqlSafe(self.sql), self.args)),
        }
    }

    /// Runs the statement; the number of rows it changed.
    pub(crate) async fn execute<'a>(self, on: impl Into<On<'a>>) -> sqlx::Result<u64> {
        let on = on.into();
        if let Some(pool) = self.lone_write(&on) {
            return self.write_count(pool).await;
        }
        let (sql, args) = self.parts()?;
        on_engine!(args, on, |e, a| sqlx::query_with(sql, a)
            .execute(e)
            .await
            .map(|r| r.rows_affected()))
    }

    pub(crate) async fn fetch_all<'a, T: Row>(self, on: impl Into<On<'a>>) -> sqlx::Result<Vec<T>> {
        self.rows(on.into(), Fetch::All).await?.decode()
    }

    pub(crate) async fn fetch_optional<'a, T: Row>(
        self,
        on: impl Into<On<'a>>,
    ) -> sqlx::Result<Option<T>> {
        let rows = self.rows(on.into(), Fetch::First).await?;
        Ok(rows.decode()?.into_iter().next())
    }

    pub(crate) async fn fetch_one<'a, T: Row>(self, on: impl Into<On<'a>>) -> sqlx::Result<T> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of the one row.
    pub(crate) async fn scalar<'a, T>(self, on: impl Into<On<'a>>) -> sqlx::Result<T>
    where
        (T,): Row,
    {
        self.fetch_one::<(T,)>(on).await.map(|(v,)| v)
    }

    /// The first column of the row, if there is one.
    pub(crate) async fn scalar_optional<'a, T>(
        self,
        on: impl Into<On<'a>>,
    ) -> sqlx::Result<Option<T>>
    where
        (T,): Row,
    {
        self.fetch_optional::<(T,)>(on)
            .await
            .map(|r| r.map(|(v,)| v))
    }
}

/// SQL that differs between the engines.
impl Engine {
    /// The id the last `INSERT` on this connection gave its row (its session's, on
    /// PostgreSQL: the last value a sequence gave it).
    pub(crate) fn last_id(self) -> &'static str {
        match self {
            Engine::Sqlite => "last_insert_rowid()",
            Engine::Postgres => "lastval()",
        }
    }

    /// A subquery of the values of the JSON array of strings bound at placeholder `$n`.
    pub(crate) fn json_texts(self, n: usize) -> String {
        match self {
            Engine::Sqlite => format!("SELECT value FROM json_each(${n})"),
            Engine::Postgres => format!("SELECT json_array_elements_text(CAST(${n} AS json))"),
        }
    }

    /// A subquery of the values of the JSON array of integers bound at placeholder `$n`.
    pub(crate) fn json_integers(self, n: usize) -> String {
        match self {
            Engine::Sqlite => format!("SELECT value FROM json_each(${n})"),
            Engine::Postgres => {
                format!("SELECT CAST(json_array_elements_text(CAST(${n} AS json)) AS BIGINT)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writes;

    #[test]
    fn only_a_plain_select_is_taken_for_a_read() {
        assert!(!writes("  SELECT id FROM runs"));
        assert!(!writes("select 1"));
        assert!(writes("INSERT INTO runs (job) VALUES ($1) RETURNING id"));
        assert!(writes("UPDATE runs SET status = $1"));
        assert!(writes("WITH x AS (SELECT 1) DELETE FROM pins"));
        assert!(writes(""));
    }
}
