use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{output, setup};
use crate::alert::{self, Cause};
use crate::cli::RunOnceArgs;
use crate::clock::SharedClock;
use crate::config::{JobSettings, Settings};
use crate::db::{Database, RunStatus, RunTrigger};
use crate::hooks::ThawAfter;
use crate::identity::Owner;
use crate::presence::Presence;
use crate::run::{self, Outcome, Runner};

pub async fn run(config: &Path, args: RunOnceArgs) -> anyhow::Result<ExitCode> {
    let settings = setup::config_settings(config)?;
    if settings.jobs.is_empty() {
        eprintln!(
            "agent: nothing to do: {} has no [[jobs]]",
            settings.config_path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let jobs = setup::jobs_to_run(&settings, &args.jobs)?;
    let clock = crate::clock::system();
    if args.dry_run {
        return dry_run(&settings, &jobs, clock).await;
    }
    let db = setup::open_db(&settings).await?;
    let client = setup::client(&settings, clock.clone())?;
    let runner = Runner::from_settings(&settings, db.clone(), client, clock.clone());
    let interrupts = Interrupts::watch(&runner.db, &runner.owner, runner.stop.clone())?;
    let verdict = run_jobs(&settings, &runner, &jobs, true).await?;
    db.close().await;
    if let Some(code) = interrupts.exit_code() {
        return Ok(ExitCode::from(code));
    }
    Ok(match verdict {
        Verdict::Succeeded => ExitCode::SUCCESS,
        Verdict::Failed => ExitCode::FAILURE,
        Verdict::TokenRejected => ExitCode::from(super::EXIT_CONFIG),
    })
}

/// How a `run-once` went, for its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// A run failed (or was left unfinished by a stop).
    Failed,
    /// The API rejected the token: a configuration problem, exit 78 like `check`.
    TokenRejected,
}

/// What `run-once` and `demo` share: deliver old alerts, resume interrupted runs, run the
/// jobs, print the summary, try once to deliver new alerts. A job whose interrupted run
/// was just finished successfully, and began within [`run::STAND_IN`], counts that run as
/// this one: one snapshot, not two. An older one is not a fresh rollback point. `shown`:
/// what happens and the summary are printed (`run-once`), or only logged (a harness
/// running it in-process).
pub async fn run_jobs(
    settings: &Settings,
    runner: &Runner,
    jobs: &[JobSettings],
    shown: bool,
) -> anyhow::Result<Verdict> {
    let say = |line: String| {
        if shown {
            println!("{line}");
        }
    };
    let presence = Presence::of_runner(runner);
    let (outbox, unreachable) = open_outbox(settings, runner).await?;
    let pinger = outbox
        .clone()
        .map(|o| Pinger::start(o, runner.kick.clone()));
    let mut outcomes = resume_standing_in(settings, runner, jobs, &say).await?;
    let todo: Vec<JobSettings> = jobs
        .iter()
        .filter(|j| !outcomes.iter().any(|o| o.job == j.name))
        .cloned()
        .collect();
    let mut failed = run_todo(settings, runner, &todo, &mut outcomes).await;
    let skipped: Vec<&str> = todo
        .iter()
        .filter(|j| !outcomes.iter().any(|o| o.job == j.name))
        .map(|j| j.name.as_str())
        .collect();
    if shown {
        output::summary(&outcomes);
    }
    if !skipped.is_empty() && runner.stop.is_cancelled() {
        failed = true;
        say(format!("not started (stopped): {}", skipped.join(", ")));
    }
    if let Some(p) = pinger {
        p.finish().await;
    }
    if let Some(o) = &outbox {
        o.deliver(true, &unreachable).await;
    }
    crate::serve::metrics::update_textfile(&runner.db, settings, runner.clock.now()).await;
    presence.leave().await;
    Ok(verdict(&outcomes, failed))
}

/// Finishes the runs that interrupted processes left, saying what became of those of
/// `jobs`; returns the ones that stand in for this run (their jobs are not run again).
async fn resume_standing_in(
    settings: &Settings,
    runner: &Runner,
    jobs: &[JobSettings],
    say: &impl Fn(String),
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for o in runner.resume_interrupted(&settings.jobs).await? {
        tracing::info!(run = o.run_id.get(), job = %o.job, status = %o.status, "finished an interrupted run");
        if !jobs.iter().any(|j| j.name == o.job) {
            continue;
        }
        let now = runner.clock.now();
        if o.stands_in(now) {
            say(format!(
                "{}: finished its interrupted run {} (begun {} ago); that snapshot counts as this run's",
                o.job,
                o.run_id,
                crate::human::fmt_age(now - o.started_at)
            ));
            outcomes.push(o);
        } else {
            say(format!(
                "{}: finished its interrupted run {} ({}, begun at {}) as a run of its own; \
                 taking a fresh snapshot now",
                o.job,
                o.run_id,
                o.status,
                crate::human::table_time(o.started_at)
            ));
        }
    }
    Ok(outcomes)
}

/// Runs the jobs of `todo` (as many at once as the configuration allows), adding their
/// outcomes to `outcomes`; true when a run failed or could not be run at all (logged).
async fn run_todo(
    settings: &Settings,
    runner: &Runner,
    todo: &[JobSettings],
    outcomes: &mut Vec<Outcome>,
) -> bool {
    let results = run::run_many(
        runner,
        todo,
        settings.api.max_concurrent_jobs,
        RunTrigger::Manual,
    )
    .await;
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
    failed
}

/// The verdict on the runs: a rejected token before anything else (it is the
/// configuration's problem, not the runs'), then any failure.
fn verdict(outcomes: &[Outcome], failed: bool) -> Verdict {
    let rejected = outcomes
        .iter()
        .any(|o| o.cause == Some(Cause::Unauthorized));
    if rejected {
        Verdict::TokenRejected
    } else if failed {
        Verdict::Failed
    } else {
        Verdict::Succeeded
    }
}

/// The outbox with its channels registered, after one attempt to deliver what was
/// queued before (backoff or not); the channels that failed it are not tried again at
/// the end (their new alerts stay queued for the daemon rather than costing a second
/// timeout).
pub(super) async fn open_outbox(
    settings: &Settings,
    runner: &Runner,
) -> anyhow::Result<(Option<Arc<alert::Outbox>>, Vec<String>)> {
    let outbox = alert::Outbox::from_settings(settings, runner.db.clone(), runner.clock.clone())?
        .map(Arc::new);
    let Some(o) = &outbox else {
        runner.db.set_channels(&[]).await?;
        return Ok((None, Vec::new()));
    };
    o.register().await?;
    // What was queued before goes first, backoff or not: pings in their order, then
    // alerts.
    o.deliver_pings(true).await;
    let failed = o.deliver(true, &[]).await.failed;
    Ok((outbox, failed.into_iter().map(|(c, _)| c).collect()))
}

/// Sends the runs' pings as they are queued (a `/start` is worth little at the end),
/// one round at a time.
struct Pinger {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    outbox: Arc<alert::Outbox>,
}

impl Pinger {
    fn start(outbox: Arc<alert::Outbox>, kick: Arc<tokio::sync::Notify>) -> Self {
        let stop = CancellationToken::new();
        let (o, s) = (outbox.clone(), stop.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = s.cancelled() => return,
                    () = kick.notified() => o.deliver_pings(false).await,
                }
            }
        });
        Self { stop, task, outbox }
    }

    /// Waits for the round in flight, then sends what is left.
    async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.outbox.deliver_pings(false).await;
    }
}

/// SIGINT and SIGTERM for `run-once`: the first stops starting work and lets running
/// runs stop at a safe point, telling the operator what is in flight; the second exits
/// at once. Either way the journal keeps what was sent, and the next start finishes it.
pub(super) struct Interrupts {
    first: Arc<OnceLock<u8>>,
}

impl Interrupts {
    pub(super) fn watch(
        db: &Database,
        owner: &Owner,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut stops = crate::daemon::signals::stops()?;
        let first = Arc::new(OnceLock::new());
        let (db, owner, seen) = (db.clone(), owner.clone(), first.clone());
        tokio::spawn(async move {
            let Some(code) = stops.recv().await else {
                return;
            };
            let _ = seen.set(code);
            stop.cancel();
            let in_flight = in_flight(&db, &owner).await;
            if in_flight.is_empty() {
                eprintln!("agent: stopping: no new runs start");
            } else {
                eprintln!(
                    "agent: stopping: no new runs start; waiting for {} to reach a safe point.\n\
                     agent: a run stopped while its snapshot is being made stays recorded as running, \
                     and the next start (`agent run-once` or the daemon) finishes it.\n\
                     agent: press Ctrl-C again to exit now.",
                    in_flight.join(", ")
                );
            }
            stops.recv().await;
            eprintln!(
                "agent: second signal: exiting now; runs in flight stay recorded and the next start finishes them"
            );
            std::process::exit(i32::from(code));
        });
        Ok(Self { first })
    }

    /// 130 (SIGINT) or 143 (SIGTERM) once a signal came.
    pub(super) fn exit_code(&self) -> Option<u8> {
        self.first.get().copied()
    }
}

/// This process's runs still going, as "web (run 3, poll)".
async fn in_flight(db: &Database, owner: &Owner) -> Vec<String> {
    match db.running().await {
        Ok(runs) => runs
            .into_iter()
            .filter(|r| r.owner == owner.as_str())
            .map(|r| format!("{} (run {}, {})", r.job, r.id, r.step))
            .collect(),
        Err(e) => vec![format!("runs unknown: {e}")],
    }
}

/// The hooks a run of `job` would run, and when.
fn print_hooks(job: &JobSettings) {
    let h = &job.hooks;
    for c in &h.before {
        println!("  would run before: {c}");
    }
    let when = match h.thaw_after {
        ThawAfter::Created => "once the create is accepted",
        ThawAfter::Completed => "once the snapshot completes",
    };
    for c in &h.after {
        println!("  would run after ({when}, and whenever the run ends early): {c}");
    }
    for c in &h.on_failure {
        println!("  would run on_failure if the run fails: {c}");
    }
}

async fn dry_run(
    settings: &Settings,
    jobs: &[JobSettings],
    clock: SharedClock,
) -> anyhow::Result<ExitCode> {
    let client = setup::client(settings, clock)?;
    // Pins and the journal if the database exists; never create it for a dry run.
    let db = if settings.database.exists() {
        Some(Database::open_at(&settings.database).await?)
    } else {
        None
    };
    let now = Utc::now();
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
        match (&plan.make_room, plan.no_room()) {
            (_, Some(why)) => println!("  would FAIL: {why}"),
            (Ok(v), None) if !v.is_empty() => {
                println!("  would delete to make room: {}", output::ids(v));
            }
            _ => {}
        }
        print_hooks(job);
        println!("  would create: {}", plan.name);
        for s in &plan.listing.snapshots {
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
