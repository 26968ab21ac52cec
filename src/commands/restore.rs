use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;

use super::{UsageError, output, setup};
use crate::api::{Snapshot, SnapshotStatus};
use crate::cli::RestoreArgs;
use crate::config::{JobSettings, Settings};
use crate::db::{Database, RunStatus};
use crate::domain::SnapshotId;
use crate::presence::Presence;
use crate::run::{self, Outcome, RestoreRequest, Runner};

pub async fn run(config: &Path, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let settings = setup::config_settings(config)?;
    let clock = crate::clock::system();
    let client = setup::client(&settings, clock.clone())?;
    let snap = restorable(&client, args.snapshot_id).await?;
    let job = run::job_for(&settings.jobs, &snap);
    let safety = !args.no_safety_snapshot;
    announce(&snap);
    announce_safety(&snap, job, safety)?;
    if args.dry_run {
        return dry_run(&settings, &client, &snap, job.filter(|_| safety)).await;
    }
    if !args.yes {
        confirm(&snap)?;
    }
    let db = setup::open_db(&settings).await?;
    let outbox = crate::alert::Outbox::from_settings(&settings, db.clone(), clock.clone())?;
    if let Some(o) = &outbox {
        o.register().await?;
    }
    let runner = Runner::from_settings(&settings, db.clone(), client, clock);
    let presence = Presence::of_runner(&runner);
    let outcome = runner
        .restore(RestoreRequest {
            snapshot: &snap,
            job,
            safety,
        })
        .await?;
    presence.leave().await;
    // The operators hear of it now (how to undo it, or why it did not happen); if the
    // mail server is down the alert stays queued for the daemon.
    if let Some(o) = &outbox {
        o.deliver_all().await;
    }
    let note = db.run(outcome.run_id).await?.and_then(|r| r.note);
    db.close().await;
    report(&snap, outcome, note)
}

/// Snapshot `id` as the API lists it, if a restore from it can go ahead: it exists, is
/// listed consistently, and is completed. Checked before anything is changed.
async fn restorable(client: &crate::api::Client, id: SnapshotId) -> anyhow::Result<Snapshot> {
    let listing = client.list(None).await?;
    let Some(snap) = listing.get(id).cloned() else {
        bail!("no snapshot {id} exists (checked with the API); nothing was changed");
    };
    if listing.doubts(id) {
        bail!(
            "the API lists snapshot {id} inconsistently ({}): not restoring from it; nothing \
             was changed",
            listing.odd()
        );
    }
    // The API restores only a completed snapshot: refused here, before a safety snapshot
    // (and the room it may need) is taken for nothing.
    if snap.status != SnapshotStatus::Completed {
        bail!(
            "snapshot {id} ({}, server {}) is {}, not completed: only a completed snapshot can \
             be restored; nothing was changed",
            snap.name,
            snap.server.id,
            snap.status
        );
    }
    Ok(snap)
}

/// Says whether a safety snapshot is taken first, and how long it is pinned; without a job
/// for the server one would have no retention policy, so that is refused.
fn announce_safety(snap: &Snapshot, job: Option<&JobSettings>, safety: bool) -> anyhow::Result<()> {
    match (safety, job) {
        (true, Some(job)) => println!(
            "First a safety snapshot of the server as it is now is taken and waited for \
             (pinned for {}), so this restore can be undone.",
            crate::human::span(job.restore_safety_keep)
        ),
        (true, None) => bail!(
            "no job is configured for server {}, so a safety snapshot would have no retention \
             policy; add a job for it, or pass --no-safety-snapshot",
            snap.server.id
        ),
        (false, _) => {
            println!("--no-safety-snapshot: no safety snapshot is taken; this CANNOT be undone.")
        }
    }
    Ok(())
}

/// How the restore went: started (with how to undo it), or failed with the run's note
/// and error.
fn report(snap: &Snapshot, outcome: Outcome, note: Option<String>) -> anyhow::Result<ExitCode> {
    match outcome.status {
        RunStatus::Started => {
            println!(
                "restore started (run {}); it takes 5-15 minutes",
                outcome.run_id
            );
            println!("{}", run::undo_note(snap, outcome.safety));
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            if let Some(note) = note {
                println!("{note}");
            }
            bail!(
                "restore failed (run {}): {}",
                outcome.run_id,
                outcome.error.unwrap_or_default()
            )
        }
    }
}

/// What is about to happen, before anything does.
fn announce(snap: &Snapshot) {
    let server = snap
        .server
        .name
        .clone()
        .map_or(snap.server.id.to_string(), |n| {
            format!("{} ({n})", snap.server.id)
        });
    println!(
        "Restoring server {server} from snapshot {} ({}, {}, taken {}).\n\
         This overwrites ALL current data on the server and stops it first.",
        snap.id,
        snap.name,
        snap.status,
        crate::human::fmt_time(snap.created_at)
    );
}

/// On a terminal: the operator types the server id. Off one: `--yes` is required.
fn confirm(snap: &Snapshot) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(
            UsageError("refusing to restore without --yes when not on a terminal".into()).into(),
        );
    }
    print!("Type the server id ({}) to go ahead: ", snap.server.id);
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != snap.server.id.to_string() {
        bail!("not restoring: the answer was not {}", snap.server.id);
    }
    Ok(())
}

/// What the restore would do, touching nothing (and creating no database).
async fn dry_run(
    settings: &Settings,
    client: &crate::api::Client,
    snap: &Snapshot,
    safety_job: Option<&JobSettings>,
) -> anyhow::Result<ExitCode> {
    if let Some(job) = safety_job {
        let db = if settings.database.exists() {
            Some(Database::open_at(&settings.database).await?)
        } else {
            None
        };
        let now = Utc::now();
        let plan = run::dry_run(client, db.as_ref(), job, now, Some(snap.id)).await?;
        if let Some(db) = db {
            db.close().await;
        }
        println!(
            "would take a safety snapshot: {}-prerestore, pinned until {}",
            plan.name,
            crate::human::fmt_time(
                now + chrono::Duration::from_std(job.restore_safety_keep).unwrap_or_default()
            )
        );
        if let Some(why) = plan.no_room() {
            println!("would FAIL: server {}: {why}", snap.server.id);
            println!("\ndry run: nothing was created, deleted, restored or recorded");
            return Ok(ExitCode::FAILURE);
        }
        if let Ok(v) = &plan.make_room
            && !v.is_empty()
        {
            println!("  would first delete to make room: {}", output::ids(v));
        }
        println!("  and wait until it has completed");
    }
    println!(
        "would then restore server {} from snapshot {} ({})",
        snap.server.id, snap.id, snap.name
    );
    println!("\ndry run: nothing was created, deleted, restored or recorded");
    Ok(ExitCode::SUCCESS)
}
