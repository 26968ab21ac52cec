//! What users of borgmatic, sanoid and restic reach for, through the binary: `prune`,
//! `enabled = false`, `include` (a conf.d of job files), `history --since/--until/--status`.

use std::path::Path;

use chrono::Utc;
use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::sim::{Glitch, Mode};

use crate::cli::{agent, config, sim, text};
use crate::helpers::{RunId, ServerId, SnapshotId, marker};

fn job(name: &str, server: u64, extra: &str) -> String {
    format!(
        "[[jobs]]\nname = \"{name}\"\nserver_id = {server}\nschedule = \"0 30 2 * * *\"\n{extra}"
    )
}

/// A snapshot `job` made `hours` ago, named and marked as the agent makes them.
fn made(s: &vps_snapshot_agent::sim::SimServer, server: u64, job: &str, hours: i64) -> SnapshotId {
    let server = ServerId::new(server);
    let at = Utc::now() - chrono::Duration::hours(hours);
    let name = vps_snapshot_agent::snapshot::naming::new_name(job, at);
    let description = marker().description(job, server, RunId::new(0), &name);
    s.sim.put_described(
        server,
        &name,
        Some(&description),
        SnapshotStatus::Completed,
        at,
    )
}

fn ids_on(s: &vps_snapshot_agent::sim::SimServer, server: u64) -> Vec<SnapshotId> {
    let mut ids: Vec<SnapshotId> = s
        .sim
        .snapshots(ServerId::new(server))
        .iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    ids
}

async fn history(cfg: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    let o = agent(cfg, &all).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_applies_a_lowered_policy_now_and_never_touches_what_it_must_keep() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let oldest = made(&s, 5, "web", 50);
    let older = made(&s, 5, "web", 40);
    let pinned = made(&s, 5, "web", 30);
    let newest = made(&s, 5, "web", 20);
    let by_hand = s.sim.put(
        ServerId::new(5),
        "before-upgrade",
        SnapshotStatus::Completed,
        Utc::now() - chrono::Duration::hours(60),
    );
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, "keep_last = 1\n"));
    assert_eq!(
        agent(&cfg, &["pin", &pinned.to_string()])
            .await
            .status
            .code(),
        Some(0)
    );

    let dry = agent(&cfg, &["prune", "--dry-run"]).await;
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let t = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(t.contains(&format!("would delete: {oldest} (")), "{t}");
    assert!(t.contains(&format!("would delete: {older} (")), "{t}");
    assert!(
        t.contains("beyond the newest 1 (keep_last = 1)"),
        "the reason: {t}"
    );
    assert!(t.contains("nothing was deleted or recorded"), "{t}");
    assert_eq!(ids_on(&s, 5).len(), 5, "a dry run deletes nothing");
    assert!(history(&cfg, &[]).await.is_empty(), "nor records anything");

    let o = agent(&cfg, &["prune"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains(&format!("web: pruned, deleted {oldest},{older}")),
        "{out}"
    );
    let mut left = vec![pinned, newest, by_hand];
    left.sort();
    assert_eq!(
        ids_on(&s, 5),
        left,
        "the pinned, the newest and the hand-made one stay"
    );
    assert_eq!(
        s.sim.requests().of(vps_snapshot_agent::sim::Op::Create),
        0,
        "no snapshot taken"
    );

    let runs = history(&cfg, &[]).await;
    assert_eq!(runs[0]["kind"], "prune", "{:#}", runs[0]);
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[0]["trigger"], "manual");
    let deleted: Vec<u64> = runs[0]["deleted_snapshot_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(deleted, [oldest.get(), older.get()]);

    let again = agent(&cfg, &["prune"]).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("web: pruned, deleted nothing"));
    // A prune is not the job's snapshot run: status still knows of none.
    let st = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert!(v["jobs"][0]["last_run"].is_null(), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_to_the_deletion_cap_and_the_newest_completed_one() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<SnapshotId> = (0..5).map(|i| made(&s, 5, "web", 50 - i * 5)).collect();
    // keep_within 1h keeps nothing the snapshots are hours old: only the newest completed
    // one is kept whatever the policy says, and two may go per prune.
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &job(
            "web",
            5,
            "keep_last = 0\nkeep_within = \"1h\"\nmax_deletions_per_run = 2\n",
        ),
    );
    let o = agent(&cfg, &["prune"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(ids_on(&s, 5), all[2..].to_vec(), "the two oldest, no more");
    for _ in 0..2 {
        assert_eq!(agent(&cfg, &["prune"]).await.status.code(), Some(0));
    }
    assert_eq!(ids_on(&s, 5), [all[4]], "never the newest completed one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_on_an_inconsistent_listing_deletes_nothing_fails_and_alerts() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let old = made(&s, 5, "web", 50);
    let kept = made(&s, 5, "web", 20);
    s.sim.glitch(Glitch::Duplicate(kept));
    let mail = "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 9\nsecurity = \"none\"\nfrom = \"a@example.com\"\nto = [\"ops@example.com\"]\n";
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &format!("{mail}{}", job("web", 5, "keep_last = 1\n")),
    );
    let o = agent(&cfg, &["prune"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("inconsistent"), "{}", text(&o));
    assert!(
        ids_on(&s, 5).contains(&old),
        "nothing deleted on a listing it cannot trust"
    );
    let runs = history(&cfg, &[]).await;
    assert_eq!(runs[0]["kind"], "prune");
    assert_eq!(runs[0]["status"], "failed");
    // The mail server is down: the alert waits in the outbox for the daemon.
    let st = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let pending = v["pending_alerts"].as_array().unwrap();
    assert!(
        pending
            .iter()
            .any(|a| a["subject"].as_str().unwrap().contains("web")),
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_job_is_left_out_shown_as_such_and_runs_only_when_named() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("agent.prom");
    let jobs = format!(
        "[metrics]\ntextfile = \"{}\"\n{}{}",
        metrics.display(),
        job("web", 5, "keep_last = 2\n"),
        job("old", 6, "keep_last = 1\nenabled = false\n")
    );
    let cfg = config(dir.path(), &s.base_url(), &jobs);
    // Its snapshots stay its own: nothing else deletes them.
    let old_snap = made(&s, 6, "old", 30);

    let check = agent(&cfg, &["check"]).await;
    let t = text(&check);
    assert_eq!(check.status.code(), Some(0), "{t}");
    assert!(t.contains("(1 disabled)"), "{t}");
    assert!(t.contains("enabled = false"), "{t}");

    let o = agent(&cfg, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("old: disabled (enabled = false): not run"),
        "{out}"
    );
    assert_eq!(ids_on(&s, 6), [old_snap], "the disabled job did not run");
    assert_eq!(ids_on(&s, 5).len(), 1, "the enabled one did");

    let st = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let old = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "old")
        .unwrap();
    assert_eq!(old["enabled"], false, "{old:#}");
    assert!(old["next_run_at"].is_null(), "never scheduled: {old:#}");
    assert_eq!(old["stale"], false, "a disabled job is never stale");
    let table = agent(&cfg, &["status"]).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains("disabled"));
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        prom.contains("vps_snapshot_job_enabled{job_name=\"old\"} 0"),
        "{prom}"
    );
    assert!(
        prom.contains("vps_snapshot_job_enabled{job_name=\"web\"} 1"),
        "{prom}"
    );

    // Named, it runs: the operator asked for it.
    let named = agent(&cfg, &["run-once", "--job", "old"]).await;
    assert_eq!(named.status.code(), Some(0), "{}", text(&named));
    assert_eq!(
        ids_on(&s, 6).len(),
        1,
        "made one, rotated its old one (keep_last = 1)"
    );
    assert!(!ids_on(&s, 6).contains(&old_snap));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn included_job_files_are_read_in_order_and_their_errors_name_the_file() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("jobs.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("20-db.toml"), job("db", 6, "")).unwrap();
    std::fs::write(d.join("10-web.toml"), job("web", 5, "")).unwrap();
    std::fs::write(d.join(".#10-web.toml"), "not toml at all [[[").unwrap();
    std::fs::write(d.join("notes.txt"), "not a job").unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("main", 7, ""));
    // `include` is a top-level key: before the first table.
    let body = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("include = [\"jobs.d/*.toml\"]\n{body}")).unwrap();

    let check = agent(&cfg, &["check"]).await;
    let t = text(&check);
    assert_eq!(check.status.code(), Some(0), "{t}");
    assert!(
        t.contains("jobs included from") && t.contains("10-web.toml"),
        "{t}"
    );
    let (main, web, db) = (
        t.find("job main").unwrap(),
        t.find("job web").unwrap(),
        t.find("job db").unwrap(),
    );
    assert!(
        main < web && web < db,
        "main file first, then by file name: {t}"
    );
    assert!(t.contains("valid, 3 jobs"), "{t}");

    let o = agent(&cfg, &["run-once", "--job", "db"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(ids_on(&s, 6).len(), 1);

    // An error in an included file names that file and the key.
    std::fs::write(d.join("20-db.toml"), job("db", 6, "keep_lats = 2\n")).unwrap();
    let bad = agent(&cfg, &["check"]).await;
    let t = text(&bad);
    assert_eq!(bad.status.code(), Some(78), "{t}");
    assert!(
        t.contains(&format!(
            "{}: jobs[2].keep_lats",
            d.join("20-db.toml").display()
        )),
        "{t}"
    );
    assert!(
        t.contains("in job \"db\"; did you mean \"keep_last\"?"),
        "{t}"
    );
    assert!(
        t.contains("server_id") && t.contains("schedule"),
        "every key a job may have: {t}"
    );

    // An included file holds jobs only.
    std::fs::write(
        d.join("20-db.toml"),
        format!("database = \"/tmp/x.db\"\n{}", job("db", 6, "")),
    )
    .unwrap();
    let bad = agent(&cfg, &["check"]).await;
    let t = text(&bad);
    assert_eq!(bad.status.code(), Some(78), "{t}");
    assert!(
        t.contains("20-db.toml: database: an included file holds [[jobs]] only"),
        "{t}"
    );

    // A named file that is not there is an error; an empty conf.d is not.
    std::fs::write(d.join("20-db.toml"), job("db", 6, "")).unwrap();
    let body = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, body.replace("jobs.d/*.toml", "jobs.d/missing.toml")).unwrap();
    let bad = agent(&cfg, &["check"]).await;
    assert_eq!(bad.status.code(), Some(78), "{}", text(&bad));
    assert!(
        text(&bad).contains("missing.toml: no such file"),
        "{}",
        text(&bad)
    );
    let body = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, body.replace("jobs.d/missing.toml", "empty.d/*.toml")).unwrap();
    std::fs::create_dir(dir.path().join("empty.d")).unwrap();
    let ok = agent(&cfg, &["check"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(text(&ok).contains("valid, 1 job"), "{}", text(&ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_looks_back_by_time_and_status() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), &job("web", 5, "keep_last = 3\n"));
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    s.sim.set_mode(ServerId::new(5), Mode::Fail);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(1));

    let failed = history(&cfg, &["--status", "failed"]).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["status"], "failed");
    let ok = history(&cfg, &["--status", "succeeded", "--since", "1h"]).await;
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["status"], "succeeded");
    assert_eq!(history(&cfg, &["--since", "2d"]).await.len(), 2);
    assert!(history(&cfg, &["--until", "2020-01-01"]).await.is_empty());
    let tomorrow = (Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    assert!(history(&cfg, &["--since", &tomorrow]).await.is_empty());
    let rfc = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        history(&cfg, &["--since", &rfc, "--job", "web"])
            .await
            .len(),
        2
    );

    let none = agent(&cfg, &["history", "--until", "2020-01-01"]).await;
    assert!(String::from_utf8_lossy(&none.stdout).contains("no runs match"));
    let bad = agent(&cfg, &["history", "--since", "last tuesday"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("--since \"last tuesday\": give a time ago"),
        "{}",
        text(&bad)
    );
}
