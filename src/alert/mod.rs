//! Alerts: [`text`] says what every alert says; this module decides when one is worth
//! sending (throttling a failing job's repeats); [`outbox`] delivers the outbox on each
//! channel ([`mail`] for email, [`http`] for webhook, Slack and ntfy) and sends the
//! dead-man pings. Alerts are queued in the database's outbox in the same transaction as
//! the run they describe.

pub mod http;
pub mod mail;
pub mod outbox;
pub mod text;

pub use crate::domain::AlertKind;
pub use mail::Smtp;
pub use outbox::{Channel, Delivery, Outbox, Report};
pub use text::Cause;

/// Why an alert or a ping did not go. Its words are scrubbed when it is made: they are
/// kept with the row and shown by `status` and the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver could not be reached, or did not answer in time.
    #[error("{what}: {detail}")]
    Unreachable { what: String, detail: String },
    /// The receiver answered with an error status (and this excerpt of its answer).
    #[error("{what}: HTTP {status}: {excerpt}")]
    Refused {
        what: String,
        status: u16,
        excerpt: String,
    },
    /// The SMTP server refused, failed or stalled.
    #[error("SMTP {server}: {detail}")]
    Smtp { server: String, detail: String },
    /// The mail could not be built.
    #[error("cannot build the alert mail: {0}")]
    Compose(String),
    /// The outbox could not be read (the database's error).
    #[error("{0}")]
    Outbox(String),
}

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{DEFAULT_REPEAT_AFTER, Settings};
use crate::db::{Database, DbResult};

/// Alerting rules, the same for every channel: `repeat_after` and `notify_recovery` are
/// `[email]`'s (their defaults without it). `None` without any channel: alerts are only
/// logged.
#[derive(Debug, Clone, Copy)]
pub struct AlertPolicy {
    pub repeat_after: Duration,
    pub notify_recovery: bool,
}

impl AlertPolicy {
    pub fn from_settings(settings: &Settings) -> Option<Self> {
        if let Some(e) = &settings.email {
            return Some(Self {
                repeat_after: e.repeat_after,
                notify_recovery: e.notify_recovery,
            });
        }
        (!settings.notify.is_empty()).then_some(Self {
            repeat_after: DEFAULT_REPEAT_AFTER,
            notify_recovery: true,
        })
    }
}

/// Whether a new failure alert for `job` would repeat one sent less than `repeat_after` ago
/// in the same failure streak (by the wall clock; one stamped later than `now` is not).
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
    // An alert "in the future" says the wall clock went back since: how long ago it was
    // sent is unknown, and a failure is never kept quiet on a guess (a clock set back by a
    // day would otherwise silence every failure for that day).
    let within = (now - last)
        .to_std()
        .is_ok_and(|ago| ago < policy.repeat_after);
    Ok(within && !success_since)
}
