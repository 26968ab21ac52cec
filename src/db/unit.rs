//! A write of a few statements kept together (`Database::write_all`), handed to this
//! process's writer.

use sqlx::Type;

use super::sql::{Engines, Pool, Q};
use super::writer::{Statement, Want, Written};

/// One statement of a write kept together with others (`Database::write_all`).
pub(crate) struct Part {
    q: Q,
    want: Want,
    or_stop: bool,
}

impl Part {
    /// A statement; what it gives back is the number of rows it changed.
    pub(crate) fn new(q: Q) -> Self {
        Self {
            q,
            want: Want::Count,
            or_stop: false,
        }
    }

    /// A statement whose `RETURNING` gives an id (its first column) for each row.
    pub(crate) fn returning(q: Q) -> Self {
        Self {
            want: Want::Rows,
            ..Self::new(q)
        }
    }

    /// When this statement changes no row, the ones after it are not run.
    pub(crate) fn or_stop(mut self) -> Self {
        self.or_stop = true;
        self
    }
}

/// What one statement of a write did: the rows it changed, and for a [`Part::returning`],
/// the id each row returned.
#[derive(Debug, Default)]
pub(crate) struct Did {
    pub(crate) changed: u64,
    pub(crate) ids: Vec<i64>,
}

impl Did {
    fn of<DB: sqlx::Database>(w: Written<DB>) -> sqlx::Result<Self>
    where
        i64: for<'r> sqlx::Decode<'r, DB> + Type<DB>,
        usize: sqlx::ColumnIndex<DB::Row>,
    {
        match w {
            Written::Count(changed) => Ok(Self {
                changed,
                ids: Vec::new(),
            }),
            Written::Rows(rows) => {
                let ids = rows
                    .iter()
                    .map(|r| sqlx::Row::try_get::<i64, _>(r, 0))
                    .collect::<sqlx::Result<Vec<_>>>()?;
                Ok(Self {
                    changed: ids.len() as u64,
                    ids,
                })
            }
        }
    }
}

/// `parts` for this process's writer, which runs them in order, each while the one
/// before it that says so ([`Part::or_stop`]) changed a row, all kept or none, committed
/// with the other writes waiting at the same moment. What each statement run did.
pub(super) async fn on_writer(pool: &Pool, parts: Vec<Part>) -> sqlx::Result<Vec<Did>> {
    fn unit<DB: Engines>(parts: Vec<Part>) -> sqlx::Result<Vec<Statement<DB>>> {
        parts
            .into_iter()
            .map(|s| s.q.statement(s.want, s.or_stop))
            .collect()
    }
    match pool {
        Pool::Sqlite(p, writer, _) => writer
            .write(p, unit(parts)?)
            .await?
            .into_iter()
            .map(Did::of)
            .collect(),
        Pool::Postgres(p, writer) => writer
            .write(p, unit(parts)?)
            .await?
            .into_iter()
            .map(Did::of)
            .collect(),
    }
}
