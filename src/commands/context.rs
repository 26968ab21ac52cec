//! What most commands need: the settings, the database, an API client, a runner.

use std::path::Path;
use std::sync::Arc;

use crate::api::Client;
use crate::clock::SharedClock;
use crate::config::{JobSettings, Settings};
use crate::db::Database;

use super::UsageError;

/// The database could not be opened at start: a setup problem (path, permissions, the
/// user the command runs as), so it exits 78 like a broken config and systemd does not
/// restart the service into the same wall.
#[derive(Debug, thiserror::Error)]
#[error("{error}{hint}")]
pub struct UnusableDatabase {
    error: crate::db::DbError,
    hint: String,
}

pub async fn open_db(settings: &Settings) -> anyhow::Result<Database> {
    open_at(&settings.database).await
}

/// The database at `location`, or an [`UnusableDatabase`] (exit 78) saying why not; its
/// agents on the timing of `AGENT_TIMING`, when a test sets it.
pub async fn open_at(location: &crate::db::Location) -> anyhow::Result<Database> {
    let timing = crate::timing::Timing::from_env().map_err(UsageError)?;
    let db = Database::open_at(location).await.map_err(|error| {
        let hint = match location {
            crate::db::Location::File(path) => owner_hint(path).unwrap_or_default(),
            crate::db::Location::Postgres { .. } => String::new(),
        };
        UnusableDatabase { error, hint }
    })?;
    Ok(db.with_timing(timing))
}

/// When the database (or the nearest directory that exists on its path) belongs to
/// another user: whose it is, and how to run as them.
fn owner_hint(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = path.ancestors().find_map(|p| std::fs::metadata(p).ok())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me {
        return None;
    }
    let name = user_name(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
    Some(format!(
        " (it belongs to {name}; run agent as that user, e.g. `sudo -u {name} agent …`)"
    ))
}

/// The name /etc/passwd gives `uid`.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

pub fn client(settings: &Settings, clock: SharedClock) -> anyhow::Result<Arc<Client>> {
    let token = settings.api.token()?;
    Client::new(&settings.api, token, clock)
}

/// The named jobs (all when none), or a usage error naming the unknown one.
pub fn select_jobs(settings: &Settings, names: &[String]) -> anyhow::Result<Vec<JobSettings>> {
    if names.is_empty() {
        return Ok(settings.jobs.clone());
    }
    names
        .iter()
        .map(|n| {
            settings.job(n).cloned().ok_or_else(|| {
                let known: Vec<_> = settings.jobs.iter().map(|j| j.name.as_str()).collect();
                UsageError(format!(
                    "no job named {n:?} in {} (jobs: {})",
                    settings.config_path.display(),
                    known.join(", ")
                ))
                .into()
            })
        })
        .collect()
}

pub fn config_settings(path: &Path) -> anyhow::Result<Settings> {
    Ok(super::load_settings(path)?)
}
