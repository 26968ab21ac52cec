//! What alerts say and when they are worth sending. Alerts are queued in the database's
//! outbox (see [`crate::db`]) in the same transaction as the run they describe, and mailed
//! by [`crate::mail`].

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::Snapshot;
use crate::config::EmailSettings;
use crate::db::{Database, DbResult, NewAlert, Run};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Failed,
    Recovered,
    Stale,
    NotReadyBeforeWindow,
    Drift,
    NoRoom,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Recovered => "recovered",
            Kind::Stale => "stale",
            Kind::NotReadyBeforeWindow => "not_ready_before_window",
            Kind::Drift => "drift",
            Kind::NoRoom => "no_room",
        }
    }
    fn headline(self) -> &'static str {
        match self {
            Kind::Failed => "FAILED",
            Kind::Recovered => "RECOVERED",
            Kind::Stale => "STALE",
            Kind::NotReadyBeforeWindow => "NOT READY BEFORE WINDOW",
            Kind::Drift => "DRIFT",
            Kind::NoRoom => "NO ROOM",
        }
    }
}

pub fn subject(kind: Kind, job: &str, server_id: u64) -> String {
    format!("[agent] {} {job} (server {server_id})", kind.headline())
}

pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn fmt_age(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0) as u64;
    let rounded = if secs >= 3600 { secs / 60 * 60 } else { secs };
    humantime::format_duration(Duration::from_secs(rounded)).to_string()
}

/// The facts a failure alert reports.
pub struct Failure<'a> {
    pub kind: Kind,
    pub job: &'a str,
    pub server_id: u64,
    pub run_id: i64,
    pub step: &'a str,
    pub error: &'a str,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub last_good: Option<&'a Run>,
    pub listing: &'a [Snapshot],
}

fn hint(kind: Kind, error: &str, job: &str) -> Vec<String> {
    let mut out = Vec::new();
    if error.contains("401") {
        out.push("The API token was rejected: put a valid token in the token file and run `agent check`.".into());
    }
    if kind == Kind::NoRoom || error.contains("limit") {
        out.push(
            "The server has no room: delete or unpin one of the snapshots listed above \
             (`agent snapshots --job JOB`, `agent unpin ID`)."
                .replace("JOB", job),
        );
    }
    if error.contains("not completed after") {
        out.push("The snapshot did not finish in time: check the server in the VPS.org panel; raise snapshot_timeout if it is simply slow.".into());
    }
    if error.contains("ended") {
        out.push("The provider reported the snapshot as failed: check the server's state in the VPS.org panel.".into());
    }
    if error.contains("server error")
        || error.contains("timed out")
        || error.contains("connect")
        || error.contains("rate limited")
    {
        out.push("The API was unreachable or failing: the job runs again at its next time; run it by hand when the API is back.".into());
    }
    out.push(format!("Run it again by hand: agent run-once --job {job}"));
    out.push(format!("See what happened: agent history --job {job}"));
    out
}

fn write_listing(body: &mut String, listing: &[Snapshot]) {
    if listing.is_empty() {
        body.push_str("  (none, or the listing failed)\n");
    }
    for s in listing {
        let _ = writeln!(
            body,
            "  {:>8}  {:<48} {:<12} {}",
            s.id,
            s.name,
            s.status.as_str(),
            fmt_time(s.created_at)
        );
    }
}

pub fn failure(f: &Failure<'_>) -> NewAlert {
    let mut body = String::new();
    let what = if f.kind == Kind::NoRoom {
        "could not make room for a new snapshot"
    } else {
        "failed"
    };
    let _ = writeln!(
        body,
        "Snapshot job {} on server {} {what}.\n",
        f.job, f.server_id
    );
    let _ = writeln!(body, "Error:    {}", f.error);
    let _ = writeln!(body, "Step:     {}", f.step);
    let _ = writeln!(body, "Run:      {}", f.run_id);
    let _ = writeln!(body, "Started:  {}", fmt_time(f.started_at));
    let _ = writeln!(body, "Finished: {}\n", fmt_time(f.finished_at));
    match f
        .last_good
        .and_then(|r| r.snapshot.as_ref().map(|s| (r, s)))
    {
        Some((r, s)) => {
            let at = r.finished_at.unwrap_or(r.started_at);
            let _ = writeln!(
                body,
                "Last good snapshot: {} (id {}), {} ago ({})\n",
                s.name,
                s.id.map_or("?".into(), |i| i.to_string()),
                fmt_age(f.finished_at - at),
                fmt_time(at)
            );
        }
        None => body.push_str("Last good snapshot: none recorded by this agent\n\n"),
    }
    body.push_str("Snapshots on the server now:\n");
    write_listing(&mut body, f.listing);
    body.push_str("\nWhat to do next:\n");
    for h in hint(f.kind, f.error, f.job) {
        let _ = writeln!(body, "  - {h}");
    }
    NewAlert {
        job: Some(f.job.to_string()),
        server_id: Some(f.server_id),
        run_id: Some(f.run_id),
        kind: f.kind.as_str().to_string(),
        subject: subject(f.kind, f.job, f.server_id),
        body,
        created_at: f.finished_at,
    }
}

pub fn recovered(
    job: &str,
    server_id: u64,
    run_id: i64,
    snapshot: &str,
    at: DateTime<Utc>,
    failed_since: Option<DateTime<Utc>>,
) -> NewAlert {
    let mut body = format!("Snapshot job {job} on server {server_id} succeeded again.\n\n");
    let _ = writeln!(body, "Snapshot: {snapshot}");
    let _ = writeln!(body, "Run:      {run_id}");
    let _ = writeln!(body, "At:       {}", fmt_time(at));
    if let Some(since) = failed_since {
        let _ = writeln!(
            body,
            "Failing since: {} ({} ago)",
            fmt_time(since),
            fmt_age(at - since)
        );
    }
    body.push_str("\nNothing to do.\n");
    NewAlert {
        job: Some(job.to_string()),
        server_id: Some(server_id),
        run_id: Some(run_id),
        kind: Kind::Recovered.as_str().into(),
        subject: subject(Kind::Recovered, job, server_id),
        body,
        created_at: at,
    }
}

/// A free-form alert from a daemon check (stale, drift, window).
pub fn notice(
    kind: Kind,
    job: &str,
    server_id: u64,
    run_id: Option<i64>,
    text: &str,
    at: DateTime<Utc>,
) -> NewAlert {
    NewAlert {
        job: Some(job.to_string()),
        server_id: Some(server_id),
        run_id,
        kind: kind.as_str().into(),
        subject: subject(kind, job, server_id),
        body: format!("{text}\n\nDetected at {}.\n", fmt_time(at)),
        created_at: at,
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
    let Some(last) = db
        .last_alert_at(job, &[Kind::Failed.as_str(), Kind::NoRoom.as_str()])
        .await?
    else {
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
