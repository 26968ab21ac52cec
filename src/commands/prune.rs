use std::path::Path;
use std::process::ExitCode;

use super::{output, setup};
use crate::alert::Cause;
use crate::cli::PruneArgs;
use crate::config::{JobSettings, Settings};
use crate::db::{Database, RunStatus};
use crate::presence::Presence;
use crate::run::{self, Runner};

pub async fn run(config: &Path, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let settings = setup::config_settings(config)?;
    let jobs = setup::jobs_to_run(&settings, &args.jobs)?;
    if jobs.is_empty() {
        println!("nothing to prune: no enabled job");
        return Ok(ExitCode::SUCCESS);
    }
    let clock = crate::clock::system();
    if args.dry_run {
        return dry_run(&settings, &jobs).await;
    }
    let db = setup::open_db(&settings).await?;
    let client = setup::client(&settings, clock.clone())?;
    let runner = Runner::from_settings(&settings, db.clone(), client, clock);
    let interrupts = super::run_once::Interrupts::watch(&db, &runner.owner, runner.stop.clone())?;
    let presence = Presence::of_runner(&runner);
    let (outbox, unreachable) = super::run_once::open_outbox(&settings, &runner).await?;
    // A run (a prune too) left by a process that died is finished first, as by run-once.
    for o in runner.resume_interrupted(&settings.jobs).await? {
        println!(
            "{}: finished its interrupted run {} ({})",
            o.job, o.run_id, o.status
        );
    }
    let (mut failed, mut rejected) = (false, false);
    for job in &jobs {
        // Ctrl-C: the prune under way finishes (a delete in flight is never left
        // unrecorded); the next jobs are not pruned.
        if runner.stop.is_cancelled() {
            println!("{}: not pruned (stopped)", job.name);
            continue;
        }
        match runner.prune_job(job).await {
            Ok(o) => {
                failed |= o.status != RunStatus::Succeeded;
                rejected |= o.cause == Some(Cause::Unauthorized);
                let deleted = if o.deleted.is_empty() {
                    "deleted nothing".to_string()
                } else {
                    format!("deleted {}", output::ids(&o.deleted))
                };
                match (&o.status, &o.error) {
                    (RunStatus::Succeeded, None) => {
                        println!("{}: pruned, {deleted} (run {})", o.job, o.run_id);
                    }
                    (RunStatus::Succeeded, Some(w)) => {
                        println!("{}: pruned, {deleted} (run {}); {w}", o.job, o.run_id);
                    }
                    (status, e) => println!(
                        "{}: prune {status}, {deleted} (run {}): {}",
                        o.job,
                        o.run_id,
                        e.as_deref().unwrap_or("")
                    ),
                }
            }
            Err(e) => {
                failed = true;
                tracing::error!("{e}");
            }
        }
    }
    if let Some(o) = &outbox {
        o.deliver(true, &unreachable).await;
    }
    crate::serve::metrics::update_textfile(&runner.db, &settings, runner.clock.now()).await;
    presence.leave().await;
    db.close().await;
    if let Some(code) = interrupts.exit_code() {
        return Ok(ExitCode::from(code));
    }
    Ok(if rejected {
        ExitCode::from(super::EXIT_CONFIG)
    } else if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What each job's prune would delete now, and why; nothing is changed or recorded.
async fn dry_run(settings: &Settings, jobs: &[JobSettings]) -> anyhow::Result<ExitCode> {
    let client = setup::client(settings, crate::clock::system())?;
    // Pins and the journal if the database exists; never create it for a dry run.
    let db = if settings.database.exists() {
        Some(Database::open_at(&settings.database).await?)
    } else {
        None
    };
    let now = chrono::Utc::now();
    for job in jobs {
        let plan = run::dry_run(&client, db.as_ref(), job, now, None).await?;
        println!(
            "job {} (server {}): {} now",
            job.name,
            job.server_id,
            crate::human::count(plan.listing.held(), "snapshot")
        );
        if !plan.listing.consistent() {
            println!(
                "  the API's listing is inconsistent ({}): nothing would be deleted",
                plan.listing.odd()
            );
        }
        for id in &plan.prune {
            let name = plan.listing.get(*id).map_or("", |s| s.name.as_str());
            let why = plan
                .verdicts
                .iter()
                .find(|v| v.id == *id)
                .map_or("", |v| v.reason.as_str());
            println!("  would delete: {id} ({name}) — {why}");
        }
        if plan.prune.is_empty() {
            println!("  would delete nothing");
        } else if plan.prune.len() as u32 >= job.max_deletions_per_run {
            println!(
                "  (at most max_deletions_per_run = {} a prune: prune again for more)",
                job.max_deletions_per_run
            );
        }
    }
    if let Some(db) = db {
        db.close().await;
    }
    println!("\ndry run: nothing was deleted or recorded");
    Ok(ExitCode::SUCCESS)
}
