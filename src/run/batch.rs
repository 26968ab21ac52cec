//! Several jobs at once, as `run-once` runs them.

use std::sync::Arc;

use super::{Outcome, Runner};
use crate::config::JobSettings;
use crate::db::{DbError, RunTrigger};

/// Runs `jobs` now: different servers in parallel (at most `max_concurrent` at once), one
/// server's jobs one after another. Outcomes in the order of `jobs`; once the runner's
/// `stop` is cancelled no run starts, and the jobs not started are left out.
pub async fn run_many(
    runner: &Runner,
    jobs: &[JobSettings],
    max_concurrent: usize,
    trigger: RunTrigger,
) -> Vec<Result<Outcome, DbError>> {
    let mut by_server: std::collections::BTreeMap<crate::domain::ServerId, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        by_server.entry(j.server_id).or_default().push(i);
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (_, idxs) in by_server {
        let runner = runner.clone();
        let permits = permits.clone();
        let group: Vec<(usize, JobSettings)> =
            idxs.into_iter().map(|i| (i, jobs[i].clone())).collect();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for (i, job) in group {
                let permit = tokio::select! {
                    p = permits.acquire() => p,
                    () = runner.stop.cancelled() => break,
                };
                let Ok(_permit) = permit else {
                    break;
                };
                if runner.stop.is_cancelled() {
                    break;
                }
                out.push((i, runner.run_job(&job, trigger, None).await));
            }
            out
        });
    }
    let mut results: Vec<Option<Result<Outcome, DbError>>> =
        (0..jobs.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(group) => {
                for (i, r) in group {
                    results[i] = Some(r);
                }
            }
            Err(e) => tracing::error!("a run task panicked: {e}"),
        }
    }
    let stopped = runner.stop.is_cancelled();
    results
        .into_iter()
        .zip(jobs)
        .filter(|(r, _)| r.is_some() || !stopped)
        .map(|(r, j)| {
            r.unwrap_or_else(|| {
                Err(DbError {
                    path: runner.db.path().to_path_buf(),
                    what: format!("the run of {} did not finish", j.name),
                    detail: "its task ended abnormally".to_string(),
                    source: None,
                })
            })
        })
        .collect()
}
