use super::*;
use chrono::TimeZone;

fn snap(id: u64, day: u32, status: SnapshotStatus) -> Candidate {
    Candidate {
        id: SnapshotId::new(id),
        created_at: Utc.with_ymd_and_hms(2026, 11, day, 2, 30, 0).unwrap(),
        status,
        managed: true,
        pinned: false,
    }
}

#[test]
fn keep_last_keeps_the_newest_n_and_names_them() {
    let snaps: Vec<_> = (1..=5)
        .map(|d| snap(d as u64, d, SnapshotStatus::Completed))
        .collect();
    let policy = RetentionPolicy {
        last: 2,
        ..Default::default()
    };
    let v = plan(&snaps, &policy, Tz::UTC);
    assert_eq!(v[4].reason, "keep: last #1");
    assert_eq!(v[3].reason, "keep: last #2");
    assert!(
        v[..3]
            .iter()
            .all(|v| !v.keep && v.reason == "delete next: beyond the newest 2 (keep_last = 2)")
    );
}

#[test]
fn a_deletion_says_which_rule_passed_it_over() {
    let mut early = snap(1, 23, SnapshotStatus::Completed);
    early.created_at -= chrono::Duration::hours(1);
    let snaps = vec![
        early,
        snap(2, 23, SnapshotStatus::Completed),
        snap(3, 24, SnapshotStatus::Completed),
    ];
    let policy = RetentionPolicy {
        last: 1,
        daily: 2,
        ..Default::default()
    };
    let v = plan(&snaps, &policy, Tz::UTC);
    assert_eq!(v[2].reason, "keep: last #1, daily 2026-11-24");
    assert_eq!(v[1].reason, "keep: daily 2026-11-23");
    assert_eq!(
        v[0].reason,
        "delete next: beyond the newest 1 (keep_last = 1); not the newest of 2026-11-23 \
         (keep_daily = 2)"
    );
}

#[test]
fn weekly_buckets_use_iso_weeks_in_the_job_time_zone() {
    // 2026-11-22 is a Sunday (ISO week 47), 2026-11-23 a Monday (week 48).
    let snaps = vec![
        snap(1, 16, SnapshotStatus::Completed),
        snap(2, 22, SnapshotStatus::Completed),
        snap(3, 23, SnapshotStatus::Completed),
    ];
    let policy = RetentionPolicy {
        weekly: 2,
        ..Default::default()
    };
    let v = plan(&snaps, &policy, Tz::UTC);
    assert_eq!(v[2].reason, "keep: weekly 2026-W48");
    assert_eq!(v[1].reason, "keep: weekly 2026-W47");
    assert_eq!(
        v[0].reason,
        "delete next: not the newest of 2026-W47 (keep_weekly = 2)"
    );
}

#[test]
fn make_room_prefers_failed_then_policy_victims_and_spares_the_newest() {
    let snaps = vec![
        snap(1, 1, SnapshotStatus::Completed),
        snap(2, 2, SnapshotStatus::Completed),
        snap(3, 3, SnapshotStatus::Failed("failed".into())),
        snap(4, 4, SnapshotStatus::Completed),
        snap(5, 5, SnapshotStatus::Completed),
    ];
    let policy = RetentionPolicy {
        last: 3,
        ..Default::default()
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 6, 0, 0, 0).unwrap();
    let expect = Ok(vec![SnapshotId::new(3)]);
    assert_eq!(make_room(&snaps, &policy, Tz::UTC, now, 3), expect);
}

#[test]
fn make_room_fails_naming_unmanaged_blockers() {
    let mut snaps: Vec<_> = (1..=4)
        .map(|d| snap(d as u64, d, SnapshotStatus::Completed))
        .collect();
    for s in &mut snaps {
        s.managed = false;
    }
    snaps.push(snap(5, 5, SnapshotStatus::Completed));
    let policy = RetentionPolicy {
        last: 3,
        ..Default::default()
    };
    let err = make_room(&snaps, &policy, Tz::UTC, Utc::now(), 3).unwrap_err();
    assert_eq!(err.blocking.len(), 5);
    let first = (SnapshotId::new(1), "not managed by this job".to_string());
    assert_eq!(err.blocking[0], first);
    assert_eq!(err.blocking[4].1, "newest completed managed snapshot");
}
