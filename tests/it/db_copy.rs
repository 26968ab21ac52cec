//! `agent db copy`: a SQLite history moved into PostgreSQL whole, runs continuing there.
//! PostgreSQL only: run from `on_postgres`.

use vps_snapshot_agent::db::{AgentRole, Database, RunTrigger};
use vps_snapshot_agent::sim::{Mode, SimOptions};

use crate::cli::{agent, config, text};
use crate::helpers::{ServerId, job, world};

/// What a reader sees of a history: each run with its journal, the pins, the outbox.
async fn seen(db: &Database) -> String {
    let mut out = String::new();
    for run in db.history(None, 1000).await.unwrap() {
        let entries: Vec<_> = db
            .entries(run.id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.id,
                    e.action,
                    e.state,
                    e.snapshot_id,
                    e.snapshot_name,
                    e.at,
                )
            })
            .collect();
        out.push_str(&format!(
            "{} {} {:?} {:?} {:?} {:?} {:?}\n  {entries:?}\n",
            run.id,
            run.job,
            run.status,
            run.snapshot,
            run.deleted_snapshot_ids,
            run.error,
            run.hooks
        ));
    }
    let now = chrono::Utc::now();
    let mut pins: Vec<_> = db.pins(now).await.unwrap().into_iter().collect();
    pins.sort();
    out.push_str(&format!("pins {pins:?}\n"));
    for a in db.pending_alerts().await.unwrap() {
        out.push_str(&format!("alert {} {:?} {}\n", a.id, a.kind, a.subject));
    }
    let summaries = db.job_summaries(&["web", "db"]).await.unwrap();
    for job in ["web", "db"] {
        let s = &summaries[job];
        out.push_str(&format!(
            "{job}: last {:?} success {:?} timeline {:?}\n",
            s.last_run.as_ref().map(|r| r.id),
            s.last_success_at,
            s.timeline
        ));
    }
    out
}

pub(crate) fn a_sqlite_history_is_copied_into_postgres_whole() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let w = world(SimOptions::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("history.db");
        let sqlite = Database::open(&file).await.unwrap();
        sqlite.set_channels(&["email"]).await.unwrap();
        let runner = w.runner(sqlite.clone());
        w.sim.set_mode(ServerId::new(2), Mode::Fail);
        for _ in 0..4 {
            for j in [job("web", 1, 2), job("db", 2, 2)] {
                runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
            }
        }
        let made = w.sim.snapshots(ServerId::new(1));
        sqlite.pin(made[0].id, chrono::Utc::now()).await.unwrap();
        let before = seen(&sqlite).await;

        let url = crate::store::postgres_url(&dir.path().join("pg"))
            .await
            .unwrap();
        let cfg = config(dir.path(), &w.server.base_url(), crate::cli::JOB);
        // An agent still at work on the file would make the copy a torn one: refused.
        let (id, now) = ("otherhost/1/1", chrono::Utc::now());
        sqlite.beat(id, AgentRole::Daemon, now).await.unwrap();
        let busy = agent(&cfg, &["db", "copy", "--to", &url]).await;
        assert_ne!(busy.status.code(), Some(0));
        assert!(
            text(&busy).contains("agents are still using it: otherhost"),
            "{}",
            text(&busy)
        );
        sqlite.agent_stopped(id, now).await.unwrap();
        sqlite.close().await;

        let copy = agent(&cfg, &["db", "copy", "--to", &url]).await;
        let said = text(&copy);
        assert_eq!(copy.status.code(), Some(0), "{said}");
        assert!(said.contains("runs        8"), "{said}");
        let password = url.split(':').nth(2).unwrap().split('@').next().unwrap();
        assert!(
            !said.contains(&format!(":{password}@")),
            "the password leaked: {said}"
        );

        let pg = crate::store::open(&dir.path().join("pg")).await;
        assert_eq!(seen(&pg).await, before, "the copy reads as the original");
        // Runs go on there, numbered after the copied ones.
        let next = w.runner(pg.clone());
        let o = next
            .run_job(&job("web", 1, 2), RunTrigger::Manual, None)
            .await
            .unwrap();
        assert_eq!(o.run_id.get(), 9);
        // A second copy would mix two histories: refused.
        let again = agent(&cfg, &["db", "copy", "--to", &url]).await;
        assert_ne!(again.status.code(), Some(0));
        assert!(
            text(&again).contains("already holds a history"),
            "{}",
            text(&again)
        );
        pg.close().await;
    });
}
