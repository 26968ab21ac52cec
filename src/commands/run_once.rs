use std::path::Path;
use std::process::ExitCode;

use chrono::Utc;

use super::{context, output};
use crate::alert as mail;
use crate::cli::RunOnceArgs;
use crate::clock::SharedClock;
use crate::config::{JobSettings, Settings};
use crate::db::{Database, RunStatus, RunTrigger};
use crate::run::{self, Runner};

pub async fn run(config: &Path, args: RunOnceArgs) -> anyhow::Result<ExitCode> {
    let settings = context::config_settings(config)?;
    let jobs = context::select_jobs(&settings, &args.jobs)?;
    let clock = crate::clock::system();
    if args.dry_run {
        return dry_run(&settings, &jobs, clock).await;
    }
    let db = context::open_db(&settings).await?;
    let client = context::client(&settings, clock.clone())?;
    let runner = Runner::from_settings(&settings, db.clone(), client, clock.clone());
    let failed = run_jobs(&settings, &runner, &jobs).await?;
    db.close().await;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What `run-once` and `demo` share: deliver old alerts, resume interrupted runs, run the
/// jobs, print the summary, try once to deliver new alerts. `true` if any run failed.
pub async fn run_jobs(
    settings: &Settings,
    runner: &Runner,
    jobs: &[JobSettings],
) -> anyhow::Result<bool> {
    let mailer = mail::Mailer::from_settings(
        settings.email.as_ref(),
        runner.db.clone(),
        runner.clock.clone(),
    )?;
    // Alerts queued earlier go first, backoff or not; if the mail server is unreachable
    // now, the new ones stay queued for the daemon rather than costing a second timeout.
    let reachable = match &mailer {
        Some(m) => !matches!(m.deliver_all().await, mail::Delivery::Failed(_)),
        None => false,
    };
    for o in runner.resume_interrupted(&settings.jobs).await? {
        tracing::info!(run = %o.run_id, job = %o.job, status = %o.status, "finished an interrupted run");
    }
    let results = run::run_many(
        runner,
        jobs,
        settings.api.max_concurrent_jobs,
        RunTrigger::Manual,
    )
    .await;
    let mut outcomes = Vec::new();
    let mut failed = false;
    for r in results {
        match r {
            Ok(o) => {
                failed |= o.status != RunStatus::Succeeded;
                outcomes.push(o);
            }
            Err(e) => {
                failed = true;
                tracing::error!("{e}");
            }
        }
    }
    output::summary(&outcomes);
    if let Some(m) = &mailer
        && reachable
    {
        m.deliver_all().await;
    }
    Ok(failed)
}

async fn dry_run(
    settings: &Settings,
    jobs: &[JobSettings],
    clock: SharedClock,
) -> anyhow::Result<ExitCode> {
    let client = context::client(settings, clock)?;
    // Pins and the journal if the database exists; never create it for a dry run.
    let db = if settings.database.exists() {
        Some(Database::open(&settings.database).await?)
    } else {
        None
    };
    let now = Utc::now();
    for job in jobs {
        let plan = run::dry_run(&client, db.as_ref(), job, now).await?;
        println!(
            "job {} (server {}): {} snapshots now",
            job.name,
            job.server_id,
            plan.listing.len()
        );
        match &plan.make_room {
            Ok(v) if v.is_empty() => {}
            Ok(v) => println!("  would delete to make room: {}", output::ids(v)),
            Err(no) => {
                let list: Vec<String> = no
                    .blocking
                    .iter()
                    .map(|(id, why)| format!("{id} ({why})"))
                    .collect();
                println!(
                    "  would FAIL: the server is at the limit and nothing may be deleted; blocking: {}",
                    list.join(", ")
                );
            }
        }
        println!("  would create: {}", plan.name);
        for s in &plan.listing {
            if plan.rotate.contains(&s.id) {
                let why = plan
                    .verdicts
                    .iter()
                    .find(|v| v.id == s.id)
                    .map_or("", |v| v.reason.as_str());
                println!(
                    "  would delete after success: {} ({}) — {why}",
                    s.id, s.name
                );
            }
        }
        if plan.rotate.is_empty() {
            println!("  would delete nothing after success");
        }
    }
    if let Some(db) = db {
        db.close().await;
    }
    println!("\ndry run: nothing was created, deleted or recorded");
    Ok(ExitCode::SUCCESS)
}
