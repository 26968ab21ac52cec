//! The reliability and security suite: the `agent` binary under every fault in every
//! phase, killed at every recorded step, under load with random faults, fed bad input;
//! after each scenario the safety invariants are checked (`invariants.rs`) and every
//! output is scanned for the token.

use std::process::Stdio;
use std::time::Duration;

use proptest::prelude::*;
use vps_snapshot_agent::api::{SnapshotPage, SnapshotStatus};
use vps_snapshot_agent::config::Settings;
use vps_snapshot_agent::db::{Action, Database, RunStatus, State, Step};
use vps_snapshot_agent::sim::{Fault, FaultKind, Mode, Op, SimOptions, Simulator};

use crate::helpers::{Inbox, ServerId, SnapshotId, TOKEN, closed_port};
use crate::invariants;
use crate::scene::{SERVER, command, crash, expect, sane, scene, step_is, text};

fn faults() -> Vec<(&'static str, FaultKind)> {
    let html = |code| FaultKind::Status {
        code,
        retry_after: None,
        body: format!("<html><body>{code} Bad Gateway</body></html>"),
    };
    vec![
        ("500 html", html(500)),
        ("502 html", html(502)),
        ("503 html", html(503)),
        (
            "429 retry-after",
            FaultKind::Status {
                code: 429,
                retry_after: Some(1),
                body: "{\"detail\":\"slow down\"}".into(),
            },
        ),
        (
            "429 bare",
            FaultKind::Status {
                code: 429,
                retry_after: None,
                body: String::new(),
            },
        ),
        ("dropped before", FaultKind::DropBefore),
        ("dropped after", FaultKind::DropAfter),
        (
            "slower than request_timeout",
            FaultKind::Delay(Duration::from_millis(600)),
        ),
        (
            "truncated json",
            FaultKind::Body("{\"count\": 1, \"results\": [{\"id\":".into()),
        ),
        (
            "wrong-typed json",
            FaultKind::Body("{\"id\": \"eight\", \"results\": {\"a\": 1}}".into()),
        ),
        (
            "10 MB body",
            FaultKind::Body(format!(
                "{{\"results\": [], \"pad\": \"{}\"}}",
                "x".repeat(10 << 20)
            )),
        ),
    ]
}

/// Whether a single `kind` on a create leaves its outcome unknown although the API did
/// nothing: the run must then fail rather than ask again (a create can land late).
fn lost_create(kind: &FaultKind) -> bool {
    match kind {
        FaultKind::Status { code, .. } => *code >= 500 && *code != 503,
        FaultKind::DropBefore | FaultKind::Body(_) => true,
        _ => false,
    }
}

/// Every fault in one phase, once (transient: the run must succeed, or for a create whose
/// outcome it cannot know, fail saying why) and for good (persistent: it may fail, but
/// cleanly), all at once, each against its own simulator.
async fn phase(op: Op, skip: u32, name: &str) {
    let mut set = tokio::task::JoinSet::new();
    for (fault, kind) in faults() {
        for persistent in [false, true] {
            let kind = kind.clone();
            let label = format!(
                "{name} phase, {fault}, {}",
                if persistent { "persistent" } else { "once" }
            );
            set.spawn(async move {
                let s = scene(Duration::from_millis(200), 2, closed_port(), "").await;
                let lost = op == Op::Create && lost_create(&kind);
                let mut f = Fault::new(op, kind, if persistent { 10_000 } else { 1 });
                f.skip = skip;
                s.sim.sim.inject(f);
                let o = command(&s.cfg, &["run-once"]).output().await.unwrap();
                sane(&o, &label);
                if !persistent && lost {
                    assert_eq!(o.status.code(), Some(1), "{label}:\n{}", text(&o));
                    assert!(
                        text(&o).contains("Not asking again"),
                        "{label}: says why it did not ask again:\n{}",
                        text(&o)
                    );
                } else if !persistent {
                    assert_eq!(
                        o.status.code(),
                        Some(0),
                        "{label}: a single fault must be ridden out:\n{}",
                        text(&o)
                    );
                }
                s.check().await;
                (label, o.status.code())
            });
        }
    }
    while let Some(r) = set.join_next().await {
        let (label, code) = r.unwrap();
        println!("{label}: exit {code:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_the_list_phase() {
    phase(Op::List, 0, "list").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_the_create_phase() {
    phase(Op::Create, 0, "create").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_the_poll_phase() {
    phase(Op::List, 1, "poll").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_the_delete_phase() {
    phase(Op::Delete, 0, "delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_stuck_and_vanished_snapshots_end_cleanly() {
    // Fails.
    let s = scene(Duration::from_millis(100), 2, closed_port(), "").await;
    s.sim.sim.set_mode(SERVER, Mode::Fail);
    let o = command(&s.cfg, &["run-once"]).output().await.unwrap();
    sane(&o, "failed");
    assert_eq!(o.status.code(), Some(1));
    s.check().await;
    // Stuck past snapshot_timeout.
    let s = scene(Duration::from_millis(100), 2, closed_port(), "").await;
    s.sim.sim.set_mode(SERVER, Mode::Stuck);
    let o = command(&s.cfg, &["run-once"]).output().await.unwrap();
    sane(&o, "stuck");
    assert!(text(&o).contains("not completed after 3s"), "{}", text(&o));
    s.check().await;
    // Deleted by someone else mid-run.
    let s = scene(Duration::from_secs(2), 2, closed_port(), "").await;
    let child = command(&s.cfg, &["run-once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let newest = loop {
        let mine = s
            .sim
            .sim
            .snapshots(SERVER)
            .into_iter()
            .find(|x| x.status == SnapshotStatus::InProgress);
        if let Some(x) = mine {
            break x.id;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    s.sim.sim.delete_external(newest);
    let o = child.wait_with_output().await.unwrap();
    sane(&o, "vanished");
    assert!(text(&o).contains("vanished"), "{}", text(&o));
    s.check().await;
}

async fn actions(db: &Database, action: Action) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM journal WHERE action = ? AND state = ?")
        .bind(action)
        .bind(State::Ok)
        .fetch_one(db.sqlite_pool().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_taking_the_lock() {
    let s = scene(Duration::from_millis(100), 2, closed_port(), "").await;
    s.sim.sim.inject(Fault::new(
        Op::List,
        FaultKind::Delay(Duration::from_secs(3)),
        1,
    ));
    crash(&s, "after lock", async |db: &Database, _: &Simulator| {
        actions(db, Action::Lock).await > 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_listing_before_the_create_lands() {
    let s = scene(Duration::from_millis(100), 2, closed_port(), "").await;
    s.sim.sim.inject(Fault::new(
        Op::Create,
        FaultKind::Delay(Duration::from_secs(3)),
        1,
    ));
    crash(&s, "after list", async |db: &Database, _: &Simulator| {
        step_is(db, Step::Create).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_create_was_sent() {
    let s = scene(Duration::from_millis(100), 2, closed_port(), "").await;
    s.sim.sim.inject(Fault::new(
        Op::Create,
        FaultKind::DelayAfter(Duration::from_secs(3)),
        1,
    ));
    crash(
        &s,
        "after create sent",
        async |db: &Database, sim: &Simulator| {
            step_is(db, Step::Create).await
                && sim
                    .snapshots(SERVER)
                    .iter()
                    .any(|x| x.status == SnapshotStatus::InProgress)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_poll() {
    let s = scene(Duration::from_secs(2), 2, closed_port(), "").await;
    crash(&s, "mid-poll", async |db: &Database, _: &Simulator| {
        step_is(db, Step::Poll).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_deletes() {
    let s = scene(Duration::from_millis(100), 3, closed_port(), "").await;
    let mut slow = Fault::new(Op::Delete, FaultKind::DelayAfter(Duration::from_secs(3)), 1);
    slow.skip = 1;
    s.sim.sim.inject(slow);
    crash(
        &s,
        "between deletes",
        async |db: &Database, _: &Simulator| actions(db, Action::Delete).await == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_a_failure_is_alerted() {
    let s = scene(Duration::from_secs(2), 2, closed_port(), "").await;
    s.sim.sim.set_mode(SERVER, Mode::Fail);
    crash(
        &s,
        "before the alert",
        async |db: &Database, _: &Simulator| step_is(db, Step::Poll).await,
    )
    .await;
    let db = s.db().await;
    assert!(
        !db.pending_alerts().await.unwrap().is_empty(),
        "the resumed failure queued its alert"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_with_five_percent_faults() {
    let (inbox, smtp) = Inbox::start(0);
    let sim = Simulator::start(
        SimOptions {
            token: TOKEN.into(),
            seed: 2026,
            ..SimOptions::default()
        },
        vps_snapshot_agent::clock::system(),
    )
    .await
    .unwrap();
    let mut f = Fault::status(Op::Any, 503, u32::MAX);
    f.rate = Some(0.05);
    sim.sim.inject(f);
    // Five jobs whose snapshots always fail, so that there are failures to digest
    // whatever the random faults do.
    for i in 0..5 {
        sim.sim.set_mode(
            ServerId::new(10_000 + i),
            vps_snapshot_agent::sim::Mode::Fail,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let jobs: String = (0..1000)
        .map(|i| {
            format!(
                "[[jobs]]\nname = \"job-{i}\"\nserver_id = {}\nschedule = \"0 30 2 * * *\"\n",
                10_000 + i
            )
        })
        .collect();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "database = \"{}\"\n[api]\nbase_url = \"{}\"\nrequest_timeout = \"500ms\"\nmax_retries = 1\nmax_concurrent_jobs = 64\n\
             [defaults]\npoll_interval = \"5ms\"\nkeep_last = 2\n\
             [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp}\nsecurity = \"none\"\nfrom = \"agent@example.com\"\nto = [\"ops@example.com\"]\n{jobs}",
            dir.path().join("history.db").display(),
            sim.base_url()
        ),
    )
    .unwrap();
    let o = command(&cfg, &["-q", "run-once"]).output().await.unwrap();
    sane(&o, "load");
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let runs = db.history(None, 5000).await.unwrap();
    assert_eq!(runs.len(), 1000, "every run recorded");
    let failed = runs
        .iter()
        .filter(|r| r.status == RunStatus::Failed)
        .count();
    println!(
        "load: {failed} of 1000 runs failed under 5% faults; {} mails",
        inbox.messages().len()
    );
    invariants::check(&sim.sim, &db, &expect()).await;
    assert!(failed >= 5, "the five failing jobs failed: {failed}");
    let mails = inbox.messages();
    assert_eq!(mails.len(), 1, "failures are digested into one mail");
    assert!(
        mails[0].contains(&format!("Subject: [agent] {failed} alerts")),
        "{}",
        &mails[0][..400.min(mails[0].len())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_https_api_is_refused_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .output()
        .expect("openssl is installed by .ci/run");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = closed_port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(d.join("cert.pem"))
        .arg("-key")
        .arg(d.join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cfg = d.join("config.toml");
    std::fs::write(&cfg, format!("database = \"{}\"\n[api]\nbase_url = \"https://127.0.0.1:{port}/api/v1\"\nmax_retries = 0\n[[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"0 30 2 * * *\"\n", d.join("h.db").display())).unwrap();
    let o = command(&cfg, &["check"]).output().await.unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o).to_lowercase();
    assert!(
        t.contains("certificate"),
        "the error must say it is the certificate:\n{t}"
    );
    assert!(!t.contains(&TOKEN.to_lowercase()));
}

#[tokio::test]
async fn database_failures_name_the_file_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Not a directory where one is needed.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let e = Database::open(&blocker.join("history.db"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&blocker.join("history.db").display().to_string()) && e.contains("directory"),
        "{e}"
    );
    // A corrupt file is reported, not replaced.
    let corrupt = dir.path().join("corrupt.db");
    let junk = b"this is not an SQLite database, but an operator's precious file".repeat(100);
    std::fs::write(&corrupt, &junk).unwrap();
    let e = Database::open(&corrupt).await.unwrap_err().to_string();
    assert!(e.contains(&corrupt.display().to_string()), "{e}");
    assert_eq!(
        std::fs::read(&corrupt).unwrap(),
        junk,
        "the file is untouched"
    );
    // Another writer holding the database for a moment: the agent waits, loses nothing.
    let path = dir.path().join("h.db");
    let db = Database::open(&path).await.unwrap();
    db.pin(SnapshotId::new(1), chrono::Utc::now())
        .await
        .unwrap();
    let other = Database::open(&path).await.unwrap();
    let mut tx = other.sqlite_pool().unwrap().begin().await.unwrap();
    sqlx::query("INSERT INTO pins (snapshot_id, pinned_at) VALUES (2, 0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.commit().await.unwrap();
    });
    db.pin(SnapshotId::new(3), chrono::Utc::now())
        .await
        .unwrap();
    writer.await.unwrap();
    let pinned = [1, 2, 3].map(SnapshotId::new).into();
    assert_eq!(
        db.pins(chrono::Utc::now() + chrono::Duration::days(3650))
            .await
            .unwrap(),
        pinned
    );
}

/// TOML-ish documents from the config's own vocabulary and random values.
fn toml_doc() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "database",
        "base_url",
        "token",
        "token_file",
        "request_timeout",
        "max_retries",
        "max_concurrent_jobs",
        "timezone",
        "keep_last",
        "keep_daily",
        "keep_weekly",
        "keep_within",
        "poll_interval",
        "snapshot_timeout",
        "catch_up",
        "max_deletions_per_run",
        "stale_after",
        "smtp_host",
        "smtp_port",
        "security",
        "from",
        "to",
        "repeat_after",
        "name",
        "server_id",
        "schedule",
        "maintenance_window",
        "lead",
        "bogus",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<bool>().prop_map(|v| v.to_string()),
        "[a-zA-Z0-9 /:@*._-]{0,20}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"20s\"",
            "\"off\"",
            "\"0 30 2 * * *\"",
            "\"Europe/Berlin\"",
            "[\"a@b.c\"]",
            "[]",
            "{}",
            "1.5"
        ])
        .prop_map(str::to_string),
    ];
    let table = prop::sample::select(vec![
        "",
        "[api]",
        "[defaults]",
        "[email]",
        "[[jobs]]",
        "[[jobs]]",
        "[nope]",
    ]);
    prop::collection::vec((table, prop::collection::vec((key, value), 0..6)), 0..6).prop_map(
        |tables| {
            let mut doc = String::new();
            for (t, kvs) in tables {
                doc.push_str(t);
                doc.push('\n');
                let mut seen = std::collections::HashSet::new();
                for (k, v) in kvs {
                    if seen.insert(k) {
                        doc.push_str(&format!("{k} = {v}\n"));
                    }
                }
            }
            doc
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_config_loader_never_panics_and_explains_every_rejection(doc in toml_doc()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &doc).unwrap();
        let _g = crate::helpers::env_lock();
        if let Err(e) = Settings::load(&path) {
            prop_assert!(!e.0.is_empty());
            for err in &e.0 {
                prop_assert!(!err.message.is_empty());
                prop_assert!(!err.origin.is_empty());
            }
        }
    }

    #[test]
    fn random_bytes_as_config_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &bytes).unwrap();
        let _g = crate::helpers::env_lock();
        let _ = Settings::load(&path);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_api_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = serde_json::from_slice::<SnapshotPage>(&bytes);
    }

    #[test]
    fn the_api_decoder_takes_any_status_and_nulls(status in "[a-z_]{0,12}", size in prop::option::of(0u64..100_000), desc in prop::option::of("[ -~]{0,20}")) {
        let body = serde_json::json!({"count": 1, "next": null, "results": [{
            "id": 1, "server": {"id": 2, "name": null}, "name": "n", "status": status,
            "size_mb": size, "created_at": "2026-11-28T00:00:00Z", "description": desc}]});
        let page: SnapshotPage = serde_json::from_value(body).unwrap();
        let snap: vps_snapshot_agent::api::Snapshot = serde_json::from_value(page.results[0].clone()).unwrap();
        prop_assert_eq!(snap.status.as_str(), status.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn many_openers_of_a_new_database_at_once_all_succeed() {
    // Separate pools, as separate processes would have; the file (or the empty schema)
    // and its migrations are raced.
    let dir = tempfile::tempdir().unwrap();
    let location = crate::store::location(&dir.path().join("new.db")).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let location = location.clone();
        set.spawn(async move { Database::open_at(&location).await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_full_database_fails_the_run_clearly_and_keeps_earlier_records() {
    let w = crate::helpers::world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    // Migrate, then note how many pages that takes.
    let db = Database::open(&path).await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    db.close().await;
    // Allow a few pages more than that: room for some runs, then "full".
    let limit = vps_snapshot_agent::db::OpenOptions {
        pragmas: vec![("max_page_count", (pages + 3).to_string())],
        ..Default::default()
    };
    let full = Database::open_with(&path, &limit).await.unwrap();
    let runner = w.runner(full.clone());
    let job = crate::helpers::job("web", 1, 3);
    let mut ok = 0;
    let mut error = None;
    for _ in 0..500 {
        match runner
            .run_job(&job, vps_snapshot_agent::db::RunTrigger::Manual, None)
            .await
        {
            Ok(o) => {
                assert_eq!(o.status, RunStatus::Succeeded);
                ok += 1;
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let error = error.expect("the database never filled up");
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("full"), "{error}");
    full.close().await;
    // Every run recorded before the disk filled is still there, and finished.
    let db = Database::open(&path).await.unwrap();
    let runs = db.history(None, 1000).await.unwrap();
    assert!(ok > 0, "some runs fitted first");
    assert_eq!(
        runs.iter()
            .filter(|r| r.status == RunStatus::Succeeded)
            .count(),
        ok,
        "{error}"
    );
    println!("{ok} runs fitted, then: {error}");
}
