//! Several agents on one database: each fire run once, another host's runs and locks left
//! alone while its agent heartbeats and taken over once it lapses, an agent that stops
//! heartbeating alerted once, the intent fence, and `database` URLs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use vps_snapshot_agent::clock::Clock;
use vps_snapshot_agent::db::{
    Action, AgentRole, Database, Intent, NewRun, OpenOptions, RunKind, RunStatus, RunTrigger, Step,
};
use vps_snapshot_agent::domain::AlertKind;
use vps_snapshot_agent::identity::Owner;
use vps_snapshot_agent::sim::{Event, Mode, SimOptions};

use crate::cli::{agent, config, sim, text};
use crate::helpers::{Inbox, RunId, ServerId, TOKEN, job, world};
use crate::newcomer::{FAST, signal, spawn, spawn_with};

/// An owner on another host (its `/proc` is out of sight), for agent `tag`.
pub(crate) fn remote(tag: &str) -> Owner {
    format!("otherhost-{tag}/4242/77/0000abcd")
        .parse::<Owner>()
        .expect("a well-formed owner")
}

pub(crate) fn fire(job: &str, server: u64, at: DateTime<Utc>) -> NewRun<'_> {
    NewRun {
        job,
        server_id: ServerId::new(server),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Schedule,
        scheduled_for: Some(at),
        started_at: at,
    }
}

#[tokio::test]
pub(crate) async fn a_fire_is_claimed_once_however_many_agents_fire_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let db = crate::store::open(&path).await;
    let at = crate::helpers::clock().now();
    // Eight agents (their own pools on the file) fire the same 10 fires at once.
    let mut tasks = Vec::new();
    for a in 0..8 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let db = crate::store::open(&path).await;
            let owner = remote(&a.to_string());
            let mut won = Vec::new();
            for j in 0..10 {
                let name = format!("job-{j}");
                if let Ok(id) = db.claim_fire(fire(&name, j, at), &owner).await.unwrap() {
                    won.push(id);
                }
            }
            db.close().await;
            won
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap());
    }
    assert_eq!(won.len(), 10, "each fire run by exactly one agent");
    let runs = db.history(None, 100).await.unwrap().len();
    assert_eq!(runs, 10, "a losing claim leaves no run behind");
    // The loser is told who has it; a catch-up of the same fire is the same fire.
    let mut again = fire("job-3", 3, at);
    again.trigger = RunTrigger::CatchUp;
    let taken = db
        .claim_fire(again, &remote("x"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(won.contains(&taken.run_id));
    assert!(taken.host.starts_with("otherhost-"), "{taken:?}");
    // The next fire is a new one.
    let next = at + chrono::Duration::minutes(1);
    assert!(
        db.claim_fire(fire("job-3", 3, next), &remote("x"))
            .await
            .unwrap()
            .is_ok()
    );
}

/// A fire another agent has taken is refused from a read: the claim does not wait for
/// the write lock (several daemons queue every fire behind their slots, and most of
/// their claims lose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_fire_already_taken_is_refused_without_waiting_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let db = crate::store::open(&path).await;
    let at = crate::helpers::clock().now();
    let won = db
        .claim_fire(fire("web", 5, at), &remote("a"))
        .await
        .unwrap()
        .unwrap();
    // Another process holds the write lock while the second agent claims the fire.
    let holder = crate::store::open(&path).await;
    let mut on_sqlite = None;
    let mut on_postgres = None;
    if let Some(pool) = holder.sqlite_pool() {
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut *conn)
            .await
            .unwrap();
        on_sqlite = Some(conn);
    }
    if let Some(pool) = holder.postgres_pool() {
        let tx = crate::store::hold_postgres_writes(pool).await;
        on_postgres = Some(tx);
    }
    let them = remote("b");
    let claim = db.claim_fire(fire("web", 5, at), &them);
    let taken = tokio::time::timeout(Duration::from_secs(20), claim)
        .await
        .expect("the claim waited for the write lock")
        .expect("the claim was answered without writing")
        .unwrap_err();
    assert_eq!(taken.run_id, won);
    if let Some(mut conn) = on_sqlite {
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    }
    if let Some(tx) = on_postgres {
        tx.rollback().await.unwrap();
    }
    assert_eq!(db.history(None, 10).await.unwrap().len(), 1);
}

#[tokio::test]
pub(crate) async fn another_hosts_run_and_lock_are_left_alone_while_its_agent_heartbeats() {
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = w.db(&dir).await;
    let j = job("web", 5, 2);
    let them = remote("a");
    let t0 = w.clock.now();
    db.beat(&them.agent().to_string(), AgentRole::Daemon, t0)
        .await
        .unwrap();
    let run = db
        .claim_fire(fire("web", 5, t0), &them)
        .await
        .unwrap()
        .unwrap();
    db.try_lock(
        ServerId::new(5),
        &them,
        Some(run),
        t0,
        Duration::from_secs(120),
    )
    .await
    .unwrap()
    .unwrap();

    // Another of its runs waits for a lock (it holds none yet).
    let j6 = job("db", 6, 2);
    let waiting = db
        .claim_fire(fire("db", 6, t0), &them)
        .await
        .unwrap()
        .unwrap();

    let mut runner = w.runner(db.clone());
    runner.lock_wait = Duration::ZERO;
    // Its heartbeat is 50 s old: alive. Neither its runs nor the server are touched.
    w.clock.advance(Duration::from_secs(50));
    assert!(
        runner
            .resume_interrupted(&[j.clone(), j6.clone()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.run(waiting).await.unwrap().unwrap().owner, them.as_str());
    let busy = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    assert_eq!(busy.status, RunStatus::Failed);
    assert!(busy.error.unwrap().contains("busy"));
    assert_eq!(
        db.run(run).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    assert_eq!(w.created(), 0);

    // A heartbeat keeps it alive past its lock's own lease.
    w.clock.advance(Duration::from_secs(40));
    db.beat(&them.agent().to_string(), AgentRole::Daemon, w.clock.now())
        .await
        .unwrap();
    w.clock.advance(Duration::from_secs(50));
    assert!(
        runner
            .resume_interrupted(std::slice::from_ref(&j))
            .await
            .unwrap()
            .is_empty()
    );
    let busy = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    assert!(busy.error.unwrap().contains("busy"), "the lock holds");

    // Then it stops heartbeating: once the lease lapses, one agent takes the run over.
    w.clock
        .advance(vps_snapshot_agent::timing::Timing::default().agent_lease);
    let jobs = [j.clone(), j6.clone()];
    let resumed = runner.resume_interrupted(&jobs).await.unwrap();
    let other = w.runner(db.clone());
    assert!(other.resume_interrupted(&jobs).await.unwrap().is_empty());
    for id in [run, waiting] {
        let after = db.run(id).await.unwrap().unwrap();
        assert_ne!(after.status, RunStatus::Running, "{resumed:?}");
        assert_eq!(after.owner, runner.owner.as_str());
    }
    // And the server is free again.
    let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
}

#[tokio::test]
pub(crate) async fn an_agent_whose_run_was_taken_over_records_no_intent_and_sends_nothing() {
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let db = w.db(&dir).await;
    let runner = w.runner(db.clone());
    let t0 = w.clock.now();
    let run = db
        .claim_fire(fire("web", 5, t0), &runner.owner)
        .await
        .unwrap()
        .unwrap();
    // Cut off, its heartbeat lapsed; another agent claimed the run.
    let other = remote("b");
    assert!(
        db.claim_run(run, runner.owner.as_str(), &other)
            .await
            .unwrap()
            .is_some()
    );
    let intent = Intent {
        run_id: run,
        server_id: ServerId::new(5),
        action: Action::Create,
        snapshot_id: None,
        snapshot_name: Some("web-x"),
        detail: None,
    };
    let e = db.intend(intent, &runner.owner, t0).await.unwrap_err();
    assert!(e.to_string().contains("no longer this agent's"), "{e}");
    let delete = Intent {
        action: Action::Delete,
        snapshot_name: None,
        ..intent
    };
    assert!(db.intend(delete, &runner.owner, t0).await.is_err());
    assert!(
        db.entries(run).await.unwrap().is_empty(),
        "nothing recorded"
    );
    // The owner it has now can.
    db.intend(intent, &other, t0).await.unwrap();
}

#[tokio::test]
pub(crate) async fn a_daemon_that_stops_heartbeating_is_alerted_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::store::open(&dir.path().join("history.db")).await;
    let t0 = crate::helpers::clock().now();
    let (a, b, c) = ("hosta/1/1", "hostb/2/2", "hostc/3/3");
    for id in [a, b, c] {
        db.beat(id, AgentRole::Daemon, t0).await.unwrap();
    }
    // A run-once that ended without a word, and a daemon that stopped cleanly: no alert.
    db.beat("hostd/4/4", AgentRole::RunOnce, t0).await.unwrap();
    db.beat("hoste/5/5", AgentRole::Daemon, t0).await.unwrap();
    db.agent_stopped("hoste/5/5", t0).await.unwrap();
    let alert = vps_snapshot_agent::alert::text::agent_gone;
    let t1 = t0 + chrono::Duration::seconds(30);
    db.beat(a, AgentRole::Daemon, t1).await.unwrap();
    db.beat(c, AgentRole::Daemon, t1).await.unwrap();
    assert!(db.alert_gone_agents(a, t1, alert).await.unwrap().is_empty());
    // b and d stop; a and c live on and both look.
    let t2 = t1 + chrono::Duration::seconds(45);
    for id in [a, c] {
        db.beat(id, AgentRole::Daemon, t2).await.unwrap();
    }
    let (x, y) = tokio::join!(
        db.alert_gone_agents(a, t2, alert),
        db.alert_gone_agents(c, t2, alert)
    );
    let mut hosts = x.unwrap();
    hosts.extend(y.unwrap());
    assert_eq!(hosts, ["hostb"]);
    let pending = db.pending_alerts().await.unwrap();
    let gone: Vec<_> = pending
        .iter()
        .filter(|p| p.kind == AlertKind::AgentGone)
        .collect();
    assert_eq!(gone.len(), 1);
    assert!(gone[0].subject.contains("hostb"), "{}", gone[0].subject);
    assert!(gone[0].body.contains("last seen"), "{}", gone[0].body);
    // Later looks do not repeat it.
    let t3 = t2 + chrono::Duration::minutes(10);
    for id in [a, c] {
        db.beat(id, AgentRole::Daemon, t3).await.unwrap();
    }
    assert!(db.alert_gone_agents(a, t3, alert).await.unwrap().is_empty());
    let agents = db.agents(t3).await.unwrap();
    let state: HashMap<&str, bool> = agents.iter().map(|r| (r.id.as_str(), r.alive)).collect();
    assert!(state[a] && state[c] && !state[b] && !state["hoste/5/5"]);
    // A service restarted on its host replaces its dead self: no alert for that one.
    let t4 = t3 + chrono::Duration::minutes(2);
    db.beat("hostf/6/6", AgentRole::Daemon, t0).await.unwrap();
    db.beat("hostf/7/7", AgentRole::Daemon, t4).await.unwrap();
    db.beat(a, AgentRole::Daemon, t4).await.unwrap();
    let later = db.alert_gone_agents(a, t4, alert).await.unwrap();
    assert_eq!(later, ["hostc"], "c is gone now; f's new daemon lives");
}

/// A config of `jobs` jobs on servers 1..=jobs firing on `schedule` and keeping `keep`,
/// alerts to `smtp`.
fn many_jobs(jobs: u64, smtp: u16, schedule: &str, keep: u32) -> String {
    let mut t = format!(
        "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp}\nsecurity = \"none\"\nfrom = \"agent@example.com\"\nto = [\"ops@example.com\"]\n"
    );
    for i in 1..=jobs {
        t.push_str(&format!(
            "[[jobs]]\nname = \"web-{i}\"\nserver_id = {i}\nschedule = \"{schedule}\"\nkeep_last = {keep}\n"
        ));
    }
    t
}

/// A number from the environment (the soak's larger sizes), or `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every run recorded, and the snapshots the simulator made, one for each run that asked
/// for one (no duplicate, none for a killed run finished by another).
pub(crate) async fn one_snapshot_per_run(
    s: &vps_snapshot_agent::sim::SimServer,
    db: &Database,
) -> (Vec<vps_snapshot_agent::db::Run>, usize) {
    let runs = db.history(None, u32::MAX).await.unwrap();
    let created = s
        .sim
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Created { .. }))
        .count();
    // A run that recorded its snapshot's name but was stopped (the final SIGTERM) before
    // its request left has no snapshot id and made none; every snapshot the simulator
    // made must be a run's, by id, and no run's twice.
    let asked = runs
        .iter()
        .filter(|r| r.snapshot.as_ref().is_some_and(|s| s.id.is_some()))
        .count();
    assert_eq!(created, asked, "one snapshot per run that made one");
    (runs, created)
}

/// The owners of the runs of each scheduled fire (job, scheduled time in ms).
pub(crate) async fn runs_by_fire(db: &Database) -> BTreeMap<(String, i64), Vec<String>> {
    let mut by_fire: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for r in db.history(None, u32::MAX).await.unwrap() {
        if let (RunTrigger::Schedule, Some(at)) = (r.trigger, r.scheduled_for) {
            by_fire
                .entry((r.job.clone(), at.timestamp_millis()))
                .or_default()
                .push(r.owner.clone());
        }
    }
    by_fire
}

/// 20 jobs firing every 3 s and two daemons; `AGENT_SOAK_JOBS`, `AGENT_SOAK_DAEMONS` and
/// `AGENT_SOAK_EVERY` (seconds) make it larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn two_daemons_on_one_database_run_each_fire_once() {
    let (jobs, agents) = (
        env_or("AGENT_SOAK_JOBS", 20),
        env_or("AGENT_SOAK_DAEMONS", 2),
    );
    let s = sim().await;
    let failing = ServerId::new(jobs);
    s.sim.set_mode(failing, Mode::Fail);
    let (inbox, smtp) = Inbox::start(0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &many_jobs(
            jobs,
            smtp,
            &format!("*/{} * * * * *", env_or("AGENT_SOAK_EVERY", 3)),
            2,
        ),
    );
    let db = crate::store::configure(&cfg, &dir.path().join("history.db")).await;
    let mut daemons: Vec<_> = (0..agents)
        .map(|i| spawn(&cfg, &["run"], &dir.path().join(format!("log-{i}"))))
        .collect();
    // Four fires per job, on average, finished (at most two minutes, and a second per job).
    let deadline = std::time::Instant::now() + Duration::from_secs(120 + jobs);
    while std::time::Instant::now() < deadline {
        let runs = db.history(None, u32::MAX).await.unwrap();
        let n = runs
            .iter()
            .filter(|r| r.status != RunStatus::Running)
            .count();
        if n as u64 >= 4 * jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = agent(&cfg, &["status"]).await;
    let shown = text(&status);
    assert!(
        agents == 1 || shown.contains(&format!("agents on this database: {agents} alive")),
        "{shown}"
    );
    for d in &daemons {
        signal(d, libc::SIGTERM);
    }
    for d in &mut daemons {
        assert!(d.wait().unwrap().success());
    }
    let log: String = (0..agents)
        .map(|i| std::fs::read_to_string(dir.path().join(format!("log-{i}"))).unwrap())
        .collect();
    assert!(!log.contains(TOKEN));

    let by_fire = runs_by_fire(&db).await;
    let fires = by_fire.len();
    let twice: Vec<String> = by_fire
        .iter()
        .filter(|(_, owners)| owners.len() > 1)
        .map(|((job, at), _)| format!("{job} at {at}"))
        .collect();
    assert!(twice.is_empty(), "fires run twice: {twice:?}");
    assert!(fires as u64 >= 4 * jobs, "{fires} fires");
    let owners: std::collections::HashSet<String> = by_fire
        .values()
        .flatten()
        .map(|o| o.parse::<Owner>().expect("an owner").agent().to_string())
        .collect();
    assert_eq!(
        owners.len() as u64,
        agents,
        "every daemon took a share of the work"
    );

    // One snapshot asked for per run that asked, and never two runs on a server at once.
    let (runs, created) = one_snapshot_per_run(&s, &db).await;
    let mut late: Vec<i64> = runs
        .iter()
        .filter_map(|r| Some((r.started_at - r.scheduled_for?).num_milliseconds()))
        .collect();
    late.sort_unstable();
    let p99 = late[(late.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "{agents} daemons: {fires} fires of {jobs} jobs, none run twice, {created} snapshots; lateness p50 {} ms, p99 {p99} ms, max {} ms",
        late[late.len() / 2],
        late[late.len() - 1]
    );
    // Never two runs on a server at once: each run's journal, from taking the lock to
    // its last action, does not interleave with another's on the same server.
    let mut by_server: BTreeMap<ServerId, Vec<_>> = BTreeMap::new();
    for r in &runs {
        let ids: Vec<_> = db
            .entries(r.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action != Action::Finish)
            .map(|e| e.id)
            .collect();
        if let (Some(lo), Some(hi)) = (ids.first(), ids.last()) {
            by_server.entry(r.server_id).or_default().push((*lo, *hi));
        }
    }
    for (server, mut spans) in by_server {
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 < w[1].0, "server {server}: runs interleave: {w:?}");
        }
    }
    // Every alert mailed once: one FAILED spell for server 20, one mail about it.
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| r.server_id == failing && r.status == RunStatus::Failed)
        .collect();
    assert!(failed.len() >= 4);
    let queued = db.outbox_counts().await.unwrap().queued;
    let mails = inbox
        .messages()
        .iter()
        .filter(|m| m.contains(&format!("FAILED web-{jobs} ")))
        .count();
    assert_eq!((queued, mails), (1, 1), "{:?}", inbox.messages());
    // Both stopped cleanly: gone from the live list, no alert about them.
    let after = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    let agents = v["agents"].as_array().unwrap();
    assert!(
        agents
            .iter()
            .all(|a| a["alive"] == false && !a["stopped_at"].is_null()),
        "{agents:?}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_urls_select_the_store_and_never_show_a_password() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), crate::cli::JOB);
    let text_of = |c: &std::path::Path| std::fs::read_to_string(c).unwrap();
    let base = text_of(&cfg);
    let db_line = base.lines().next().unwrap().to_string();
    let file = dir.path().join("via-url.db");
    std::fs::write(
        &cfg,
        base.replace(
            &db_line,
            &format!("database = \"sqlite://{}\"", file.display()),
        ),
    )
    .unwrap();
    let ok = agent(&cfg, &["run-once"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(file.exists(), "the sqlite: URL's file is the database");

    // A PostgreSQL URL is taken; one nobody listens at fails to connect, saying where
    // without the password.
    for url in [
        "postgres://agent:hunter2@127.0.0.1:1/snapshots",
        "postgresql://agent:hunter2@127.0.0.1:1/snapshots?sslmode=disable",
    ] {
        std::fs::write(
            &cfg,
            base.replace(&db_line, &format!("database = \"{url}\"")),
        )
        .unwrap();
        let o = agent(&cfg, &["check"]).await;
        let t = text(&o);
        assert_eq!(o.status.code(), Some(78), "{url}: {t}");
        assert!(
            t.contains("agent@127.0.0.1:1/snapshots")
                && t.contains("cannot connect")
                && t.contains("refused"),
            "{url}: {t}"
        );
        assert!(!t.contains("hunter2"), "the password leaked: {t}");
    }
    for (url, says) in [
        ("mysql://db.internal/x", "unknown database URL scheme"),
        ("sqlite:///tmp/x.db?mode=ro", "options in a sqlite: URL"),
    ] {
        std::fs::write(
            &cfg,
            base.replace(&db_line, &format!("database = \"{url}\"")),
        )
        .unwrap();
        let o = agent(&cfg, &["check"]).await;
        let t = text(&o);
        assert_eq!(o.status.code(), Some(78), "{url}: {t}");
        assert!(t.contains("database") && t.contains(says), "{url}: {t}");
        assert!(!t.contains("hunter2"), "the password leaked: {t}");
        assert!(!dir.path().join("postgres:").exists());
    }
}

#[tokio::test]
pub(crate) async fn a_stale_job_is_alerted_once_however_many_agents_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let (a, b) = (
        crate::store::open(&path).await,
        crate::store::open(&path).await,
    );
    let now = crate::helpers::clock().now();
    let since = now - chrono::Duration::days(2);
    let alert = vps_snapshot_agent::alert::text::stale("web", ServerId::new(5), since, None, now);
    let (x, y) = tokio::join!(
        a.queue_alert_unless_since(&alert, since),
        b.queue_alert_unless_since(&alert, since)
    );
    assert_eq!(u8::from(x.unwrap()) + u8::from(y.unwrap()), 1);
    // A new spell (a success after it) is alerted again.
    let later = now + chrono::Duration::days(3);
    let again = vps_snapshot_agent::alert::text::stale("web", ServerId::new(5), now, None, later);
    assert!(a.queue_alert_unless_since(&again, now).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_waits_out_a_database_it_cannot_write_and_then_runs_once() {
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    w.db(&dir).await.close().await;
    // This agent gives up on a locked database after 50 ms (10 s by default).
    let quick = OpenOptions {
        pragmas: vec![("busy_timeout", "50".into())],
        ..OpenOptions::default()
    };
    let db = Database::open_with(&path, &quick).await.unwrap();
    let runner = w.runner(db.clone());
    // Another process holds the database's write lock for 2.5 s as the fire comes.
    let blocker = Database::open(&path).await.unwrap();
    let mut conn = blocker.sqlite_pool().unwrap().acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *conn)
        .await
        .unwrap();
    let (j, at) = (job("web", 5, 2), w.clock.now());
    let fired = tokio::spawn(async move { runner.run_fire(&j, RunTrigger::Schedule, at).await });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    let o = fired
        .await
        .unwrap()
        .expect("the claim is tried again, not given up")
        .expect("the fire was not taken");
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    assert_eq!(db.history(None, 10).await.unwrap().len(), 1);
    assert_eq!(w.created(), 1);
}

/// A run waiting for its snapshot, if there is one, and the agent that owns it.
async fn a_polling_run(db: &Database) -> Option<(RunId, String)> {
    db.running()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.step == Step::Poll)
        .map(|r| (r.id, r.owner))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_killed_daemons_run_is_finished_by_the_other_without_a_second_snapshot() {
    let s = sim().await;
    for i in 1..=4 {
        s.sim.set_delay(
            ServerId::new(i),
            vps_snapshot_agent::sim::Delay::Fixed(Duration::from_secs(4)),
        );
    }
    let (_inbox, smtp) = Inbox::start(0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &many_jobs(4, smtp, "*/10 * * * * *", 4),
    );
    let db = crate::store::configure(&cfg, &dir.path().join("history.db")).await;
    let mut a = spawn_with(&cfg, &["run"], &dir.path().join("log-a"), &[FAST]);
    let mut b = spawn_with(&cfg, &["run"], &dir.path().join("log-b"), &[FAST]);
    // Whichever daemon claimed a fire first is killed while it waits for the snapshot.
    let mut polling = None;
    for _ in 0..1800 {
        polling = a_polling_run(&db).await;
        if polling.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (victim, owner) = polling.expect("a daemon polls a snapshot within 90 s");
    if !owner.contains(&format!("/{}/", a.id())) {
        std::mem::swap(&mut a, &mut b);
    }
    assert!(owner.contains(&format!("/{}/", a.id())), "{owner}");
    signal(&a, libc::SIGKILL);
    let killed_at = Utc::now();
    a.wait().unwrap();
    let mut finished = None;
    for _ in 0..1800 {
        let row = db.run(victim).await.unwrap().unwrap();
        if row.status != RunStatus::Running {
            finished = Some(row);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = finished.expect("the other daemon finished the run within 90 s");
    signal(&b, libc::SIGTERM);
    assert!(b.wait().unwrap().success());
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert!(
        run.owner.contains(&format!("/{}/", b.id())),
        "{}",
        run.owner
    );
    let failover = run.finished_at.unwrap() - killed_at;
    eprintln!(
        "failover: run {victim} finished {} ms after its daemon was killed",
        failover.num_milliseconds()
    );

    one_snapshot_per_run(&s, &db).await;
    let by_fire = runs_by_fire(&db).await;
    let twice: Vec<_> = by_fire.iter().filter(|(_, o)| o.len() > 1).collect();
    assert!(twice.is_empty(), "fires run twice: {twice:?}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn status_metrics_and_the_page_show_a_gone_agent() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), crate::cli::JOB);
    let db = crate::store::configure(&cfg, &dir.path().join("history.db")).await;
    let now = Utc::now();
    let gone_since = now - chrono::Duration::minutes(5);
    db.beat("otherhost/12/34", AgentRole::Daemon, gone_since)
        .await
        .unwrap();
    db.beat("livehost/56/78", AgentRole::Daemon, now)
        .await
        .unwrap();
    db.beat("quiethost/9/9", AgentRole::Daemon, gone_since)
        .await
        .unwrap();
    db.agent_stopped("quiethost/9/9", gone_since).await.unwrap();

    let check = agent(&cfg, &["status", "--check"]).await;
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).contains("WARNING: agent stopped heartbeating on: otherhost"),
        "{}",
        text(&check)
    );
    let shown = text(&agent(&cfg, &["status"]).await);
    assert!(
        shown.contains("agents on this database: 1 alive"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.contains("otherhost") && l.contains("GONE since")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.contains("quiethost") && l.contains("stopped")),
        "{shown}"
    );

    let settings = vps_snapshot_agent::config::Settings::load(&cfg).unwrap();
    let m = vps_snapshot_agent::serve::metrics::render(&db, &settings, now)
        .await
        .unwrap();
    assert!(m.contains("vps_snapshot_agents{state=\"gone\"} 1"), "{m}");
    assert!(m.contains("vps_snapshot_agents{state=\"alive\"} 1"), "{m}");
    let page =
        vps_snapshot_agent::serve::page::render(&db, &settings, &crate::helpers::marker(), now)
            .await
            .unwrap();
    assert!(
        page.contains("<li class=\"agent gone\">otherhost daemon otherhost/12/34"),
        "{page}"
    );
    assert!(page.contains("<li class=\"agent alive\">livehost daemon"));
    assert!(page.contains("<li class=\"agent stopped\">quiethost daemon"));
    db.close().await;
}

#[tokio::test]
async fn an_outbox_claim_of_a_process_that_is_gone_is_taken_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    db.set_channels(&["webhook"]).await.unwrap();
    let now = crate::helpers::clock().now();
    let a = vps_snapshot_agent::alert::text::stale("web", ServerId::new(5), now, None, now);
    db.queue_alert(&a).await.unwrap();
    db.queue_ping(&vps_snapshot_agent::db::NewPing {
        job: Some("web".into()),
        run_id: None,
        kind: vps_snapshot_agent::db::PingKind::Start,
        body: String::new(),
        created_at: now,
        expires_at: now + vps_snapshot_agent::run::PING_EXPIRES,
    })
    .await
    .unwrap();
    let held_by = |who: String| {
        let db = db.clone();
        async move {
            for table in ["deliveries", "pings"] {
                let sql = format!("UPDATE {table} SET claimed_until = ?, claimed_by = ?");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind((now + chrono::Duration::minutes(5)).timestamp_millis())
                    .bind(&who)
                    .execute(db.sqlite_pool().unwrap())
                    .await
                    .unwrap();
            }
        }
    };
    let until = now + chrono::Duration::minutes(6);
    // Held by a live agent on another host: left alone.
    db.beat("otherhost/1/1", AgentRole::Daemon, now)
        .await
        .unwrap();
    held_by("otherhost/1/1".into()).await;
    assert!(
        db.claim_alerts("webhook", now, true, until)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(db.claim_pings(now, until).await.unwrap().is_empty());
    // Held by a process of this host that is gone (a daemon killed mid-delivery): taken.
    held_by(crate::helpers::dead_owner().agent().to_string()).await;
    assert_eq!(
        db.claim_alerts("webhook", now, true, until)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(db.claim_pings(now, until).await.unwrap().len(), 1);
    // Held by the other host's agent once its heartbeat lapsed: taken too.
    let later = now
        + vps_snapshot_agent::timing::Timing::default().agent_lease
        + chrono::Duration::seconds(1).to_std().unwrap();
    held_by("otherhost/1/1".into()).await;
    let until = later + chrono::Duration::minutes(6);
    assert_eq!(
        db.claim_alerts("webhook", later, true, until)
            .await
            .unwrap()
            .len(),
        1
    );
}
