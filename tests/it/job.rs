use std::time::Duration;

use vps_snapshot_agent::api::SnapshotStatus::{self, Completed, Failed, InProgress};
use vps_snapshot_agent::clock::Clock;
use vps_snapshot_agent::db::{
    Action, Database, EntryId, Intent, NewRun, RunKind, RunStatus, RunTrigger, State,
};
use vps_snapshot_agent::sim::{Fault, FaultKind, Mode, Op, SimOptions};

use crate::helpers::*;
use vps_snapshot_agent::domain::AlertKind;

/// Every journal entry of every run, oldest first.
async fn journal(db: &Database) -> Vec<vps_snapshot_agent::db::Entry> {
    let mut all = Vec::new();
    for run in db.history(None, 1000).await.unwrap() {
        all.extend(db.entries(run.id).await.unwrap());
    }
    all.sort_by_key(|e| e.id);
    all
}

/// The drift alerts waiting to be sent.
async fn drift_alerts(db: &Database) -> Vec<vps_snapshot_agent::db::PendingAlert> {
    db.pending_alerts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == AlertKind::Drift)
        .collect()
}

async fn setup(opts: SimOptions) -> (World, tempfile::TempDir) {
    (world(opts).await, tempfile::tempdir().unwrap())
}

#[tokio::test]
pub(crate) async fn a_run_creates_waits_and_records_every_action() {
    let (w, dir) = setup(SimOptions {
        delay: vps_snapshot_agent::sim::Delay::Fixed(Duration::from_secs(300)),
        ..SimOptions::default()
    })
    .await;
    let runner = w.runner(w.db(&dir).await);
    let j = job("web", 1, 3);
    let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    let snaps = w.sim.snapshots(ServerId::new(1));
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].status, Completed);
    assert!(snaps[0].name.starts_with("agent-web-"));
    assert_eq!(o.polls, 15, "300 s at a 20 s interval");
    // API requests per successful run: list + create + polls (no deletions here).
    assert_eq!(w.sim.requests().total, 2 + u64::from(o.polls));

    let run = runner.db.run(o.run_id).await.unwrap().unwrap();
    let json = serde_json::to_value(&run).unwrap();
    for key in [
        "id",
        "job",
        "server_id",
        "kind",
        "trigger",
        "status",
        "started_at",
        "finished_at",
        "snapshot",
        "deleted_snapshot_ids",
        "error",
    ] {
        assert!(json.get(key).is_some(), "history JSON lacks {key}: {json}");
    }
    assert_eq!(json["status"], "succeeded");
    assert_eq!(json["kind"], "snapshot");
    assert_eq!(json["trigger"], "manual");
    assert_eq!(json["snapshot"]["status"], "completed");
    assert!(json["started_at"].as_str().unwrap().ends_with('Z'));
    let actions: Vec<(Action, State)> = runner
        .db
        .entries(o.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.state))
        .collect();
    assert_eq!(actions[0], (Action::Lock, State::Ok));
    assert_eq!(actions[1], (Action::List, State::Ok));
    assert_eq!(actions[2], (Action::Create, State::Ok));
    assert_eq!(actions.iter().filter(|a| a.0 == Action::Poll).count(), 15);
}

#[tokio::test]
pub(crate) async fn rotation_keeps_the_policy_and_never_touches_unmanaged_or_pinned() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let manual = w.put(1, None, 5000, Completed);
    let other_job = w.put(1, Some("other"), 4000, Completed);
    let pinned = w.put(1, Some("web"), 3000, Completed);
    runner.db.pin(pinned, w.clock.now()).await.unwrap();
    let j = job("web", 1, 1);
    for _ in 0..4 {
        let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
        assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
        w.clock.advance(Duration::from_secs(3600));
    }
    let left: Vec<SnapshotId> = w
        .sim
        .snapshots(ServerId::new(1))
        .iter()
        .map(|s| s.id)
        .collect();
    for id in [manual, other_job, pinned] {
        assert!(left.contains(&id), "{id} was deleted; left {left:?}");
        assert!(!w.deleted_ids().contains(&id));
    }
    assert_eq!(left.len(), 4, "three protected + the newest managed");
}

/// A snapshot pinned after a run chose it for deletion (the pin committed between the
/// run's read of the pins and its delete's intent) is not deleted: the intent is refused
/// and nothing is recorded. A pin that has run out refuses nothing, and an intent other
/// than a delete (a restore's) is not refused.
#[tokio::test]
pub(crate) async fn a_delete_is_not_recorded_for_a_snapshot_pinned_since_it_was_chosen() {
    let (w, dir) = setup(SimOptions::default()).await;
    let db = w.db(&dir).await;
    let owner = w.runner(db.clone()).owner;
    let t0 = w.clock.now();
    let new = NewRun {
        job: "web",
        server_id: ServerId::new(1),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Manual,
        scheduled_for: None,
        started_at: t0,
    };
    let run = db.start_run(new, &owner).await.unwrap();
    let delete = |id: SnapshotId| Intent {
        run_id: run,
        server_id: ServerId::new(1),
        action: Action::Delete,
        snapshot_id: Some(id),
        snapshot_name: None,
        detail: None,
    };
    let [pinned, briefly, free] = [11, 12, 13].map(SnapshotId::new);
    db.pin(pinned, t0).await.unwrap();
    db.pin_until(briefly, t0, Some(t0 + chrono::Duration::seconds(60)))
        .await
        .unwrap();
    for id in [pinned, briefly] {
        let refused = db.intend_delete(delete(id), &owner, t0).await.unwrap();
        assert_eq!(refused, None, "a delete of pinned {id} was recorded");
    }
    assert!(
        db.entries(run).await.unwrap().is_empty(),
        "nothing recorded"
    );
    let later = t0 + chrono::Duration::seconds(61);
    for (id, at) in [(briefly, later), (free, t0)] {
        let entry = db.intend_delete(delete(id), &owner, at).await.unwrap();
        assert!(entry.is_some(), "the delete of {id} was refused");
    }
    let restore = Intent {
        action: Action::Restore,
        ..delete(pinned)
    };
    db.intend(restore, &owner, t0).await.unwrap();
}

#[tokio::test]
pub(crate) async fn nothing_is_deleted_after_a_failed_or_timed_out_snapshot() {
    for (mode, says) in [
        (Mode::Fail, "ended failed"),
        (Mode::Stuck, "not completed after 30m"),
    ] {
        let (w, dir) = setup(SimOptions::default()).await;
        let runner = w.runner(w.db(&dir).await);
        for m in [300, 200, 100] {
            w.put(1, Some("web"), m, Completed);
        }
        w.sim.set_mode(ServerId::new(1), mode);
        let o = runner
            .run_job(&job("web", 1, 1), RunTrigger::Manual, None)
            .await
            .unwrap();
        assert_eq!(o.status, RunStatus::Failed);
        assert!(
            o.error.as_deref().unwrap().contains(says),
            "{mode:?}: {:?}",
            o.error
        );
        assert!(w.deleted_ids().is_empty(), "{mode:?}");
        // The failure is alerted in the same transaction.
        let pending = runner.db.pending_alerts().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].kind, AlertKind::Failed);
        assert!(pending[0].body.contains(says));
    }
}

#[tokio::test]
pub(crate) async fn a_failed_snapshot_is_cleaned_up_by_the_next_successful_run() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let failed = w.put(1, Some("web"), 100, Failed("failed".into()));
    let o = runner
        .run_job(&job("web", 1, 2), RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(o.deleted, vec![failed]);
}

#[tokio::test]
pub(crate) async fn at_the_limit_room_is_made_and_the_newest_good_one_kept() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let ids: Vec<SnapshotId> = [500, 400, 300, 200, 100]
        .iter()
        .map(|m| w.put(1, Some("web"), *m, Completed))
        .collect();
    let newest = ids[4];
    let o = runner
        .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    let deleted = w.deleted_ids();
    assert_eq!(deleted[0], ids[0], "make-room takes the oldest first");
    assert!(!deleted.contains(&newest));
    assert_eq!(w.sim.snapshots(ServerId::new(1)).len(), 3);
}

#[tokio::test]
pub(crate) async fn a_server_full_of_unmanaged_snapshots_fails_naming_them() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let ids: Vec<SnapshotId> = (1..=5)
        .map(|m| w.put(1, None, m * 100, Completed))
        .collect();
    let o = runner
        .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Failed);
    let e = o.error.unwrap();
    for id in ids {
        assert!(e.contains(&id.to_string()), "{e}");
    }
    assert!(e.contains("not managed"), "{e}");
    assert_eq!(w.created(), 0);
    let alerts = runner.db.pending_alerts().await.unwrap();
    assert_eq!(alerts[0].kind, AlertKind::NoRoom);
    assert!(
        alerts[0].subject.contains("NO ROOM web (server 1)"),
        "{}",
        alerts[0].subject
    );
}

#[tokio::test]
pub(crate) async fn a_dropped_create_response_yields_exactly_one_snapshot() {
    for kind in [
        FaultKind::DropAfter,
        FaultKind::Status {
            code: 503,
            retry_after: None,
            body: String::new(),
        },
    ] {
        let (w, dir) = setup(SimOptions::default()).await;
        let runner = w.runner(w.db(&dir).await);
        w.sim.inject(Fault::new(Op::Create, kind.clone(), 1));
        let o = runner
            .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
            .await
            .unwrap();
        assert_eq!(o.status, RunStatus::Succeeded, "{kind:?}: {:?}", o.error);
        assert_eq!(w.sim.snapshots(ServerId::new(1)).len(), 1, "{kind:?}");
        let adopted = journal(&runner.db)
            .await
            .iter()
            .filter(|e| e.action == Action::Adopt)
            .count();
        // A 503 happens before the work: nothing to adopt, the create is sent again.
        let expect = usize::from(matches!(kind, FaultKind::DropAfter));
        assert_eq!(adopted, expect, "{kind:?}");
    }
}

#[tokio::test]
pub(crate) async fn transient_errors_are_retried_and_a_400_is_not() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    w.sim.inject(Fault::status(Op::List, 503, 2));
    w.sim.inject(Fault::new(
        Op::List,
        FaultKind::Status {
            code: 429,
            retry_after: Some(3),
            body: String::new(),
        },
        1,
    ));
    let o = runner
        .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    assert!(w.clock.sleeps().contains(&Duration::from_secs(3)));

    w.sim.inject(Fault::new(
        Op::Create,
        FaultKind::Status {
            code: 400,
            retry_after: None,
            body: "{\"name\":[\"bad\"]}".into(),
        },
        1,
    ));
    let before = w.sim.requests().of(Op::Create);
    let o = runner
        .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Failed);
    assert!(o.error.unwrap().contains("400"));
    assert_eq!(
        w.sim.requests().of(Op::Create) - before,
        1,
        "a 400 is not retried"
    );
}

#[tokio::test]
pub(crate) async fn pagination_is_honoured_when_the_limit_is_near() {
    let (w, dir) = setup(SimOptions {
        page_size: 2,
        ..SimOptions::default()
    })
    .await;
    let runner = w.runner(w.db(&dir).await);
    // Five snapshots over three pages; only the last page shows the fifth.
    let oldest = w.put(1, Some("web"), 900, Completed);
    for m in [800, 700, 600] {
        w.put(1, None, m, Completed);
    }
    w.put(1, Some("web"), 100, Completed);
    let o = runner
        .run_job(&job("web", 1, 1), RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    assert_eq!(
        w.deleted_ids()[0],
        oldest,
        "make-room saw the whole listing"
    );
}

#[tokio::test]
pub(crate) async fn deletions_are_capped_and_one_failed_delete_does_not_stop_the_rest() {
    // A delete the API refused (503: not handled) spends nothing of the budget; one whose
    // answer was lost (500 after every retry: it may have happened) spends one.
    for (code, spent) in [(503, 0), (500, 1)] {
        let (w, dir) = setup(SimOptions::default()).await;
        let runner = w.runner(w.db(&dir).await);
        for m in [400, 300, 200, 100] {
            w.put(1, Some("web"), m, Completed);
        }
        // The first delete fails every attempt (1 + 3 retries); the next ones work.
        w.sim.inject(Fault::status(Op::Delete, code, 4));
        let mut j = job("web", 1, 1);
        j.max_deletions_per_run = 2;
        let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
        assert_eq!(o.status, RunStatus::Succeeded);
        assert_eq!(
            o.deleted.len(),
            2 - spent,
            "{code}: deleted after one failure: {:?}",
            o.deleted
        );
        assert!(
            o.error.unwrap().contains("rotation"),
            "{code}: the failed delete is recorded"
        );
        let states: Vec<State> = journal(&runner.db)
            .await
            .iter()
            .filter(|e| e.action == Action::Delete)
            .map(|e| e.state)
            .collect();
        let first = if spent == 1 {
            State::Unknown
        } else {
            State::Error
        };
        assert_eq!(states[0], first, "{code}: {states:?}");
        assert_eq!(w.sim.snapshots(ServerId::new(1)).len(), 3 + spent, "{code}");
    }
}

#[tokio::test]
pub(crate) async fn a_snapshot_deleted_by_someone_else_mid_run_fails_the_run() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    w.sim.set_mode(ServerId::new(1), Mode::Stuck);
    let mut j = job("web", 1, 1);
    j.snapshot_timeout = Duration::from_secs(30 * 86_400);
    let task = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_job(&j, RunTrigger::Manual, None).await }
    });
    let id = loop {
        if let Some(s) = w.sim.snapshots(ServerId::new(1)).first() {
            break s.id;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(w.sim.delete_external(id));
    let o = task.await.unwrap().unwrap();
    assert_eq!(o.status, RunStatus::Failed);
    assert!(o.error.unwrap().contains("vanished"));
}

#[tokio::test]
pub(crate) async fn a_managed_snapshot_that_vanished_between_runs_raises_drift() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let o = runner
        .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
        .await
        .unwrap();
    let (id, _) = o.snapshot.unwrap();
    w.sim.delete_external(id);
    runner
        .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
        .await
        .unwrap();
    runner
        .run_job(&job("web", 1, 3), RunTrigger::Manual, None)
        .await
        .unwrap();
    let drift = drift_alerts(&runner.db).await;
    assert_eq!(drift.len(), 1, "one alert, not one per run");
    assert!(drift[0].body.contains(&id.to_string()));
}

/// A snapshot adopted after its create's answer was lost is in the journal twice (the
/// create and the adopt): when it vanishes, it is reported once, not once per entry.
#[tokio::test]
pub(crate) async fn an_adopted_snapshot_that_vanished_is_reported_once() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let j = job("web", 1, 3);
    w.sim
        .inject(Fault::new(Op::Create, FaultKind::DropAfter, 1));
    let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    let (id, _) = o.snapshot.unwrap();
    let entries = journal(&runner.db).await;
    let named = |a: Action| {
        entries
            .iter()
            .filter(|e| e.action == a && e.snapshot() == Some(id))
            .count()
    };
    assert_eq!((named(Action::Create), named(Action::Adopt)), (1, 1));
    w.sim.delete_external(id);
    runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    let vanished = journal(&runner.db)
        .await
        .iter()
        .filter(|e| e.action == Action::Vanished && e.snapshot() == Some(id))
        .count();
    assert_eq!(vanished, 1, "one vanished entry for one snapshot");
    let drift = drift_alerts(&runner.db).await;
    assert_eq!(drift.len(), 1);
    assert_eq!(
        drift[0].body.matches(&format!("{id}")).count(),
        1,
        "{}",
        drift[0].body
    );
}

/// Drift detection reads only what is left of what a job made: each create or adopt
/// whose snapshot a delete or vanished entry names is marked `gone` as that entry is
/// written, and the read goes through the index of those not gone (its cost was the
/// job's whole history before).
#[tokio::test]
pub(crate) async fn drift_reads_only_the_snapshots_still_left() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let j = job("web", 1, 1);
    let mut made = Vec::new();
    for _ in 0..4 {
        let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
        assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
        made.push(o.snapshot.unwrap().0);
    }
    // The newest vanishes outside the agent; the next run reports it.
    w.sim.delete_external(made[3]);
    let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    let (left, left_name) = o.snapshot.unwrap();
    let marks: Vec<(i64, i64)> = crate::store::raw!(
        runner.db,
        sqlx::query_as(
            "SELECT snapshot_id, gone FROM journal \
             WHERE action IN ('create', 'adopt') AND state = 'ok' ORDER BY id"
        ),
        fetch_all
    )
    .unwrap();
    let ids: Vec<i64> = made.iter().chain([&left]).map(|s| s.get() as i64).collect();
    assert_eq!(
        marks,
        ids.iter()
            .map(|id| (*id, i64::from(*id != left.get() as i64)))
            .collect::<Vec<_>>(),
        "deleted by rotation (3) or found vanished (1): gone; the one left: not"
    );
    assert_eq!(
        runner
            .db
            .made_by("web", ServerId::new(1), 20)
            .await
            .unwrap(),
        vec![(left, left_name)]
    );
}

/// A database of an earlier version gets its `gone` marks from the journal it holds.
#[tokio::test]
pub(crate) async fn an_earlier_versions_journal_is_marked_gone_where_a_delete_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let pool = database_before(&path, "20261206").await;
    for sql in [
        "INSERT INTO runs (id, job, server_id, kind, trigger, status, started_at, owner, step) \
         VALUES (1, 'web', 1, 'snapshot', 'manual', 'succeeded', 0, 'old/1/1/x', 'done'), \
         (2, 'web', 1, 'snapshot', 'manual', 'succeeded', 1, 'old/1/1/x', 'done'), \
         (3, 'web', 1, 'snapshot', 'manual', 'succeeded', 2, 'old/1/1/x', 'done')",
        "INSERT INTO journal (run_id, server_id, action, state, snapshot_id, snapshot_name, at) VALUES \
         (1, 1, 'create', 'ok', 11, 'a', 0), (2, 1, 'create', 'ok', 12, 'b', 1), \
         (2, 1, 'delete', 'error', 11, NULL, 1), (3, 1, 'adopt', 'ok', 13, 'c', 2), \
         (3, 1, 'vanished', 'ok', 12, 'b', 2)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let db = Database::open(&path).await.unwrap();
    let marks: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT snapshot_id, gone FROM journal WHERE action IN ('create', 'adopt') ORDER BY id",
    )
    .fetch_all(db.sqlite_pool().unwrap())
    .await
    .unwrap();
    assert_eq!(marks, [(11, 1), (12, 1), (13, 0)]);
    assert_eq!(
        db.made_by("web", ServerId::new(1), 20).await.unwrap(),
        [(SnapshotId::new(13), "c".to_string())]
    );
}

#[tokio::test]
pub(crate) async fn two_runs_on_one_server_never_overlap() {
    let (w, dir) = setup(SimOptions {
        delay: vps_snapshot_agent::sim::Delay::Fixed(Duration::from_secs(120)),
        ..SimOptions::default()
    })
    .await;
    // Two runners as two processes would be: separate pools, separate owners, one file.
    let a = w.runner(w.db(&dir).await);
    let b = w.runner(w.db(&dir).await);
    let j = job("web", 1, 3);
    let (ra, rb) = tokio::join!(
        a.run_job(&j, RunTrigger::Manual, None),
        b.run_job(&j, RunTrigger::Manual, None)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        (ra.status, rb.status),
        (RunStatus::Succeeded, RunStatus::Succeeded)
    );
    // Each run's span from lock to its last action does not overlap the other's.
    let span = |run: RunId| {
        let db = a.db.clone();
        async move {
            let ids: Vec<_> = db
                .entries(run)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.action != Action::Finish)
                .map(|e| e.id)
                .collect();
            (ids[0], ids[ids.len() - 1])
        }
    };
    let (a_lo, a_hi) = span(ra.run_id).await;
    let (b_lo, b_hi) = span(rb.run_id).await;
    assert!(
        a_hi < b_lo || b_hi < a_lo,
        "interleaved: {a_lo:?}..{a_hi:?} vs {b_lo:?}..{b_hi:?}"
    );
}

/// The journal entry a create request of a crashed run (its owner the dead process) left
/// before it was sent.
async fn create_intent(
    w: &World,
    runner: &vps_snapshot_agent::run::Runner,
    run: RunId,
    name: &str,
) -> EntryId {
    let intent = Intent {
        run_id: run,
        server_id: ServerId::new(1),
        action: Action::Create,
        snapshot_id: None,
        snapshot_name: Some(name),
        detail: None,
    };
    runner
        .db
        .intend(intent, &dead_owner(), w.clock.now())
        .await
        .unwrap()
}

async fn crashed_run(w: &World, runner: &vps_snapshot_agent::run::Runner) -> RunId {
    runner
        .db
        .start_run(
            NewRun {
                job: "web",
                server_id: ServerId::new(1),
                kind: RunKind::Snapshot,
                trigger: RunTrigger::Schedule,
                scheduled_for: None,
                started_at: w.clock.now(),
            },
            &dead_owner(),
        )
        .await
        .unwrap()
}

#[tokio::test]
pub(crate) async fn a_run_that_died_before_creating_is_marked_interrupted() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let id = crashed_run(&w, &runner).await;
    assert!(
        runner
            .resume_interrupted(&[job("web", 1, 3)])
            .await
            .unwrap()
            .is_empty()
    );
    let run = runner.db.run(id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Interrupted);
    assert_eq!(w.created(), 0);
}

#[tokio::test]
pub(crate) async fn a_run_that_died_after_sending_create_adopts_the_snapshot() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let id = crashed_run(&w, &runner).await;
    let name = vps_snapshot_agent::snapshot::naming::new_name("web", w.clock.now());
    create_intent(&w, &runner, id, &name).await;
    // The create reached the API; the process died before recording the answer.
    w.sim
        .put(ServerId::new(1), &name, InProgress, w.clock.now());
    let out = runner
        .resume_interrupted(&[job("web", 1, 3)])
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].status, RunStatus::Succeeded, "{:?}", out[0].error);
    assert_eq!(
        w.sim.snapshots(ServerId::new(1)).len(),
        1,
        "no second snapshot"
    );
    assert_eq!(w.created(), 0, "nothing created by the resume");
}

/// A run of "web" on server 1 whose process died while it polled: its create answered,
/// its snapshot since completed on the API.
async fn died_mid_poll(w: &World, runner: &vps_snapshot_agent::run::Runner) -> RunId {
    let id = crashed_run(w, runner).await;
    let name = vps_snapshot_agent::snapshot::naming::new_name("web", w.clock.now());
    let entry = create_intent(w, runner, id, &name).await;
    let snap = w.sim.put(
        ServerId::new(1),
        &name,
        SnapshotStatus::Completed,
        w.clock.now(),
    );
    runner
        .db
        .resolve(
            entry,
            State::Ok,
            Some((snap, "in_progress")),
            None,
            w.clock.now(),
        )
        .await
        .unwrap();
    id
}

#[tokio::test]
pub(crate) async fn a_run_that_died_mid_poll_is_finished_and_rotated() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let old = w.put(1, Some("web"), 600, Completed);
    died_mid_poll(&w, &runner).await;
    let out = runner
        .resume_interrupted(&[job("web", 1, 1)])
        .await
        .unwrap();
    assert_eq!(out[0].status, RunStatus::Succeeded);
    assert_eq!(out[0].deleted, vec![old]);
    assert!(runner.db.running().await.unwrap().is_empty());
}

/// A fire that finds its job's run on its server left running by a dead process finishes
/// that run first: going ahead, its rotation (`keep_last = 1`) would delete the orphan's
/// completed snapshot, and the orphan, resumed later, would end "interrupted: the
/// snapshot is gone" although it made its snapshot (seen under load: a frequent schedule's
/// fires kept taking the lock before the periodic resumption).
#[tokio::test]
pub(crate) async fn a_fire_finishes_its_jobs_orphaned_run_before_its_own() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let id = died_mid_poll(&w, &runner).await;
    w.clock.advance(Duration::from_secs(60));
    let out = runner
        .run_job(&job("web", 1, 1), RunTrigger::Schedule, None)
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let orphan = runner.db.run(id).await.unwrap().unwrap();
    assert_eq!(
        orphan.status,
        RunStatus::Succeeded,
        "the orphan: {:?}",
        orphan.error
    );
    assert!(runner.db.running().await.unwrap().is_empty());
}

#[tokio::test]
pub(crate) async fn a_run_aborted_at_any_point_resumes_without_a_duplicate() {
    // Abort a real run after a growing number of scheduler yields, i.e. at each step it
    // records, then resume it as the next process would.
    for cut in 0..40u32 {
        let (w, dir) = setup(SimOptions {
            delay: vps_snapshot_agent::sim::Delay::Fixed(Duration::from_secs(60)),
            ..SimOptions::default()
        })
        .await;
        let db = w.db(&dir).await;
        // The dying process has a database handle of its own, closed with it.
        let mut dying = w.runner(w.db(&dir).await);
        dying.owner = dead_owner();
        let dying_db = dying.db.clone();
        let j = job("web", 1, 3);
        let task = tokio::spawn({
            let j = j.clone();
            async move {
                let o = dying.run_job(&j, RunTrigger::Schedule, None).await;
                dying.db.close().await;
                o
            }
        });
        for _ in 0..cut {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        task.abort();
        let _ = task.await;
        // A process that dies loses its connections with it, and PostgreSQL rolls back
        // what they left open; an aborted task's do not go by themselves (a statement cut
        // mid-transaction can leave its connection idle in that transaction, holding the
        // run's row), so they are closed here as the kernel would.
        let _ = tokio::time::timeout(Duration::from_secs(10), dying_db.close()).await;
        // The lock the dead process held is released by the next one's check. On
        // PostgreSQL a COMMIT the dead process had sent may still land after that check
        // has looked (a server finishes what it was sent): the next check (every 30 s in
        // the daemon) finds it. Checks a moment apart, as long as a run is left, for at
        // most five seconds.
        let next = w.runner(db.clone());
        for _ in 0..100 {
            next.resume_interrupted(std::slice::from_ref(&j))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if next.db.running().await.unwrap().is_empty() {
                break;
            }
        }
        assert!(
            next.db.running().await.unwrap().is_empty(),
            "cut {cut}: a run left running"
        );
        assert!(
            w.created() <= 1,
            "cut {cut}: {} snapshots created",
            w.created()
        );
        let o = next.run_job(&j, RunTrigger::Manual, None).await.unwrap();
        assert_eq!(o.status, RunStatus::Succeeded, "cut {cut}: {:?}", o.error);
        assert!(w.sim.snapshots(ServerId::new(1)).len() <= 2, "cut {cut}");
    }
}

#[tokio::test]
pub(crate) async fn a_steady_state_run_costs_two_requests_plus_polls_plus_deletions() {
    let (w, dir) = setup(SimOptions {
        delay: vps_snapshot_agent::sim::Delay::Fixed(Duration::from_secs(100)),
        ..SimOptions::default()
    })
    .await;
    let runner = w.runner(w.db(&dir).await);
    w.put(1, Some("web"), 600, Completed);
    let before = w.sim.requests().total;
    let o = runner
        .run_job(&job("web", 1, 1), RunTrigger::Schedule, None)
        .await
        .unwrap();
    assert_eq!(o.deleted.len(), 1);
    let used = w.sim.requests().total - before;
    assert_eq!(
        used,
        2 + u64::from(o.polls) + 1,
        "the final poll's listing serves the rotation"
    );
}

/// A database as an earlier version left it: the migrations older than `before` only.
async fn database_before(path: &std::path::Path, before: &str) -> sqlx::SqlitePool {
    let old = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("migrations/sqlite").unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().as_ref() < before {
            std::fs::copy(entry.path(), old.path().join(entry.file_name())).unwrap();
        }
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}

#[tokio::test]
pub(crate) async fn an_earlier_versions_database_keeps_knowing_its_snapshots() {
    let (w, dir) = setup(SimOptions::default()).await;
    let path = dir.path().join("history.db");
    let at = |mins| w.clock.now() - chrono::Duration::minutes(mins);
    // Made by the earlier version: named in the pattern, no mark, recorded in `actions`.
    let old_name = vps_snapshot_agent::snapshot::naming::new_name("web", at(600));
    let old = w.sim.put(ServerId::new(1), &old_name, Completed, at(600));
    // Asked for by a run that died before recording the answer; it landed.
    let lost_name = vps_snapshot_agent::snapshot::naming::new_name("web", at(300));
    let lost = w.sim.put(ServerId::new(1), &lost_name, Completed, at(300));
    // Named like the agent's, but made by hand: the earlier version never knew it.
    let look_alike = w.sim.put(
        ServerId::new(1),
        "agent-web-20250101T000000Z-abcdef",
        Completed,
        at(900),
    );
    let pool = database_before(&path, "20261129").await;
    for sql in [
        format!(
            "INSERT INTO runs (id, job, server_id, kind, trigger, status, started_at, finished_at, owner, step, \
             snapshot_name, snapshot_id, snapshot_status) VALUES (1, 'web', 1, 'snapshot', 'manual', 'succeeded', \
             0, 1, 'old/1/1/x', 'done', '{old_name}', {old}, 'completed')"
        ),
        format!(
            "INSERT INTO actions (run_id, at, action, snapshot_id, outcome, detail) \
             VALUES (1, 0, 'create', {old}, 'ok', '{old_name}')"
        ),
        format!(
            "INSERT INTO runs (id, job, server_id, kind, trigger, status, started_at, owner, step, snapshot_name) \
             VALUES (2, 'web', 1, 'snapshot', 'manual', 'running', 2, '{}', 'create', '{lost_name}')",
            dead_owner().as_str()
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let runner = w.runner(Database::open(&path).await.unwrap());
    let known = runner
        .db
        .known_snapshots(
            ServerId::new(1),
            &[old, lost, look_alike],
            &[&old_name, &lost_name, "x"],
        )
        .await
        .unwrap();
    assert_eq!(
        known,
        [old, lost].into(),
        "the journal took over what the old version knew"
    );
    let resumed = runner
        .resume_interrupted(&[job("web", 1, 1)])
        .await
        .unwrap();
    assert_eq!(
        resumed[0].snapshot.as_ref().map(|s| s.0),
        Some(lost),
        "adopted"
    );
    let o = runner
        .run_job(&job("web", 1, 1), RunTrigger::Manual, None)
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    let left: Vec<SnapshotId> = w
        .sim
        .snapshots(ServerId::new(1))
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(
        !left.contains(&old),
        "the old version's snapshot is still the agent's to rotate"
    );
    assert!(
        left.contains(&look_alike),
        "a name alone was never proof: {left:?}"
    );
}

#[tokio::test]
pub(crate) async fn restores_recorded_as_succeeded_become_started_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let pool = database_before(&path, "20261130").await;
    for sql in [
        "INSERT INTO runs (id, job, server_id, kind, trigger, status, started_at, finished_at, owner, step) \
         VALUES (7, 'web', 1, 'snapshot', 'manual', 'succeeded', 0, 1, 'old/1/1/x', 'done')",
        "INSERT INTO runs (id, job, server_id, kind, trigger, status, started_at, finished_at, owner, step) \
         VALUES (8, 'web', 1, 'restore', 'manual', 'succeeded', 2, 3, 'old/1/1/x', 'restore')",
        "INSERT INTO journal (run_id, server_id, action, state, snapshot_id, at) \
         VALUES (7, 1, 'create', 'ok', 801, 0), (8, 1, 'restore', 'ok', 801, 2)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let db = Database::open(&path).await.unwrap();
    let status = |id: i64| {
        let db = db.clone();
        async move { db.run(RunId::new(id)).await.unwrap().unwrap().status }
    };
    assert_eq!(status(7).await, RunStatus::Succeeded);
    assert_eq!(
        status(8).await,
        RunStatus::Started,
        "a restore is only ever started"
    );
    let journal: i64 = sqlx::query_scalar("SELECT count(*) FROM journal")
        .fetch_one(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(
        journal, 2,
        "rebuilding runs must not cascade into the journal"
    );
    let dangling: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(db.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert!(dangling.is_empty(), "{dangling:?}");
    assert_eq!(
        db.last_run("web").await.unwrap().map(|r| r.id),
        Some(RunId::new(7)),
        "a restore is not the job's last run"
    );
    let bad = sqlx::query(
        "INSERT INTO runs (job, server_id, kind, trigger, status, started_at, owner) \
         VALUES ('web', 1, 'snapshot', 'manual', 'started', 4, 'x')",
    )
    .execute(db.sqlite_pool().unwrap())
    .await;
    assert!(bad.is_err(), "only a restore can be 'started'");
}

#[tokio::test]
pub(crate) async fn job_summaries_agree_with_the_one_job_queries() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let (web, db_job) = (job("web", 1, 2), job("db", 2, 2));
    for _ in 0..2 {
        runner
            .run_job(&web, RunTrigger::Manual, None)
            .await
            .unwrap();
    }
    w.sim
        .set_mode(ServerId::new(2), vps_snapshot_agent::sim::Mode::Fail);
    runner
        .run_job(&db_job, RunTrigger::Manual, None)
        .await
        .unwrap();
    let summaries = runner
        .db
        .job_summaries(&["web", "db", "never-ran"])
        .await
        .unwrap();
    for name in ["web", "db"] {
        let s = summaries[name].clone();
        let (last, success) = (s.last_run, s.last_success_at);
        let want_last = runner.db.last_run(name).await.unwrap();
        let want_success = runner
            .db
            .last_success(name)
            .await
            .unwrap()
            .and_then(|r| r.finished_at);
        assert_eq!(last.map(|r| r.id), want_last.map(|r| r.id), "{name}");
        assert_eq!(success, want_success, "{name}");
    }
    assert!(
        summaries["db"].last_success_at.is_none(),
        "db never succeeded"
    );
    assert_eq!(summaries["never-ran"].last_run.as_ref().map(|r| r.id), None);
    use vps_snapshot_agent::db::RunStatus::{Failed, Succeeded};
    assert_eq!(summaries["web"].timeline, [Succeeded, Succeeded]);
    assert_eq!(summaries["db"].timeline, [Failed]);
    assert!(summaries["never-ran"].timeline.is_empty());
}

/// The run's database went away mid-run: its task ended without recording its end or
/// releasing its lock. When the database is back this process resumes it, under that
/// very lock, rather than wait for itself.
#[tokio::test]
pub(crate) async fn a_run_this_process_left_over_is_resumed_under_the_lock_it_left() {
    let (w, dir) = setup(SimOptions::default()).await;
    let db = w.db(&dir).await;
    let runner = w.runner(db.clone());
    let j = job("web", 1, 3);
    let now = w.clock.now();
    let new = vps_snapshot_agent::db::NewRun {
        job: "web",
        server_id: j.server_id,
        kind: vps_snapshot_agent::db::RunKind::Snapshot,
        trigger: RunTrigger::Manual,
        scheduled_for: None,
        started_at: now,
    };
    let left = db.start_run(new, &runner.owner).await.unwrap();
    let lease = Duration::from_secs(120);
    let locked = db.try_lock(j.server_id, &runner.owner, Some(left), now, lease);
    assert_eq!(locked.await.unwrap(), Ok(()));
    runner
        .resume_interrupted(std::slice::from_ref(&j))
        .await
        .unwrap();
    assert_eq!(
        db.run(left).await.unwrap().unwrap().status,
        RunStatus::Interrupted,
        "resumed (it never asked for a snapshot), not left waiting on its own lock"
    );
    let other = vps_snapshot_agent::identity::Owner::current();
    let free = db.try_lock(j.server_id, &other, None, now, lease).await;
    assert_eq!(free.unwrap(), Ok(()), "and the lock is free");
}

/// A run of this very process whose task ended without recording its end (the database
/// was lost meanwhile) holds nothing up: its lock is free and the next check settles it,
/// although the process lives on. While in flight, neither happens.
#[tokio::test]
pub(crate) async fn a_run_this_process_left_over_is_settled_and_its_lock_freed() {
    let (w, dir) = setup(SimOptions::default()).await;
    let db = w.db(&dir).await;
    let runner = w.runner(db.clone());
    let j = job("web", 1, 3);
    let now = w.clock.now();
    let new = vps_snapshot_agent::db::NewRun {
        job: "web",
        server_id: j.server_id,
        kind: vps_snapshot_agent::db::RunKind::Snapshot,
        trigger: RunTrigger::Manual,
        scheduled_for: None,
        started_at: now,
    };
    let left = db.start_run(new, &runner.owner).await.unwrap();
    let lease = Duration::from_secs(120);
    let locked = db.try_lock(j.server_id, &runner.owner, Some(left), now, lease);
    assert_eq!(locked.await.unwrap(), Ok(()));
    let other = vps_snapshot_agent::identity::Owner::current();
    {
        let _going = runner.owner.in_flight(left);
        let busy = db
            .try_lock(j.server_id, &other, None, now, lease)
            .await
            .unwrap();
        assert!(busy.is_err(), "a run in flight keeps its lock");
        let resumed = runner.resume_interrupted(std::slice::from_ref(&j)).await;
        assert!(resumed.unwrap().is_empty());
        assert_eq!(
            db.run(left).await.unwrap().unwrap().status,
            RunStatus::Running
        );
    }
    let o = runner.run_job(&j, RunTrigger::Manual, None).await.unwrap();
    assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
    runner
        .resume_interrupted(std::slice::from_ref(&j))
        .await
        .unwrap();
    assert_eq!(
        db.run(left).await.unwrap().unwrap().status,
        RunStatus::Interrupted,
        "it never asked for a snapshot"
    );
}

#[tokio::test]
pub(crate) async fn a_stored_time_that_is_no_time_fails_the_read_naming_its_column() {
    let (w, dir) = setup(SimOptions::default()).await;
    let runner = w.runner(w.db(&dir).await);
    let web = job("web", 1, 2);
    let o = runner
        .run_job(&web, RunTrigger::Manual, None)
        .await
        .unwrap();
    crate::store::raw!(
        runner.db,
        sqlx::query("UPDATE runs SET finished_at = $1 WHERE id = $2")
            .bind(i64::MAX)
            .bind(o.run_id),
        execute
    )
    .unwrap();
    let err = runner
        .db
        .run(o.run_id)
        .await
        .expect_err("a run finished at no time at all is not read as 1970");
    let text = vps_snapshot_agent::errors::of(&err);
    assert!(
        text.contains("finished_at") && text.contains(&format!("{} is not a time", i64::MAX)),
        "{text}"
    );
    let err = runner
        .db
        .job_summaries(&["web"])
        .await
        .expect_err("nor in the jobs' summaries");
    assert!(vps_snapshot_agent::errors::of(&err).contains("finished_at"));
}
