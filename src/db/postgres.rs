//! The history store on PostgreSQL, which several agents on different hosts share.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

use super::sql::Pool;
use super::{Database, DbError, DbResult};

/// How long a pooled connection may sit idle before it is tested before use.
const TESTED_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Where the history is: a SQLite file, or a PostgreSQL database.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Postgres {
        /// `postgres://user@host/db?sslmode=…`, without a password.
        url: String,
        /// From the URL, `PGPASSWORD` or the `database-password` credential.
        password: Option<SecretString>,
    },
}

impl Location {
    /// Whether there is a history to read: a SQLite file may not have been made yet.
    pub fn exists(&self) -> bool {
        match self {
            Location::File(path) => path.exists(),
            Location::Postgres { .. } => true,
        }
    }

    /// The file, or the URL without its password.
    pub fn shown(&self) -> &Path {
        match self {
            Location::File(path) => path,
            Location::Postgres { url, .. } => Path::new(url),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shown().display().fmt(f)
    }
}

/// Splits the password off a `postgres://` URL: the URL to show, and the password.
pub fn split_password(url: &str) -> Result<(String, Option<SecretString>), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    let password = parsed
        .password()
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8()
                .map(|p| p.into_owned())
                .map_err(|_| "the password in the URL is not valid UTF-8".to_string())
        })
        .transpose()?;
    // Only fails for URLs that cannot have a password, and this one had one or not.
    let _ = parsed.set_password(None);
    Ok((parsed.to_string(), password.map(SecretString::from)))
}

impl Database {
    /// Opens the history at `location`: [`Database::open`] for a file, else connects to
    /// PostgreSQL and migrates (the migrator holds an advisory lock, so agents starting
    /// together migrate one after another).
    pub async fn open_at(location: &Location) -> DbResult<Self> {
        let (url, password) = match location {
            Location::File(path) => return Self::open(path).await,
            Location::Postgres { url, password } => (url, password),
        };
        let shown = PathBuf::from(url);
        let err = |what: &str, e: sqlx::Error| DbError::new(&shown, what, e);
        let mut opts = PgConnectOptions::from_str(url)
            .map_err(|e| err("is not a PostgreSQL URL the agent can use", e))?
            .application_name("vps-snapshot-agent");
        if let Some(p) = password {
            opts = opts.password(p.expose_secret());
        }
        let pool = match PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            // A connection is tested (one round trip) before use only when it sat idle for
            // a while: sqlx tests each one handed back, so one just used is known good.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= TESTED_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(opts.clone())
            .await
        {
            Ok(pool) => pool,
            // The pool only says that it waited; one connection of its own says why.
            Err(sqlx::Error::PoolTimedOut) => {
                let why = match PgConnection::connect_with(&opts).await {
                    Ok(_) => sqlx::Error::PoolTimedOut,
                    Err(e) => e,
                };
                return Err(err("cannot connect", why));
            }
            Err(e) => return Err(err("cannot connect", e)),
        };
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| err("cannot migrate (is it an agent database?)", e.into()))?;
        Ok(Self {
            pool: Pool::Postgres(pool.clone(), super::writer::Writer::start(&pool)),
            path: shown,
            timing: crate::timing::Timing::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::split_password;

    #[test]
    fn the_password_is_taken_out_of_the_url() {
        let (url, password) = split_password(
            "postgres://agent:p%40ss@db.internal:5433/snapshots?sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://agent@db.internal:5433/snapshots?sslmode=verify-full"
        );
        assert_eq!(password.unwrap().expose_secret(), "p@ss");
        let (url, password) = split_password("postgres://agent@db/snapshots").unwrap();
        assert_eq!(url, "postgres://agent@db/snapshots");
        assert!(password.is_none());
    }
}
