//! What most commands need: the settings, the database, an API client, a runner.

use std::path::Path;
use std::sync::Arc;

use crate::api::Client;
use crate::clock::SharedClock;
use crate::config::{JobSettings, Settings};
use crate::db::Database;

use super::UsageError;

pub async fn open_db(settings: &Settings) -> anyhow::Result<Database> {
    Ok(Database::open(&settings.database).await?)
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
