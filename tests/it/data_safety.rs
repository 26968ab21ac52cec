//! The eight ways the agent once broke its own safety promises at the edges, each
//! reproduced through the `agent` binary against the simulator, plus the outbox flush a
//! manual run owes the operator. Every scene ends with the invariant checker.

use std::time::Duration;

use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::db::{Database, Step};
use vps_snapshot_agent::domain::AlertKind;
use vps_snapshot_agent::sim::{Delay, Event, Fault, FaultKind, Mode, Op, Simulator};

use crate::helpers::{Inbox, RunId, ServerId, SnapshotId, TOKEN, closed_port};
use crate::scene::{SERVER, Scene, Setup, command, kill_when, scene_with, step_is, text};

fn setup(defaults: &str) -> Setup {
    Setup {
        delay: Duration::ZERO,
        defaults: defaults.to_string(),
        ..Setup::default()
    }
}

/// `history --json` as values, newest first.
async fn history(s: &Scene) -> Vec<serde_json::Value> {
    let o = s.agent(&["history", "--json", "--limit", "100"]).await;
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

async fn run_json(s: &Scene, id: RunId) -> serde_json::Value {
    history(s)
        .await
        .into_iter()
        .find(|r| r["id"] == id.get())
        .unwrap_or_else(|| panic!("run {id} is not in the history"))
}

fn deleted(run: &serde_json::Value) -> Vec<SnapshotId> {
    run["deleted_snapshot_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| SnapshotId::new(v.as_u64().unwrap()))
        .collect()
}

/// Runs `run-once` `n` times, each expected to succeed; returns the snapshot ids made.
async fn seed(s: &Scene, n: usize) -> Vec<SnapshotId> {
    let mut made = Vec::new();
    for _ in 0..n {
        let o = s.agent(&["run-once"]).await;
        assert_eq!(o.status.code(), Some(0), "seeding: {}", text(&o));
        let id = history(s).await[0]["snapshot"]["id"].as_u64().unwrap();
        made.push(SnapshotId::new(id));
    }
    made
}

fn deleted_by_agent(sim: &Simulator) -> Vec<SnapshotId> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Deleted {
                id,
                external: false,
                ..
            } => Some(id),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_1_a_snapshot_that_completed_while_the_agent_was_down_is_not_timed_out() {
    let s = scene_with(setup("snapshot_timeout = \"1s\"\n")).await;
    let [old] = seed(&s, 1).await[..] else {
        unreachable!()
    };
    // The next snapshot takes longer than snapshot_timeout; the agent dies while waiting.
    s.sim
        .sim
        .set_delay(SERVER, Delay::Fixed(Duration::from_millis(1500)));
    let killed = kill_when(&s, "mid-poll", async |db: &Database, _: &Simulator| {
        step_is(db, Step::Poll).await
    })
    .await;
    s.sim.sim.set_delay(SERVER, Delay::Fixed(Duration::ZERO));
    // Back after snapshot_timeout has passed; the snapshot completed meanwhile.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let o = s.agent(&["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let run = run_json(&s, killed).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(deleted(&run), vec![old], "the resumed run rotated: {run}");
    assert!(
        !s.alert_kinds().await.contains(&AlertKind::Failed),
        "no FAILED alert for a snapshot that completed"
    );
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_2_two_processes_starting_at_once_resume_an_interrupted_run_once() {
    let s = scene_with(setup("keep_last = 3\n")).await;
    seed(&s, 3).await;
    s.reconfigure(&setup("keep_last = 1\nmax_deletions_per_run = 1\n"));
    s.sim
        .sim
        .set_delay(SERVER, Delay::Fixed(Duration::from_millis(800)));
    let killed = kill_when(&s, "mid-poll", async |db: &Database, _: &Simulator| {
        step_is(db, Step::Poll).await
    })
    .await;
    s.sim.sim.set_delay(SERVER, Delay::Fixed(Duration::ZERO));
    let (a, b) = tokio::join!(
        command(&s.cfg, &["run-once"]).output(),
        command(&s.cfg, &["run-once"]).output()
    );
    for o in [a.unwrap(), b.unwrap()] {
        crate::scene::sane(&o, "racing run-once");
    }
    let run = run_json(&s, killed).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        deleted(&run).len() <= 1,
        "max_deletions_per_run = 1, but the resumed run deleted {:?}",
        deleted(&run)
    );
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_3_a_create_that_lands_late_is_never_posted_again() {
    let s = scene_with(setup("keep_last = 2\n")).await;
    // The create's answer is lost and the API carries it out long after the settle
    // period (4 listings 300 ms apart).
    s.sim.sim.inject(Fault::new(
        Op::Create,
        FaultKind::LandLate(Duration::from_secs(3)),
        1,
    ));
    let first = s.agent(&["run-once"]).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let names: Vec<String> = s
        .sim
        .sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Created { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(
        names.len(),
        1,
        "one create carried out, not two: {names:?}\n{}",
        text(&first)
    );
    // The next run finds the late one and counts it as the agent's.
    let o = s.agent(&["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let listing = s
        .agent(&["snapshots", "--server", &SERVER.to_string()])
        .await;
    let out = String::from_utf8_lossy(&listing.stdout);
    let row = out
        .lines()
        .find(|l| l.contains(&names[0]))
        .unwrap_or_else(|| panic!("the late snapshot is listed:\n{out}"));
    assert!(row.contains("yes"), "managed: {row}");
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_4_a_delete_killed_in_flight_is_the_agents_own_not_drift() {
    let s = scene_with(setup("keep_last = 2\n")).await;
    let [oldest, _] = seed(&s, 2).await[..] else {
        unreachable!()
    };
    s.reconfigure(&setup("keep_last = 1\n"));
    // The API carries the DELETE out; its answer comes too late for the agent.
    s.sim.sim.inject(Fault::new(
        Op::Delete,
        FaultKind::DelayAfter(Duration::from_secs(5)),
        1,
    ));
    let killed = kill_when(
        &s,
        "delete in flight",
        async |_: &Database, sim: &Simulator| !deleted_by_agent(sim).is_empty(),
    )
    .await;
    s.sim.sim.clear_faults();
    let o = s.agent(&["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !s.alert_kinds().await.contains(&AlertKind::Drift),
        "the agent's own delete was taken for drift"
    );
    let run = run_json(&s, killed).await;
    assert!(
        deleted(&run).contains(&oldest),
        "the record says the agent deleted {oldest}: {run}"
    );
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_5_moving_a_job_to_another_server_is_not_drift() {
    let s = scene_with(setup("keep_last = 2\n")).await;
    seed(&s, 2).await;
    s.reconfigure(&Setup {
        server: ServerId::new(SERVER.get() + 1),
        ..setup("keep_last = 2\n")
    });
    let o = s.agent(&["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        s.sim.sim.snapshots(SERVER).len(),
        2,
        "the old server kept its own"
    );
    assert!(
        !s.alert_kinds().await.contains(&AlertKind::Drift),
        "snapshots on the old server did not vanish"
    );
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_6_a_restored_hand_made_snapshot_deleted_later_is_not_drift() {
    let s = scene_with(setup("keep_last = 2\n")).await;
    let by_hand = s.sim.sim.put(
        SERVER,
        "before-upgrade",
        SnapshotStatus::Completed,
        chrono::Utc::now() - chrono::Duration::days(2),
    );
    seed(&s, 1).await;
    let o = s.agent(&["restore", &by_hand.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(s.sim.sim.delete_external(by_hand));
    let o = s.agent(&["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        !s.alert_kinds().await.contains(&AlertKind::Drift),
        "the job never made {by_hand}"
    );
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_7_a_token_echoed_by_the_api_goes_nowhere() {
    let (inbox, port) = Inbox::start(0);
    let s = scene_with(Setup {
        smtp_port: port,
        ..setup("")
    })
    .await;
    for op in [Op::Create, Op::List] {
        s.sim.sim.clear_faults();
        s.sim
            .sim
            .inject(Fault::new(op, FaultKind::EchoHeaders(400), 100));
        let o = s.agent(&["run-once"]).await;
        assert_eq!(o.status.code(), Some(1), "{op:?}: {}", text(&o));
        assert!(
            text(&o).contains("[redacted]"),
            "{op:?}: the API's answer is shown, token redacted:\n{}",
            text(&o)
        );
    }
    let hist = s.agent(&["history", "--json"]).await;
    assert!(!text(&hist).contains(TOKEN));
    let mails = inbox.messages();
    assert!(!mails.is_empty(), "the failure was mailed");
    for m in &mails {
        assert!(!m.contains(TOKEN), "the token is in a mail:\n{m}");
    }
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_8_a_hand_made_snapshot_with_an_agent_style_name_is_not_the_agents() {
    let s = scene_with(setup("")).await;
    let day = |d| chrono::Utc::now() - chrono::Duration::days(d);
    let look_alike = s.sim.sim.put(
        SERVER,
        "agent-web-20250101T000000Z-abcdef",
        SnapshotStatus::Completed,
        day(3),
    );
    // Even a description copied from one the agent made does not make it the agent's.
    let copied = s.sim.sim.put_described(
        SERVER,
        "agent-web-20250102T000000Z-abcdef",
        Some("Made by vps-snapshot-agent, job web, run 1"),
        SnapshotStatus::Completed,
        day(2),
    );
    seed(&s, 2).await;
    let left: Vec<SnapshotId> = s.sim.sim.snapshots(SERVER).iter().map(|x| x.id).collect();
    for id in [look_alike, copied] {
        assert!(left.contains(&id), "{id} was deleted; left {left:?}");
    }
    let listing = s
        .agent(&["snapshots", "--server", &SERVER.to_string()])
        .await;
    let out = String::from_utf8_lossy(&listing.stdout);
    for name in [
        "agent-web-20250101T000000Z-abcdef",
        "agent-web-20250102T000000Z-abcdef",
    ] {
        let row = out.lines().find(|l| l.contains(name)).unwrap();
        assert!(
            row.contains("no (no marker"),
            "says why it is not managed: {row}\n{out}"
        );
    }
    s.check().await;
}

/// A failure alerted while the mail server is down, then the mail server back: the alert
/// waits out its retry backoff in the daemon, but not for an operator's command.
async fn failure_queued_while_smtp_is_down() -> (Scene, u16) {
    let port = closed_port();
    let s = scene_with(Setup {
        smtp_port: port,
        ..setup("")
    })
    .await;
    s.sim.sim.set_mode(SERVER, Mode::Fail);
    let o = s.agent(&["run-once"]).await;
    assert_eq!(o.status.code(), Some(1));
    s.sim.sim.set_mode(SERVER, Mode::Normal);
    (s, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_delivers_every_queued_alert_at_once() {
    let (s, port) = failure_queued_while_smtp_is_down().await;
    let (inbox, _) = Inbox::start(port);
    let o = s.agent(&["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mails = inbox.messages();
    assert!(
        mails.iter().any(|m| m.contains("FAILED web")),
        "run-once tried the queued FAILED alert at once: {mails:?}"
    );
    s.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_email_also_delivers_every_queued_alert() {
    let (s, port) = failure_queued_while_smtp_is_down().await;
    let (inbox, _) = Inbox::start(port);
    let o = s.agent(&["check", "--send-test-email"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("delivered 1 queued alert"),
        "{}",
        text(&o)
    );
    let mails = inbox.messages();
    assert!(
        mails.iter().any(|m| m.contains("FAILED web")),
        "check --send-test-email flushed the outbox: {mails:?}"
    );
    s.check().await;
}
