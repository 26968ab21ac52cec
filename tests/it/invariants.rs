//! The safety invariants, checked after a scenario from the simulator's log of what
//! happened and the agent's history. Every violation is reported, not just the first.

use std::collections::HashMap;
use std::time::Duration;

use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::db::{Database, RunKind, RunStatus};
use vps_snapshot_agent::naming;
use vps_snapshot_agent::sim::{Event, Simulator};

pub struct Expect {
    /// Alerts are configured, so every failure must have one queued or delivered.
    pub alerts: bool,
    pub repeat_after: Duration,
}

pub async fn check(sim: &Simulator, db: &Database, expect: &Expect) {
    let mut bad = Vec::new();
    let events = sim.events();
    let runs = db.history(None, u32::MAX).await.unwrap();
    let pins = db.pins().await.unwrap();

    // Deletions by the agent: only its own, never pinned, never in progress, never the
    // newest completed one of its job.
    for e in &events {
        if let Event::Deleted {
            id,
            name,
            status,
            external: false,
            newer_completed_sibling,
            ..
        } = e
        {
            if naming::parse(name).is_none() {
                bad.push(format!("deleted unmanaged snapshot {id} ({name})"));
            }
            if pins.contains(id) {
                bad.push(format!("deleted pinned snapshot {id}"));
            }
            if *status == SnapshotStatus::InProgress {
                bad.push(format!("deleted snapshot {id} while in progress"));
            }
            if *status == SnapshotStatus::Completed && !newer_completed_sibling {
                bad.push(format!(
                    "deleted snapshot {id} ({name}), the newest completed one of its job"
                ));
            }
        }
    }

    // Nothing deleted by a run whose snapshot did not complete, except to make room.
    let deletes: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT run_id, detail FROM actions WHERE action = 'delete' AND outcome = 'ok'",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    for (run_id, detail) in &deletes {
        let run = runs.iter().find(|r| r.id == *run_id).unwrap();
        let completed =
            run.snapshot.as_ref().and_then(|s| s.status.as_deref()) == Some("completed");
        if !completed && detail.as_deref() != Some("make room") {
            bad.push(format!(
                "run {run_id} ({:?}) deleted after its snapshot did not complete: {detail:?}",
                run.status
            ));
        }
    }

    // No run made two snapshots: every name is created once, and only runs' names are.
    let mut created: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if let Event::Created { name, .. } = e {
            *created.entry(name.as_str()).or_default() += 1;
        }
    }
    for (name, n) in &created {
        if *n > 1 {
            bad.push(format!("snapshot name {name} created {n} times"));
        }
        if naming::parse(name).is_some()
            && !runs
                .iter()
                .any(|r| r.snapshot.as_ref().is_some_and(|s| s.name == *name))
        {
            bad.push(format!("snapshot {name} created but no run records it"));
        }
    }
    let snapshot_runs = runs.iter().filter(|r| r.kind == RunKind::Snapshot).count();
    if created.len() > snapshot_runs {
        bad.push(format!(
            "{} snapshots created by {snapshot_runs} runs",
            created.len()
        ));
    }

    // No run left running.
    for r in runs.iter().filter(|r| r.status == RunStatus::Running) {
        bad.push(format!(
            "run {} of {} left running (step {})",
            r.id, r.job, r.step
        ));
    }

    // Every failure has an alert queued or delivered (or one for the same job within
    // repeat_after, which it repeats).
    if expect.alerts {
        let alerts: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT job, created_at FROM alerts WHERE kind IN ('failed', 'no_room')",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        let window = expect.repeat_after.as_millis() as i64;
        for r in runs
            .iter()
            .filter(|r| r.status == RunStatus::Failed && r.kind == RunKind::Snapshot)
        {
            let done = r.finished_at.unwrap().timestamp_millis();
            let covered = alerts.iter().any(|(job, at)| {
                job.as_deref() == Some(r.job.as_str()) && *at <= done && done - *at <= window
            });
            if !covered {
                bad.push(format!("failed run {} of {} has no alert", r.id, r.job));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "invariants violated:\n  {}",
        bad.join("\n  ")
    );
}
