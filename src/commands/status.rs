use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{context, output};
use crate::config::{JobSettings, Trigger};
use crate::db::{Database, PendingAlert, Run};
use crate::schedule;

#[derive(Serialize)]
struct JobStatus {
    name: String,
    server_id: crate::domain::ServerId,
    next_run_at: Option<DateTime<Utc>>,
    last_run: Option<Run>,
    last_success_at: Option<DateTime<Utc>>,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct Status {
    jobs: Vec<JobStatus>,
    pending_alerts: Vec<PendingAlert>,
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
    job: &JobSettings,
    now: DateTime<Utc>,
) -> anyhow::Result<JobStatus> {
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
                humantime::format_duration(*lead),
                humantime::format_duration(Duration::from_secs(p.as_secs())),
                durations.len()
            ));
        }
    }
    Ok(JobStatus {
        name: job.name.clone(),
        server_id: job.server_id,
        next_run_at: schedule::next_fire(job, now),
        last_run: db.last_run(&job.name).await?,
        last_success_at: db
            .last_success(&job.name)
            .await?
            .and_then(|r| r.finished_at),
        warnings,
    })
}

pub async fn run(config: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let settings = context::config_settings(config)?;
    let db = context::open_db(&settings).await?;
    let now = Utc::now();
    let mut jobs = Vec::new();
    for job in &settings.jobs {
        jobs.push(job_status(&db, job, now).await?);
    }
    let status = Status {
        jobs,
        pending_alerts: db.pending_alerts().await?,
    };
    db.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = status
        .jobs
        .iter()
        .map(|j| {
            let tz = settings
                .job(&j.name)
                .map_or(chrono_tz::Tz::UTC, |s| s.timezone);
            vec![
                j.name.clone(),
                j.server_id.to_string(),
                j.next_run_at.map_or("never".into(), |t| {
                    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
                }),
                j.last_run.as_ref().map_or("-".into(), |r| {
                    format!("{} {} (run {})", output::time(r.started_at), r.status, r.id)
                }),
                j.last_success_at.map_or("never".into(), output::time),
            ]
        })
        .collect();
    output::table(
        &[
            "JOB",
            "SERVER",
            "NEXT RUN",
            "LAST RUN (UTC)",
            "LAST SUCCESS (UTC)",
        ],
        &rows,
    );
    for j in &status.jobs {
        for w in &j.warnings {
            println!("\nwarning: {}: {w}", j.name);
        }
    }
    if settings.email.is_none() {
        println!("\nemail alerts: off ([email] not configured)");
    } else if status.pending_alerts.is_empty() {
        println!("\nalerts: none waiting to be delivered");
    } else {
        println!(
            "\nalerts waiting to be delivered: {}",
            status.pending_alerts.len()
        );
        for a in &status.pending_alerts {
            println!(
                "  {} queued {} UTC, {} attempt(s){}",
                a.subject,
                output::time(a.created_at),
                a.attempts,
                a.last_error
                    .as_deref()
                    .map_or(String::new(), |e| format!(", last error: {e}"))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
