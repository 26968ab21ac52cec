//! Where a history keeps its history database: a SQLite file in its directory, or, for the
//! share of histories drawn to run on PostgreSQL, a schema of its own in the test database
//! (`AGENT_TEST_POSTGRES_URL`), dropped when the history ends.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use vps_snapshot_agent::db::{Database, DbResult, Location, OpenOptions};

pub struct Store {
    /// What the agent's config names (`database = …`): the file, or the schema's URL with
    /// its password.
    configured: String,
    location: Location,
    /// On PostgreSQL: the test database's URL and the schema of this history.
    schema: Option<(String, String)>,
}

impl Store {
    /// A SQLite file at `path`.
    pub fn file(path: &Path) -> Self {
        Store {
            configured: path.display().to_string(),
            location: Location::File(path.to_path_buf()),
            schema: None,
        }
    }

    /// A new schema for history `seed` in the test database at `url`.
    pub async fn postgres(url: &str, seed: u64) -> Self {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let schema = format!(
            "explore_{seed}_{}_{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::SeqCst)
        );
        crate::store::admin(url, &format!("CREATE SCHEMA {schema}")).await;
        // Without TLS: on loopback it only costs each connection a handshake (90 ms in
        // a debug build), and TLS has tests of its own (`pg_faults::sslmode_is_honoured`).
        let sep = if url.contains('?') { '&' } else { '?' };
        let configured = format!("{url}{sep}sslmode=disable&options=-c%20search_path%3D{schema}");
        let (bare, password) = vps_snapshot_agent::db::split_password(&configured).unwrap();
        Store {
            configured,
            location: Location::Postgres {
                url: bare,
                password,
            },
            schema: Some((url.to_string(), schema)),
        }
    }

    pub fn on_postgres(&self) -> bool {
        self.schema.is_some()
    }

    /// The value of the config's `database` key.
    pub fn configured(&self) -> &str {
        &self.configured
    }

    pub async fn try_open(&self) -> DbResult<Database> {
        Database::open_at(&self.location).await
    }

    pub async fn open(&self) -> Database {
        self.try_open().await.unwrap()
    }

    /// Drops the schema (nothing for a file: its directory goes with the history).
    pub async fn remove(&self) {
        let Some((url, schema)) = &self.schema else {
            return;
        };
        crate::store::admin(url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    }
}

/// Opens the database at `location` for a simulated process: a SQLite file with its
/// threads named after the process (so that its kill can wait for them), PostgreSQL as is.
pub async fn open_for(location: &Location, label: &str) -> DbResult<Database> {
    match location {
        Location::File(path) => {
            let options = OpenOptions {
                label: Some(label.to_string()),
                ..OpenOptions::default()
            };
            Database::open_with(path, &options).await
        }
        Location::Postgres { .. } => Database::open_at(location).await,
    }
}

/// The store of a history in `dir`: on PostgreSQL if the history is drawn to run there and
/// the tests have one (else on SQLite, the missing PostgreSQL counted: [`crate::needs`]).
pub async fn for_history(postgres: bool, dir: &Path, seed: u64) -> Store {
    if postgres {
        match std::env::var(crate::store::POSTGRES_URL) {
            Ok(url) => return Store::postgres(&url, seed).await,
            Err(_) => crate::needs::missing(crate::needs::Need::Postgres),
        }
    }
    Store::file(&dir.join("history.db"))
}
