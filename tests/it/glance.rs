//! At a glance: `status` draws each job's last 30 runs as a timeline, from a seeded history.

use std::path::Path;

use chrono::{TimeZone, Utc};
use vps_snapshot_agent::db::{Database, Finish, NewRun, Owner, RunKind, RunStatus, RunTrigger};
use vps_snapshot_agent::domain::ServerId;

use crate::cli::{BIN, agent, config, text};

/// Records runs of `job` ending as `ends` (oldest first); `None` leaves one running.
async fn seed(db: &Database, job: &str, ends: &[Option<RunStatus>]) {
    let owner = Owner::current();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 2, 30, 0).unwrap();
    for (i, end) in ends.iter().enumerate() {
        let at = t0 + chrono::Duration::hours(i as i64);
        let run = NewRun {
            job,
            server_id: ServerId::new(5),
            kind: RunKind::Snapshot,
            trigger: RunTrigger::Schedule,
            scheduled_for: Some(at),
            started_at: at,
        };
        let id = db.start_run(run, &owner).await.unwrap();
        if let Some(status) = end {
            let end = Finish {
                status: *status,
                error: (*status != RunStatus::Succeeded).then_some("seeded"),
                step: None,
                at: at + chrono::Duration::minutes(5),
                alerts: &[],
                ping: None,
            };
            db.finish_run(id, &owner, end).await.unwrap();
        }
    }
}

/// `agent status` on a pseudo-terminal (util-linux `script`).
async fn status_on_a_terminal(cfg: &Path) -> String {
    let line = format!("{BIN} --config {} status", cfg.display());
    let out = tokio::process::Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_draws_the_last_30_runs_as_a_timeline() {
    use RunStatus::{Failed as F, Interrupted as I, Succeeded as S};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "http://127.0.0.1:9/api/v1/",
        "[[jobs]]\nname = \"web\"\nserver_id = 5\nschedule = \"0 30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nkeep_last = 2\n[[jobs]]\nname = \"db\"\nserver_id = 6\nschedule = \"0 0 3 * * *\"\nkeep_last = 2\n",
    );
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    // 33 finished runs (the first three fall off), then one running.
    let mut web: Vec<Option<RunStatus>> = vec![Some(F), Some(F), Some(F)];
    for i in 0..30 {
        web.push(Some(match i % 10 {
            3 => F,
            7 => I,
            _ => S,
        }));
    }
    web.push(None);
    seed(&db, "web", &web).await;
    db.close().await;

    let json = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    let marks: Vec<&str> = jobs[0]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(marks.len(), 30, "{marks:?}");
    assert_eq!(marks.last(), Some(&"running"));
    assert_eq!(
        marks[0], "succeeded",
        "the failures before the last 30 are gone"
    );
    assert_eq!(marks.iter().filter(|m| **m == "failed").count(), 3);
    assert_eq!(jobs[1]["timeline"], serde_json::json!([]), "db never ran");
    assert_eq!(jobs[0]["timezone"], "Europe/Berlin");
    assert!(
        jobs[0]["next_run_at_local"]
            .as_str()
            .unwrap()
            .ends_with("+01:00")
    );
    assert_eq!(jobs[0]["stale_after_secs"], 2 * 86_400);
    assert!(jobs[0]["last_success_age_secs"].as_i64().unwrap() > 0);

    // In a pipe: the marks alone tell the statuses apart (shapes, no colour).
    let piped = agent(&cfg, &["status"]).await;
    let out = text(&piped);
    let want: String = marks
        .iter()
        .map(|m| match *m {
            "succeeded" => '●',
            "failed" => '✗',
            "interrupted" => '○',
            _ => '▶',
        })
        .collect();
    assert!(out.contains(&want), "{want} in {out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(
        out.contains("CET (02:30 UTC)") || out.contains("CET (01:30 UTC)"),
        "{out}"
    );
    assert!(
        out.contains("STALE under 2days"),
        "the last success is weeks old: {out}"
    );

    // On a terminal: the same marks, in colour.
    let tty = status_on_a_terminal(&cfg).await;
    assert!(tty.contains("\u{1b}[31m✗"), "{tty:?}");
    assert!(tty.contains("\u{1b}[32m●"), "{tty:?}");
    assert!(tty.contains("\u{1b}[33m▶"), "{tty:?}");
}
