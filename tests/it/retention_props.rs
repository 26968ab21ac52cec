//! Property tests of the retention planner's safety rules over random snapshot sets,
//! statuses, pins, policies and time zones.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::domain::SnapshotId;
use vps_snapshot_agent::retention::{
    Candidate, LIMIT, RetentionPolicy, SLOTS, make_room, plan, victims,
};

fn status() -> impl Strategy<Value = SnapshotStatus> {
    prop_oneof![
        6 => Just(SnapshotStatus::Completed),
        2 => Just(SnapshotStatus::InProgress),
        1 => Just(SnapshotStatus::Failed("failed".into())),
        1 => Just(SnapshotStatus::Unknown("rebooting".into())),
    ]
}

fn snapshots() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (
            0i64..200 * 24 * 60,
            status(),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.15),
        ),
        0..12,
    )
    .prop_map(|v| {
        let base = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        v.into_iter()
            .enumerate()
            .map(|(i, (mins, status, managed, pinned))| Candidate {
                id: SnapshotId::new(800 + i as u64),
                created_at: base + chrono::Duration::minutes(mins),
                status,
                managed,
                pinned,
            })
            .collect()
    })
}

fn policy() -> impl Strategy<Value = RetentionPolicy> {
    (
        0u32..5,
        0u32..3,
        0u32..3,
        0u32..3,
        0u32..3,
        prop::option::weighted(0.3, 1u64..30 * 86_400),
    )
        .prop_map(
            |(last, hourly, daily, weekly, monthly, within)| RetentionPolicy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                within: within.map(Duration::from_secs),
            },
        )
        .prop_filter("valid policies only", |p| p.validate().is_ok())
}

fn tz() -> impl Strategy<Value = Tz> {
    prop::sample::select(vec![
        Tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
        chrono_tz::Asia::Kolkata,
    ])
}

fn newest_completed_managed(snaps: &[Candidate]) -> Option<SnapshotId> {
    snaps
        .iter()
        .filter(|s| s.managed && s.status == SnapshotStatus::Completed)
        .max_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)))
        .map(|s| s.id)
}

fn protected(s: &Candidate) -> bool {
    !s.managed
        || s.pinned
        || s.status == SnapshotStatus::InProgress
        || matches!(s.status, SnapshotStatus::Unknown(_))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn rotation_never_deletes_what_it_must_not(snaps in snapshots(), p in policy(), tz in tz(), max in 1u32..6) {
        let out = victims(&snaps, &p, tz, max);
        prop_assert!(out.len() <= max as usize);
        let newest = newest_completed_managed(&snaps);
        for id in &out {
            let s = snaps.iter().find(|s| s.id == *id).unwrap();
            prop_assert!(!protected(s), "deleted protected {s:?}");
            prop_assert!(Some(*id) != newest, "deleted the newest completed managed snapshot");
        }
    }

    #[test]
    fn kept_count_never_exceeds_the_policy_bound(snaps in snapshots(), p in policy(), tz in tz()) {
        let verdicts = plan(&snaps, &p, tz);
        let kept = snaps.iter().zip(&verdicts).filter(|(s, v)| {
            v.keep && s.managed && !s.pinned && s.status == SnapshotStatus::Completed
        }).count() as u32;
        prop_assert!(kept <= p.bound().max(1), "kept {kept} > bound {}", p.bound());
        prop_assert!(p.bound() <= SLOTS);
    }

    #[test]
    fn the_plan_is_deterministic_and_order_independent(snaps in snapshots(), p in policy(), tz in tz()) {
        let a = plan(&snaps, &p, tz);
        let b = plan(&snaps, &p, tz);
        prop_assert_eq!(&a, &b);
        let mut reversed = snaps.clone();
        reversed.reverse();
        let mut c = plan(&reversed, &p, tz);
        c.reverse();
        prop_assert_eq!(a, c);
    }

    #[test]
    fn make_room_frees_exactly_enough_or_names_every_blocker(snaps in snapshots(), p in policy(), tz in tz(), max in 1u32..6) {
        let now = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
        let needed = (snaps.len() + 1).saturating_sub(LIMIT as usize);
        let newest = newest_completed_managed(&snaps);
        match make_room(&snaps, &p, tz, now, max) {
            Ok(v) => {
                prop_assert_eq!(v.len(), needed);
                let unique: HashSet<_> = v.iter().collect();
                prop_assert_eq!(unique.len(), v.len());
                for id in &v {
                    let s = snaps.iter().find(|s| s.id == *id).unwrap();
                    prop_assert!(!protected(s), "make-room chose protected {s:?}");
                    prop_assert!(Some(*id) != newest);
                }
            }
            Err(no) => {
                prop_assert!(needed > 0);
                let deletable = snaps.iter().filter(|s| !protected(s) && Some(s.id) != newest).count();
                prop_assert!(deletable < needed || (max as usize) < needed);
                prop_assert!(no.blocking.len() + deletable == snaps.len());
            }
        }
    }
}
