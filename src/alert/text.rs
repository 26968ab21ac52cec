//! What alerts say: every subject and body the agent sends is written here.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::api::Snapshot;
use crate::db::{NewAlert, Run};
use crate::domain::{AlertKind, RunId, ServerId, SnapshotId};
use crate::hooks::{Phase, Ran};
use crate::human::{fmt_age, fmt_time};

pub fn subject(kind: AlertKind, job: &str, server_id: ServerId) -> String {
    format!("[agent] {} {job} (server {server_id})", kind.headline())
}

/// What went wrong, as far as the advice to the operator goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The server has no room, and nothing may be deleted to make it.
    NoRoom,
    /// The snapshot did not complete within `snapshot_timeout`.
    NotCompleted,
    /// The provider reported the snapshot as failed.
    SnapshotFailed,
    /// The API rejected the token.
    Unauthorized,
    /// The API was unreachable or failing.
    ApiDown,
    /// A `before` hook failed (and `before_failure = "skip"`), or an `after` hook did.
    Hook,
    Other,
}

/// The facts a failure alert reports.
pub struct Failure<'a> {
    pub cause: Cause,
    pub job: &'a str,
    pub server_id: ServerId,
    pub run_id: RunId,
    pub step: &'a str,
    pub error: &'a str,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub last_good: Option<&'a Run>,
    pub listing: &'a [Snapshot],
    pub hooks: &'a [Ran],
}

fn advice(cause: Cause, job: &str) -> Vec<String> {
    let mut out: Vec<String> = match cause {
        Cause::Unauthorized => vec![
            "The API token was rejected: put a valid token in the token file and run `agent check`.".into(),
        ],
        Cause::NoRoom => vec![format!(
            "The server has no room: delete or unpin one of the snapshots listed above \
             (`agent snapshots --job {job}`, `agent unpin ID`)."
        )],
        Cause::NotCompleted => vec![
            "The snapshot did not finish in time: check the server in the VPS.org panel; raise snapshot_timeout if it is simply slow.".into(),
        ],
        Cause::SnapshotFailed => vec![
            "The provider reported the snapshot as failed: check the server's state in the VPS.org panel.".into(),
        ],
        Cause::ApiDown => vec![
            "The API was unreachable or failing: the job runs again at its next time; run it by hand when the API is back.".into(),
        ],
        Cause::Hook => vec![
            "A hook failed: its output is above. Run it by hand as the service user to see why; \
             `agent check` verifies that every hook's program exists."
                .into(),
        ],
        Cause::Other => Vec::new(),
    };
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

/// The hooks a run ran, each with its status and the end of its output; a failed
/// `after` first of all (the application may still be frozen).
fn write_hooks(body: &mut String, hooks: &[Ran]) {
    if hooks.is_empty() {
        return;
    }
    if hooks
        .iter()
        .any(|h| h.phase == Phase::After && !h.finished.ok())
    {
        body.push_str(
            "\nAN AFTER HOOK FAILED: what `before` did may not be undone (a frozen file \
             system or a held lock). Check the application now and undo it by hand.\n",
        );
    }
    body.push_str("\nHooks:\n");
    for h in hooks {
        let report = h.finished.report().replace('\n', "\n      ");
        let _ = writeln!(body, "  {} `{}`: {report}", h.phase.as_str(), h.command);
    }
}

/// A hook that failed without failing its run (`before` with `before_failure =
/// "snapshot-anyway"`), or an `after` the next start had to run for a run whose agent
/// died: `what` says which, `hooks` what ran.
pub fn hook(
    job: &str,
    server_id: ServerId,
    run_id: RunId,
    what: &str,
    hooks: &[Ran],
    at: DateTime<Utc>,
) -> NewAlert {
    let mut body = format!("Snapshot job {job} on server {server_id}, run {run_id}: {what}\n");
    write_hooks(&mut body, hooks);
    let _ = writeln!(
        body,
        "\nSee what happened: agent history --job {job} --json"
    );
    alert(AlertKind::Hook, job, server_id, Some(run_id), body, at)
}

pub fn failure(f: &Failure<'_>) -> NewAlert {
    let (kind, what) = match f.cause {
        Cause::NoRoom => (AlertKind::NoRoom, "could not make room for a new snapshot"),
        _ => (AlertKind::Failed, "failed"),
    };
    let mut body = format!(
        "Snapshot job {} on server {} {what}.\n\n",
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
    write_hooks(&mut body, f.hooks);
    body.push_str("\nWhat to do next:\n");
    for line in advice(f.cause, f.job) {
        let _ = writeln!(body, "  - {line}");
    }
    alert(
        kind,
        f.job,
        f.server_id,
        Some(f.run_id),
        body,
        f.finished_at,
    )
}

fn alert(
    kind: AlertKind,
    job: &str,
    server_id: ServerId,
    run_id: Option<RunId>,
    body: String,
    at: DateTime<Utc>,
) -> NewAlert {
    NewAlert {
        job: Some(job.to_string()),
        server_id: Some(server_id),
        run_id,
        kind,
        subject: subject(kind, job, server_id),
        body,
        created_at: at,
    }
}

/// A notice from a check rather than a run's end: the text, and when it was seen.
fn notice(
    kind: AlertKind,
    job: &str,
    server_id: ServerId,
    run_id: Option<RunId>,
    text: &str,
    at: DateTime<Utc>,
) -> NewAlert {
    let body = format!("{text}\n\nDetected at {}.\n", fmt_time(at));
    alert(kind, job, server_id, run_id, body, at)
}

pub fn recovered(
    job: &str,
    server_id: ServerId,
    run_id: RunId,
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
    alert(AlertKind::Recovered, job, server_id, Some(run_id), body, at)
}

/// A restore was started: from what, and how to undo it.
pub fn restored(
    job: &str,
    server_id: ServerId,
    run_id: RunId,
    from: &Snapshot,
    safety: Option<SnapshotId>,
    at: DateTime<Utc>,
) -> NewAlert {
    let mut body = format!(
        "Server {server_id} is being restored from snapshot {} ({}, taken {}).\n\n",
        from.id,
        from.name,
        fmt_time(from.created_at)
    );
    let _ = writeln!(body, "Run:     {run_id} (agent history --job {job})");
    let _ = writeln!(
        body,
        "Started: {} (the API takes 5-15 minutes)",
        fmt_time(at)
    );
    match safety {
        Some(id) => {
            let _ = writeln!(
                body,
                "\nThe server's state just before was saved as snapshot {id} (pinned).\n\
                 To undo: agent restore {id}"
            );
        }
        None => body.push_str("\nNo safety snapshot was taken (--no-safety-snapshot).\n"),
    }
    alert(AlertKind::Restored, job, server_id, Some(run_id), body, at)
}

/// A restore that did not happen, and why.
pub fn restore_failed(
    job: &str,
    server_id: ServerId,
    run_id: RunId,
    from: &Snapshot,
    error: &str,
    at: DateTime<Utc>,
) -> NewAlert {
    let body = format!(
        "The restore of server {server_id} from snapshot {} ({}) was not done.\n\n\
         Error: {error}\nRun:   {run_id} (agent history --job {job})\nAt:    {}\n\n\
         Check the server in the panel; `agent snapshots --server {server_id}` shows its snapshots.\n",
        from.id,
        from.name,
        fmt_time(at)
    );
    alert(AlertKind::Failed, job, server_id, Some(run_id), body, at)
}

/// An `agent prune` that failed: what it deleted before, and why it stopped.
pub fn prune_failed(
    job: &str,
    server_id: ServerId,
    run_id: RunId,
    deleted: &[SnapshotId],
    error: &str,
    at: DateTime<Utc>,
) -> NewAlert {
    let deleted = if deleted.is_empty() {
        "nothing".to_string()
    } else {
        deleted
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let body = format!(
        "Pruning job {job}'s snapshots on server {server_id} did not finish.\n\n\
         Error:   {error}\nDeleted: {deleted}\nRun:     {run_id} (agent history --job {job})\n\
         At:      {}\n\n`agent snapshots --job {job}` shows what the server holds and what \
         the policy would delete; `agent prune --job {job}` tries again.\n",
        fmt_time(at)
    );
    alert(AlertKind::Failed, job, server_id, Some(run_id), body, at)
}

/// No success for `stale_after`: the last success (if any) at `since`.
pub fn stale(
    job: &str,
    server_id: ServerId,
    since: DateTime<Utc>,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> NewAlert {
    let text = format!(
        "Job {job} has had no successful snapshot for {} (since {}).\n\
         Check `agent status` and `agent history --job {job}`; is the agent running and the schedule right?",
        fmt_age(now - since),
        last.map_or("the agent started".to_string(), fmt_time),
    );
    notice(AlertKind::Stale, job, server_id, None, &text, now)
}

/// A maintenance window opened before the snapshot `(id, name)` completed.
pub fn window_not_ready(
    job: &str,
    server_id: ServerId,
    run_id: RunId,
    snapshot: (SnapshotId, &str),
    opens: DateTime<Utc>,
    now: DateTime<Utc>,
) -> NewAlert {
    let text = format!(
        "The snapshot for job {job} (id {}, {}) was not completed when the maintenance window opened at {}.\n\
         The agent keeps waiting for it; hold the maintenance until it completes.",
        snapshot.0,
        snapshot.1,
        fmt_time(opens)
    );
    notice(
        AlertKind::NotReadyBeforeWindow,
        job,
        server_id,
        Some(run_id),
        &text,
        now,
    )
}

/// Snapshots `gone` (id, name) the job made vanished without the agent deleting them.
pub fn drift(
    job: &str,
    server_id: ServerId,
    run_id: RunId,
    gone: &[(SnapshotId, String)],
    now: DateTime<Utc>,
) -> NewAlert {
    let mut text = format!(
        "Snapshots made by job {job} vanished from server {server_id} without the agent deleting them:\n"
    );
    for (id, name) in gone {
        let _ = writeln!(text, "  {id}  {name}");
    }
    text.push_str("\nSomeone deleted them in the panel or through the API. If that was not intended, find out who.");
    notice(AlertKind::Drift, job, server_id, Some(run_id), &text, now)
}

/// What `agent check --send-test-alert` sends on a `[[notify]]` channel.
pub fn test_alert() -> (String, String) {
    let host = crate::identity::host_name();
    (
        "[agent] test alert".to_string(),
        format!(
            "This is a test alert from vps-snapshot-agent on {host}.\nIf you can read it, alerts will reach you here.\n"
        ),
    )
}

/// A daemon on the database (agent `id`, on `host`) stopped heartbeating at `seen_at`
/// without stopping cleanly, while the one that noticed lives.
pub fn agent_gone(id: &str, host: &str, seen_at: DateTime<Utc>, now: DateTime<Utc>) -> NewAlert {
    let mut body = format!(
        "The agent daemon on host {host} ({id}) stopped heartbeating: last seen {} ({} ago), \
         and it did not stop cleanly.\n\n",
        fmt_time(seen_at),
        fmt_age(now - seen_at)
    );
    body.push_str(
        "The agents still alive run every fire and finish the runs it left; until it is back \
         this database has one agent fewer to fall back on.\n\nWhat to do next:\n",
    );
    let _ = writeln!(
        body,
        "  - on {host}: systemctl status vps-snapshot-agent; journalctl -u vps-snapshot-agent"
    );
    body.push_str("  - agent status lists the agents alive on this database\n");
    NewAlert {
        job: None,
        server_id: None,
        run_id: None,
        kind: AlertKind::AgentGone,
        subject: format!("[agent] {} {host}", AlertKind::AgentGone.headline()),
        body,
        created_at: now,
    }
}
