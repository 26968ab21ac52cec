use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::context;
use crate::config::Settings;
use crate::daemon::{self, CronTimer, Daemon};

/// How long SIGTERM waits for running snapshots (systemd's default stop timeout is 90 s).
const GRACE: Duration = Duration::from_secs(75);

pub async fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let settings = context::config_settings(config)?;
    let clock = crate::clock::system();
    let db = context::open_db(&settings).await?;
    let services = daemon::services_for(settings, &db, &clock)?;
    let control = daemon::signal_control()?;

    // Queued alerts go out first, in the background, so that a dead SMTP server does not
    // hold up READY; the daemon resumes interrupted runs the same way as it starts.
    if let Some(m) = services.mailer.clone() {
        tokio::spawn(async move {
            m.deliver_due().await;
        });
    }
    let path = config.to_path_buf();
    let (reload_db, reload_clock) = (db.clone(), clock.clone());
    let daemon = Daemon {
        services,
        db: db.clone(),
        clock: clock.clone(),
        timer: Arc::new(CronTimer::start().await?),
        grace: GRACE,
        check_every: Duration::from_secs(30),
        stale_every: Duration::from_secs(300),
        reload: Box::new(move || {
            let settings = Settings::load(&path)?;
            for w in &settings.warnings {
                tracing::warn!("{w}");
            }
            daemon::services_for(settings, &reload_db, &reload_clock)
        }),
    };
    daemon.run(control).await?;
    db.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
