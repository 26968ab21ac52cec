use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{output, setup};
use crate::cli::StatusArgs;
use crate::config::{JobSettings, Trigger};
use crate::db::{AgentRole, AgentRow, Database, Leases, PendingAlert, Run, RunStatus};
use crate::job_state::JobState;

#[derive(Serialize)]
struct JobStatus {
    name: String,
    server_id: crate::domain::ServerId,
    /// `enabled = false`: it never fires (`next_run_at` is null) and is never stale.
    enabled: bool,
    next_run_at: Option<DateTime<Utc>>,
    /// The same time in the job's zone (RFC 3339 with its offset).
    next_run_at_local: Option<String>,
    timezone: String,
    /// The last 30 runs, oldest first: succeeded, failed, interrupted, and running last
    /// when one is.
    timeline: Vec<RunStatus>,
    last_run: Option<Run>,
    /// The last run is `running` but the process running it is gone: the next start of
    /// the agent finishes it.
    last_run_orphaned: bool,
    last_success_at: Option<DateTime<Utc>>,
    /// Seconds since the last success.
    last_success_age_secs: Option<i64>,
    stale_after_secs: u64,
    /// No success for longer than `stale_after`.
    stale: bool,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Status {
    jobs: Vec<JobStatus>,
    pending_alerts: Vec<PendingAlert>,
    /// The agents on this database seen in the last week (daemons, and `run-once`s
    /// still running), newest first.
    agents: Vec<AgentRow>,
}

/// The 95th percentile (nearest rank) of `d`.
pub fn p95(d: &[Duration]) -> Option<Duration> {
    if d.is_empty() {
        return None;
    }
    let mut v = d.to_vec();
    v.sort();
    let rank = (v.len() * 95).div_ceil(100).max(1);
    v.get(rank - 1).copied()
}

async fn job_status(
    db: &Database,
    s: JobState<'_>,
    leases: &Leases,
    now: DateTime<Utc>,
) -> anyhow::Result<JobStatus> {
    let job = s.job;
    let mut warnings = Vec::new();
    if let Trigger::Window { lead, .. } = &job.trigger {
        let durations = db.snapshot_durations(&job.name, 50).await?;
        if durations.len() >= 3
            && let Some(p) = p95(&durations)
            && *lead < p
        {
            warnings.push(format!(
                "lead {} is shorter than this job's snapshots take (95th percentile {} over {} runs): \
                 snapshots may not be ready when the window opens",
                crate::human::span(*lead),
                crate::human::span(Duration::from_secs(p.as_secs())),
                durations.len()
            ));
        }
    }
    Ok(JobStatus {
        name: job.name.clone(),
        server_id: job.server_id,
        enabled: job.enabled,
        next_run_at: s.next_fire,
        next_run_at_local: s
            .next_fire
            .map(|t| t.with_timezone(&job.timezone).to_rfc3339()),
        timezone: job.timezone.to_string(),
        timeline: s.timeline,
        last_success_age_secs: s.last_success_at.map(|t| (now - t).num_seconds()),
        stale_after_secs: s.stale_after.as_secs(),
        last_run_orphaned: s.last_run.as_ref().is_some_and(|r| {
            r.status == RunStatus::Running
                && !crate::identity::may_be_alive(&r.owner, leases.of(&r.owner, None), now)
        }),
        last_run: s.last_run,
        last_success_at: s.last_success_at,
        stale: s.stale,
        warnings,
    })
}

pub async fn run(config: &Path, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let settings = setup::config_settings(config)?;
    let (db, _empty) = setup::open_to_read(&settings).await?;
    let now = Utc::now();
    let selected = setup::select_jobs(&settings, &args.jobs)?;
    let refs: Vec<&JobSettings> = selected.iter().collect();
    let leases = db.leases().await?;
    let mut jobs = Vec::new();
    for s in Box::pin(crate::job_state::of_jobs(&db, &refs, now)).await? {
        jobs.push(job_status(&db, s, &leases, now).await?);
    }
    let mut agents = db.agents(now).await?;
    agents.retain(|a| a.listed_at(now));
    let status = Status {
        jobs,
        pending_alerts: db.pending_alerts().await?,
        agents,
    };
    db.close().await;
    if args.check {
        let (code, line) = verdict(&status, now);
        println!("{line}");
        return Ok(ExitCode::from(code));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_jobs(&selected, &status);
    print_agents(&status, now);
    print_alerts(&settings, &status);
    Ok(ExitCode::SUCCESS)
}

/// The jobs' table and their warnings.
fn print_jobs(selected: &[JobSettings], status: &Status) {
    let rows: Vec<Vec<String>> = status
        .jobs
        .iter()
        .zip(selected)
        .map(|(j, settings)| {
            vec![
                j.name.clone(),
                j.server_id.to_string(),
                output::timeline(&j.timeline),
                last_success_cell(j),
                next_run_cell(j, settings.timezone),
                last_run_cell(j),
            ]
        })
        .collect();
    output::table(
        &[
            "JOB",
            "SERVER",
            "LAST 30 RUNS",
            "LAST SUCCESS (UTC)",
            "NEXT RUN",
            "LAST RUN (UTC)",
        ],
        &rows,
    );
    anstream::println!(
        "\n{} succeeded  {} failed  {} interrupted  {} running  (oldest left, newest right)",
        output::timeline(&[RunStatus::Succeeded]),
        output::timeline(&[RunStatus::Failed]),
        output::timeline(&[RunStatus::Interrupted]),
        output::timeline(&[RunStatus::Running])
    );
    for j in &status.jobs {
        for w in &j.warnings {
            println!("\nwarning: {}: {w}", j.name);
        }
    }
}

/// The LAST SUCCESS cell: when, how long ago, and whether that is stale under the
/// job's `stale_after`; "never" without one.
fn last_success_cell(j: &JobStatus) -> String {
    let stale_after = crate::human::span(Duration::from_secs(j.stale_after_secs));
    j.last_success_at.map_or("never".into(), |t| {
        let age = Duration::from_secs(j.last_success_age_secs.unwrap_or(0).max(0) as u64);
        let age = crate::human::fmt_age(chrono::Duration::seconds(age.as_secs() as i64));
        let mark = if j.stale {
            output::paint("STALE")
        } else {
            "ok".into()
        };
        format!(
            "{} ({age} ago; {mark} under {stale_after})",
            crate::human::table_time(t)
        )
    })
}

/// The NEXT RUN cell: in the job's zone `tz`, with the UTC time too when that is another
/// zone; "never" or "disabled" when nothing is due.
fn next_run_cell(j: &JobStatus, tz: chrono_tz::Tz) -> String {
    j.next_run_at.map_or_else(
        || {
            if j.enabled {
                "never".into()
            } else {
                "disabled".into()
            }
        },
        |t| crate::human::local_minute_and_utc(t, tz),
    )
}

/// The LAST RUN cell: when it started, how it stands, where it ran, and whether its
/// process is gone; "-" without one.
fn last_run_cell(j: &JobStatus) -> String {
    j.last_run.as_ref().map_or("-".into(), |r| {
        let gone = if j.last_run_orphaned {
            ", its process is gone: the next start finishes it"
        } else {
            ""
        };
        format!(
            "{} {} (run {} on {}{gone})",
            crate::human::table_time(r.started_at),
            output::paint(r.status),
            r.id,
            r.host
        )
    })
}

/// The agents on the database: alive, or gone (and since when), once there is more than
/// one or one is gone.
fn print_agents(status: &Status, now: DateTime<Utc>) {
    let agents = &status.agents;
    if agents.len() <= 1 && agents.iter().all(|a| a.alive) {
        return;
    }
    let alive = agents.iter().filter(|a| a.alive).count();
    println!("\nagents on this database: {alive} alive");
    for a in agents {
        let state = match (a.alive, a.stopped_at) {
            (true, _) => format!(
                "alive, last heartbeat {} ago",
                crate::human::fmt_age(now - a.seen_at)
            ),
            (false, Some(t)) => format!("stopped {}", crate::human::fmt_time(t)),
            (false, None) => format!(
                "{} since {} (no heartbeat for {})",
                output::paint("GONE"),
                crate::human::fmt_time(a.seen_at),
                crate::human::fmt_age(now - a.seen_at)
            ),
        };
        anstream::println!(
            "  {} {} {} (version {}): {state}",
            a.host,
            a.role,
            a.id,
            a.version
        );
    }
}

/// What waits in the outbox, or why nothing can.
fn print_alerts(settings: &crate::config::Settings, status: &Status) {
    if settings.email.is_none() && settings.notify.is_empty() {
        println!("\nalerts: off (no [email], no [[notify]])");
    } else if status.pending_alerts.is_empty() {
        println!("\nalerts: none waiting to be delivered");
    } else {
        println!(
            "\nalerts waiting to be delivered: {}",
            status.pending_alerts.len()
        );
        for a in &status.pending_alerts {
            let on = if a.channels.is_empty() {
                String::new()
            } else {
                format!(" for {}", a.channels.join(", "))
            };
            println!(
                "  {} queued {} UTC{on}, {} attempt(s){}",
                a.subject,
                crate::human::table_time(a.created_at),
                a.attempts,
                a.last_error
                    .as_deref()
                    .map_or(String::new(), |e| format!(", last error: {e}"))
            );
        }
    }
}

/// `status --check`, as monitoring plugins answer: 0 OK, 1 WARNING, 2 CRITICAL, and one
/// line that says why. Critical: an enabled job whose last run failed or was interrupted,
/// or that is stale. Warning: an alert that could not be delivered, a run whose process is gone, a
/// daemon on the database that stopped heartbeating without stopping.
fn verdict(status: &Status, now: DateTime<Utc>) -> (u8, String) {
    let names = |f: &dyn Fn(&JobStatus) -> bool| -> Vec<&str> {
        status
            .jobs
            .iter()
            .filter(|j| f(j))
            .map(|j| j.name.as_str())
            .collect()
    };
    // A job switched off is not watched: its last failure is no longer news.
    let failed = names(&|j| {
        j.enabled
            && j.last_run
                .as_ref()
                .is_some_and(|r| matches!(r.status, RunStatus::Failed | RunStatus::Interrupted))
    });
    let stale = names(&|j| j.stale);
    let orphaned = names(&|j| j.last_run_orphaned);
    let stuck = status
        .pending_alerts
        .iter()
        .filter(|a| a.attempts > 0)
        .count();
    let mut problems = Vec::new();
    let mut say = |what: &str, v: &[&str]| {
        if !v.is_empty() {
            problems.push(format!("{what}: {}", v.join(", ")));
        }
    };
    say("last run failed", &failed);
    say("stale", &stale);
    say("left running by a stopped agent", &orphaned);
    if stuck > 0 {
        problems.push(format!("{stuck} alert(s) not delivered"));
    }
    let gone: Vec<&str> = status
        .agents
        .iter()
        .filter(|a| a.gone() && a.role == AgentRole::Daemon)
        .map(|a| a.host.as_str())
        .collect();
    if !gone.is_empty() {
        problems.push(format!(
            "agent stopped heartbeating on: {}",
            gone.join(", ")
        ));
    }
    let code = if !failed.is_empty() || !stale.is_empty() {
        2
    } else if !problems.is_empty() {
        1
    } else {
        0
    };
    let line = match code {
        0 => {
            let oldest = status
                .jobs
                .iter()
                .filter(|j| j.enabled)
                .filter_map(|j| j.last_success_at)
                .min()
                .map_or("no success yet".into(), |t| {
                    format!("oldest last success {} ago", crate::human::fmt_age(now - t))
                });
            let disabled = status.jobs.iter().filter(|j| !j.enabled).count();
            let disabled = if disabled > 0 {
                format!(" ({disabled} disabled)")
            } else {
                String::new()
            };
            format!("OK: {} job(s){disabled}; {oldest}", status.jobs.len())
        }
        1 => format!("WARNING: {}", problems.join("; ")),
        _ => format!("CRITICAL: {}", problems.join("; ")),
    };
    (code, line)
}
