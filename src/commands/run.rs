use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use super::setup;
use crate::daemon::{self, CronTimer, Daemon};

pub async fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let settings = setup::config_settings(config)?;
    settings.require_jobs()?;
    let clock = crate::clock::system();
    let db = setup::open_db(&settings).await?;
    let control = daemon::signals::control()?;
    let timer = Arc::new(CronTimer::start().await?);
    let daemon = Daemon::for_config(config, settings, db.clone(), clock, timer)?;
    daemon.run(control).await?;
    db.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
