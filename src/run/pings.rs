//! A run's start and end as seen from outside: the lateness metric, and the job's
//! dead-man pings: `/start` queued when a run starts, the bare URL or `/fail` in
//! the transaction that ends it. Queued only: the outbox sends them, so a ping never
//! holds a run up.

use chrono::{DateTime, Utc};

use super::Runner;
use crate::config::JobSettings;
use crate::db::{NewPing, PingKind, RunStatus};
use crate::domain::RunId;

/// A job's ping not sent within this is dropped: sent later, it would say something
/// about a time long gone (a late `/start` would even open a run that ended).
pub const PING_EXPIRES: chrono::Duration = chrono::Duration::minutes(10);

pub fn job_ping(
    job: &JobSettings,
    run_id: RunId,
    kind: PingKind,
    body: String,
    now: DateTime<Utc>,
) -> Option<NewPing> {
    job.ping_url.as_ref()?;
    Some(NewPing {
        job: Some(job.name.clone()),
        run_id: Some(run_id),
        kind,
        body,
        created_at: now,
        expires_at: now + PING_EXPIRES,
    })
}

/// The ping that ends a run: success or failure; none for a run left interrupted (the
/// watcher's grace period decides about a start never followed by an end).
pub fn end_ping(
    job: &JobSettings,
    run_id: RunId,
    status: RunStatus,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Option<NewPing> {
    let (kind, body) = match status {
        RunStatus::Succeeded => (PingKind::Success, format!("run {run_id} succeeded")),
        RunStatus::Failed => (
            PingKind::Fail,
            format!("run {run_id} failed: {}", error.unwrap_or("unknown error")),
        ),
        _ => return None,
    };
    job_ping(job, run_id, kind, body, now)
}

impl Runner {
    /// Queues the `/start` ping of a run just recorded; a failure is logged, not fatal.
    pub(super) async fn start_ping(
        &self,
        job: &JobSettings,
        run_id: RunId,
        scheduled_for: Option<DateTime<Utc>>,
    ) {
        if let Some(at) = scheduled_for {
            let late = (self.now() - at).to_std().unwrap_or_default();
            crate::metrics::global().run_started(&job.name, late);
        }
        let Some(p) = job_ping(job, run_id, PingKind::Start, String::new(), self.now()) else {
            return;
        };
        match self.db.queue_ping(&p).await {
            Ok(()) => self.kick.notify_one(),
            Err(e) => tracing::warn!(job = %job.name, "the start ping is not sent: {e}"),
        }
    }
}
