//! Alerts: [`text`] says what every alert says; this module decides when one is worth
//! sending (throttling a failing job's repeats); [`mail`] delivers the outbox with lettre
//! (one alert alone, several as a digest). Alerts are queued in the database's outbox in
//! the same transaction as the run they describe.

pub mod mail;
pub mod text;

pub use crate::domain::AlertKind;
pub use mail::{Delivery, Mailer, Smtp};
pub use text::Cause;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::EmailSettings;
use crate::db::{Database, DbResult};

/// Alerting rules taken from `[email]`; `None` there means alerts are only logged.
#[derive(Debug, Clone, Copy)]
pub struct AlertPolicy {
    pub repeat_after: Duration,
    pub notify_recovery: bool,
}

impl AlertPolicy {
    pub fn from_settings(email: Option<&EmailSettings>) -> Option<Self> {
        email.map(|e| Self {
            repeat_after: e.repeat_after,
            notify_recovery: e.notify_recovery,
        })
    }
}

/// Whether a new failure alert for `job` would repeat one sent less than `repeat_after` ago
/// in the same failure streak.
pub async fn throttled(
    db: &Database,
    policy: &AlertPolicy,
    job: &str,
    now: DateTime<Utc>,
) -> DbResult<bool> {
    let kinds = [AlertKind::Failed, AlertKind::NoRoom];
    let Some(last) = db.last_alert_at(job, &kinds).await? else {
        return Ok(false);
    };
    let success_since = db
        .last_success(job)
        .await?
        .and_then(|r| r.finished_at)
        .is_some_and(|t| t > last);
    let within = (now - last).to_std().unwrap_or_default() < policy.repeat_after;
    Ok(within && !success_since)
}
