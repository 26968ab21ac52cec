//! An undoable restore: a safety snapshot first, pinned, waited for; then the restore.
//! Through the binary against the simulator, plus the pin's expiry on an injected clock.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use vps_snapshot_agent::api::SnapshotStatus::Completed;
use vps_snapshot_agent::clock::Clock;
use vps_snapshot_agent::db::{Action, Database, RunStatus, RunTrigger};
use vps_snapshot_agent::run::RestoreRequest;
use vps_snapshot_agent::sim::{Delay, Event, Fault, FaultKind, Mode, Op, SimOptions, SimServer};

use crate::cli::{BIN, JOB, agent, config, sim, text};
use crate::helpers::{Inbox, ServerId, SnapshotId, TOKEN, job, world};

const SERVER: ServerId = ServerId::new(5);

/// A hand-made snapshot on server 5 to restore from.
fn target(s: &SimServer) -> SnapshotId {
    s.sim.put(
        SERVER,
        "before-upgrade",
        Completed,
        Utc::now() - chrono::Duration::hours(5),
    )
}

/// The config for job `web` on server 5, mailing alerts to `inbox_port`.
fn with_mail(dir: &Path, s: &SimServer, inbox_port: u16) -> std::path::PathBuf {
    config(
        dir,
        &s.base_url(),
        &format!(
            "{JOB}[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {inbox_port}\nsecurity = \"none\"\nfrom = \"agent@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"3s\"\n"
        ),
    )
}

fn created(s: &SimServer) -> Vec<(SnapshotId, String)> {
    s.sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Created { id, name, .. } => Some((id, name)),
            _ => None,
        })
        .collect()
}

fn restored(s: &SimServer) -> Vec<SnapshotId> {
    s.sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Restored { id } => Some(id),
            _ => None,
        })
        .collect()
}

async fn history(cfg: &Path) -> Vec<serde_json::Value> {
    let o = agent(cfg, &["history", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_takes_a_pinned_safety_snapshot_first_waits_for_it_and_says_how_to_undo() {
    let s = sim().await;
    let from = target(&s);
    s.sim
        .set_delay(SERVER, Delay::Fixed(Duration::from_millis(600)));
    let (inbox, port) = Inbox::start(0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_mail(dir.path(), &s, port);

    let o = agent(&cfg, &["restore", &from.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let made = created(&s);
    assert_eq!(made.len(), 1, "one safety snapshot: {made:?}");
    let (safety, name) = made[0].clone();
    assert!(name.ends_with("-prerestore"), "{name}");
    assert!(name.starts_with("agent-web-"), "{name}");
    assert_eq!(restored(&s), [from], "then the restore, once");
    assert!(
        text(&o).contains(&format!("to undo, `agent restore {safety}`")),
        "{}",
        text(&o)
    );

    // The order, from the journal: create, polls until completed, then the restore.
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let run = db.history(None, 1).await.unwrap().remove(0);
    let actions: Vec<Action> = db
        .entries(run.id)
        .await
        .unwrap()
        .iter()
        .map(|e| e.action)
        .collect();
    let create = actions.iter().position(|a| *a == Action::Create).unwrap();
    let restore = actions.iter().position(|a| *a == Action::Restore).unwrap();
    assert!(create < restore, "{actions:?}");
    assert!(
        actions[create..restore].contains(&Action::Poll),
        "waited for the safety snapshot: {actions:?}"
    );
    assert_eq!(run.status, RunStatus::Started);
    assert_eq!(run.safety_snapshot_id, Some(safety));

    // Pinned for restore_safety_keep (7 days), then no longer.
    let now = Utc::now();
    assert!(db.pins(now).await.unwrap().contains(&safety));
    assert!(
        !db.pins(now + chrono::Duration::days(7) + chrono::Duration::minutes(1))
            .await
            .unwrap()
            .contains(&safety)
    );
    db.close().await;

    let runs = history(&cfg).await;
    assert_eq!(runs[0]["status"], "started");
    assert_eq!(runs[0]["safety_snapshot_id"], safety.get());
    assert!(
        runs[0]["note"]
            .as_str()
            .unwrap()
            .contains(&format!("to undo, `agent restore {safety}`")),
        "{}",
        runs[0]
    );
    let mail = inbox.messages().join("\n");
    assert!(mail.contains("RESTORED"), "{mail}");
    assert!(
        mail.contains(&format!("To undo: agent restore {safety}")),
        "{mail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_stuck_safety_snapshot_means_no_restore_and_an_alert() {
    for mode in [Mode::Fail, Mode::Stuck] {
        let s = sim().await;
        let from = target(&s);
        s.sim.set_mode(SERVER, mode);
        let (inbox, port) = Inbox::start(0);
        let dir = tempfile::tempdir().unwrap();
        let cfg = with_mail(dir.path(), &s, port);
        let o = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(["restore", &from.to_string(), "--yes"])
            .env("AGENT_API__TOKEN", TOKEN)
            .env("AGENT_DEFAULTS__SNAPSHOT_TIMEOUT", "1s")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{mode:?}: {}", text(&o));
        assert!(restored(&s).is_empty(), "{mode:?}: no restore was sent");
        assert!(
            text(&o).contains("the restore was not done"),
            "{}",
            text(&o)
        );
        let runs = history(&cfg).await;
        assert_eq!(runs[0]["status"], "failed");
        assert!(
            runs[0]["note"].as_str().unwrap().contains("not sent"),
            "{}",
            runs[0]
        );
        let db = Database::open(&dir.path().join("history.db"))
            .await
            .unwrap();
        assert!(
            db.pins(Utc::now()).await.unwrap().is_empty(),
            "{mode:?}: a safety snapshot that is no way back is not kept pinned"
        );
        db.close().await;
        let mail = inbox.messages().join("\n");
        assert!(mail.contains("FAILED"), "{mode:?}: {mail}");
        assert!(mail.contains("was not done"), "{mode:?}: {mail}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_room_is_made_by_the_jobs_policy_or_the_restore_is_refused() {
    // With room to make: two of web's snapshots and three by hand fill the server.
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    for _ in 0..2 {
        assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    }
    let mine: Vec<SnapshotId> = created(&s).into_iter().map(|(id, _)| id).collect();
    let from = target(&s);
    for i in 0..2 {
        s.sim
            .put(SERVER, &format!("hand-{i}"), Completed, Utc::now());
    }
    assert_eq!(s.sim.snapshots(SERVER).len(), 5);
    let o = agent(&cfg, &["restore", &from.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let left: Vec<SnapshotId> = s.sim.snapshots(SERVER).iter().map(|s| s.id).collect();
    assert!(
        !left.contains(&mine[0]),
        "the policy's oldest went: {left:?}"
    );
    assert!(
        left.contains(&mine[1]),
        "the newest good one stays: {left:?}"
    );
    assert_eq!(restored(&s), [from]);

    // Without: five snapshots made by hand, none the agent's to delete.
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let from = target(&s);
    for i in 0..4 {
        s.sim
            .put(SERVER, &format!("hand-{i}"), Completed, Utc::now());
    }
    let o = agent(&cfg, &["restore", &from.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("blocking"), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{from} (not managed")),
        "{}",
        text(&o)
    );
    assert!(restored(&s).is_empty());
    assert!(created(&s).is_empty());
    // And the dry run said so first.
    let dry = agent(&cfg, &["restore", &from.to_string(), "--dry-run"]).await;
    assert!(text(&dry).contains("would FAIL"), "{}", text(&dry));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_safety_snapshot_when_asked_and_a_dry_run_touches_nothing() {
    let s = sim().await;
    let from = target(&s);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);

    let dry = agent(&cfg, &["restore", &from.to_string(), "--dry-run"]).await;
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        text(&dry).contains("would take a safety snapshot: agent-web-"),
        "{}",
        text(&dry)
    );
    assert!(
        text(&dry).contains("-prerestore, pinned until"),
        "{}",
        text(&dry)
    );
    assert!(
        text(&dry).contains(&format!("would then restore server 5 from snapshot {from}")),
        "{}",
        text(&dry)
    );
    assert!(created(&s).is_empty() && restored(&s).is_empty());
    assert!(!dir.path().join("history.db").exists(), "nothing recorded");

    let o = agent(
        &cfg,
        &[
            "restore",
            &from.to_string(),
            "--yes",
            "--no-safety-snapshot",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("CANNOT be undone"), "{}", text(&o));
    assert!(created(&s).is_empty(), "no safety snapshot");
    assert_eq!(restored(&s), [from]);
    let runs = history(&cfg).await;
    assert_eq!(runs[0]["status"], "started");
    assert!(runs[0]["safety_snapshot_id"].is_null());
    assert!(
        runs[0]["note"]
            .as_str()
            .unwrap()
            .contains("no safety snapshot was taken"),
        "{}",
        runs[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_step_never_sends_a_restore_twice() {
    // Killed while the safety snapshot is being made: nothing was sent, nothing will be.
    let s = sim().await;
    let from = target(&s);
    s.sim
        .set_delay(SERVER, Delay::Fixed(Duration::from_secs(5)));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let restore = |cfg: &Path| {
        Command::new(BIN)
            .arg("--config")
            .arg(cfg)
            .args(["restore", &from.to_string(), "--yes"])
            .env("AGENT_API__TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = restore(&cfg);
    for _ in 0..400 {
        if s.sim.requests().of(Op::Create) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let safety = created(&s)[0].0;
    let next = agent(&cfg, &["run-once"]).await;
    assert_eq!(next.status.code(), Some(0), "{}", text(&next));
    let runs = history(&cfg).await;
    let r = runs.iter().find(|r| r["kind"] == "restore").unwrap();
    assert_eq!(r["status"], "interrupted", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("nothing was sent"),
        "{r}"
    );
    assert!(restored(&s).is_empty());
    assert!(
        s.sim.snapshots(SERVER).iter().any(|x| x.id == safety),
        "the pinned safety snapshot survives the job's rotation"
    );

    // Killed while the restore request is in flight: it may have started; it is never
    // sent again.
    let s = sim().await;
    let from2 = target(&s);
    s.sim.inject(Fault::new(
        Op::Restore,
        FaultKind::DelayAfter(Duration::from_secs(30)),
        1,
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["restore", &from2.to_string(), "--yes"])
        .env("AGENT_API__TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if !restored(&s).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for _ in 0..2 {
        assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    }
    assert_eq!(s.sim.requests().of(Op::Restore), 1, "asked once, ever");
    let runs = history(&cfg).await;
    let r = runs.iter().find(|r| r["kind"] == "restore").unwrap();
    assert_eq!(r["status"], "interrupted", "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("may have started"),
        "{r}"
    );
}

#[tokio::test]
async fn the_safety_pin_ends_after_restore_safety_keep_and_rotation_may_then_take_it() {
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = w.runner(w.db(&dir).await);
    let mut web = job("web", 5, 1);
    web.restore_safety_keep = Duration::from_secs(3 * 86_400);
    let from = w.put(5, None, 600, Completed);
    let snap = w
        .sim
        .snapshots(SERVER)
        .into_iter()
        .find(|s| s.id == from)
        .unwrap();
    let o = runner
        .restore(RestoreRequest {
            snapshot: &snap,
            job: Some(&web),
            safety: true,
        })
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Started, "{:?}", o.error);
    let safety = o.safety.unwrap();

    // Within the pin, the job's runs (keep_last 1) leave it alone.
    w.clock.advance(Duration::from_secs(86_400));
    let r = runner
        .run_job(&web, RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(w.sim.snapshots(SERVER).iter().any(|s| s.id == safety));

    // After it, it is the job's like any other, and its policy rotates it out.
    w.clock.advance(Duration::from_secs(3 * 86_400));
    assert!(
        !runner
            .db
            .pins(w.clock.now())
            .await
            .unwrap()
            .contains(&safety)
    );
    let r = runner
        .run_job(&web, RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert!(
        r.deleted.contains(&safety),
        "rotated once unpinned: {:?}",
        r.deleted
    );
}
