//! What the fault explorer found once its histories stepped the wall clock and had two
//! daemons fire the same fire late: each case as the history met it, at the database's
//! edge where the agent decides.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use vps_snapshot_agent::alert::{AlertPolicy, throttled};
use vps_snapshot_agent::db::{Finish, NewAlert, NewRun, RunKind, RunStatus, RunTrigger};
use vps_snapshot_agent::domain::AlertKind;
use vps_snapshot_agent::identity::Owner;

use crate::helpers::ServerId;

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, h, m, 0).unwrap()
}

fn fire(job: &str, scheduled: DateTime<Utc>, started: DateTime<Utc>) -> NewRun<'_> {
    NewRun {
        job,
        server_id: ServerId::new(14),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Schedule,
        scheduled_for: Some(scheduled),
        started_at: started,
    }
}

fn ended(at: DateTime<Utc>) -> Finish<'static> {
    Finish {
        status: RunStatus::Succeeded,
        error: None,
        step: None,
        at,
        alerts: &[],
        ping: None,
    }
}

/// Seed 22: after a step back, one daemon ran the 22:11 fire; the other got the same fire
/// late, after the 23:11 one had run, and ran it again, taking the later run for proof
/// that the clock had come back round. A later run the clock has already passed again
/// proves nothing: only one started at a wall time still ahead of the clock does.
#[tokio::test]
async fn a_fire_delivered_late_after_a_later_one_ran_is_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::store::open(&dir.path().join("history.db")).await;
    let me = Owner::current();
    for (scheduled, started) in [(at(22, 11), at(22, 11)), (at(23, 11), at(23, 11))] {
        let run = db
            .claim_fire(fire("job-3", scheduled, started), &me)
            .await
            .unwrap()
            .unwrap();
        db.finish_run(run, &me, ended(started + chrono::Duration::minutes(4)))
            .await
            .unwrap();
    }
    let late = db
        .claim_fire_again(fire("job-3", at(22, 11), at(23, 30)), &me)
        .await
        .unwrap();
    assert!(
        late.is_err(),
        "a fire delivered late, after a later one ran, was run again: {late:?}"
    );
    // The clock went back to 22:11 after the 23:11 fire: that one is in its future, so
    // 22:11 comes round again, once.
    let again = db
        .claim_fire_again(fire("job-3", at(22, 11), at(22, 11)), &me)
        .await
        .unwrap();
    assert!(again.is_ok(), "{again:?}");
    db.close().await;
}

/// Seeds 43, 114 and 136: the clock went back 50 minutes, and the failures after it were
/// never alerted: the last alert, stamped "in the future", read as sent less than
/// `repeat_after` ago. A clock set back by a day would have kept a day of failures quiet.
#[tokio::test]
async fn a_failure_after_the_clock_went_back_is_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::store::open(&dir.path().join("history.db")).await;
    let policy = AlertPolicy {
        repeat_after: Duration::from_secs(6 * 3600),
        notify_recovery: true,
    };
    db.queue_alert(&NewAlert {
        job: Some("web".into()),
        server_id: Some(ServerId::new(14)),
        run_id: None,
        kind: AlertKind::Failed,
        subject: "[agent] FAILED web".into(),
        body: "FAILED".into(),
        created_at: at(12, 0),
    })
    .await
    .unwrap();
    let quiet = |now| throttled(&db, &policy, "web", now);
    assert!(
        quiet(at(12, 30)).await.unwrap(),
        "a second failure half an hour on repeats the alert: kept quiet"
    );
    for back in [at(11, 10), at(0, 0) - chrono::Duration::days(1)] {
        assert!(
            !quiet(back).await.unwrap(),
            "with the clock back at {back}, a failure was kept quiet by an alert stamped 12:00"
        );
    }
    db.close().await;
}
