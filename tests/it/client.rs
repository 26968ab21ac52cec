use std::time::Duration;

use vps_snapshot_agent::api::{ApiError, SnapshotStatus};
use vps_snapshot_agent::sim::{Fault, FaultKind, Op, SimOptions};

use crate::helpers::*;

fn ago(w: &World, mins: i64) -> chrono::DateTime<chrono::Utc> {
    use vps_snapshot_agent::clock::Clock;
    w.clock.now() - chrono::Duration::minutes(mins)
}

#[tokio::test]
async fn every_endpoint_succeeds_against_the_simulator() {
    let w = world(SimOptions::default()).await;
    let c = w.client();
    let created = c
        .create(ServerId::new(7), "first_snap-1", "by a test")
        .await
        .unwrap();
    assert_eq!(created.status, SnapshotStatus::InProgress);
    assert_eq!(created.server.id, ServerId::new(7));
    let listed = c.list(Some(ServerId::new(7))).await.unwrap().snapshots;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].status,
        SnapshotStatus::Completed,
        "zero delay completes at once"
    );
    assert_eq!(listed[0].description.as_deref(), Some("by a test"));
    c.restore(created.id).await.unwrap();
    c.delete(created.id).await.unwrap();
    assert!(
        c.list(Some(ServerId::new(7)))
            .await
            .unwrap()
            .snapshots
            .is_empty()
    );
    c.check_token().await.unwrap();
}

#[tokio::test]
async fn list_follows_next_across_three_pages() {
    let w = world(SimOptions {
        page_size: 2,
        ..SimOptions::default()
    })
    .await;
    for i in 0..5 {
        w.sim.put(
            ServerId::new(9),
            &format!("s{i}"),
            SnapshotStatus::Completed,
            ago(&w, 60 - i),
        );
    }
    w.sim.put(
        ServerId::new(10),
        "other",
        SnapshotStatus::Completed,
        ago(&w, 1),
    );
    let c = w.client();
    let all = c.list(Some(ServerId::new(9))).await.unwrap().snapshots;
    let names: Vec<_> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
    assert_eq!(
        w.sim.requests().of(Op::List),
        3,
        "three pages, three requests"
    );
}

#[tokio::test]
async fn errors_are_typed_and_never_retried_for_4xx() {
    let w = world(SimOptions {
        servers: Some([ServerId::new(1)].into()),
        ..SimOptions::default()
    })
    .await;
    let c = w.client();
    let bad_name = c
        .create(ServerId::new(1), "no spaces allowed", "")
        .await
        .unwrap_err();
    assert!(
        matches!(bad_name, ApiError::BadRequest { ref body, .. } if body.contains("letters")),
        "{bad_name}"
    );
    let no_server = c.create(ServerId::new(2), "ok", "").await.unwrap_err();
    assert!(
        matches!(no_server, ApiError::NotFound { .. }),
        "{no_server}"
    );
    let gone = c.restore(SnapshotId::new(4242)).await.unwrap_err();
    assert!(matches!(gone, ApiError::NotFound { .. }), "{gone}");
    let del = c.delete(SnapshotId::new(4242)).await.unwrap_err();
    assert!(matches!(del, ApiError::NotFound { .. }), "{del}");
    let wrong = w.client_with(&w.api_settings(), "not-the-token");
    let unauth = wrong.list(None).await.unwrap_err();
    assert!(matches!(unauth, ApiError::Unauthorized), "{unauth}");
    assert_eq!(
        w.sim.requests().total,
        5,
        "one request each: no 4xx is retried"
    );
    assert!(w.clock.sleeps().is_empty());
}

#[tokio::test]
async fn limit_of_five_is_a_400() {
    let w = world(SimOptions::default()).await;
    let c = w.client();
    for i in 0..5 {
        c.create(ServerId::new(3), &format!("s{i}"), "")
            .await
            .unwrap();
    }
    let e = c.create(ServerId::new(3), "s5", "").await.unwrap_err();
    assert!(
        matches!(e, ApiError::BadRequest { ref body, .. } if body.contains("limit")),
        "{e}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::status(Op::List, 503, 2));
    let c = w.client();
    assert!(
        c.list(Some(ServerId::new(1)))
            .await
            .unwrap()
            .snapshots
            .is_empty()
    );
    assert_eq!(w.sim.requests().total, 3);
    let sleeps = w.clock.sleeps();
    assert_eq!(sleeps.len(), 2);
    assert!(
        sleeps[0] >= Duration::from_millis(250) && sleeps[0] <= Duration::from_millis(500),
        "{sleeps:?}"
    );
    assert!(
        sleeps[1] >= Duration::from_millis(500) && sleeps[1] <= Duration::from_secs(1),
        "{sleeps:?}"
    );
}

#[tokio::test]
async fn retries_stop_at_max_retries() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::status(Op::List, 502, 10));
    let e = w.client().list(None).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Server { status: 502, attempts: 4, ref body, .. } if body.contains("upstream")),
        "{e}"
    );
}

#[tokio::test]
async fn a_delete_that_may_have_happened_is_outcome_unknown() {
    let w = world(SimOptions::default()).await;
    let id = w
        .sim
        .put(ServerId::new(1), "x", SnapshotStatus::Completed, ago(&w, 5));
    // Every attempt answered 502: any of them may have been carried out.
    w.sim.inject(Fault::status(Op::Delete, 502, 10));
    let e = w.client().delete(id).await.unwrap_err();
    assert!(matches!(e, ApiError::OutcomeUnknown { .. }), "{e}");
    // 503 says the request was not handled: a plain failure, nothing done.
    w.sim.clear_faults();
    w.sim.inject(Fault::status(Op::Delete, 503, 10));
    let e = w.client().delete(id).await.unwrap_err();
    assert!(matches!(e, ApiError::Server { status: 503, .. }), "{e}");
    // Gone before the first attempt: not found, not "deleted".
    w.sim.clear_faults();
    let e = w
        .client()
        .delete(SnapshotId::new(id.get() + 100))
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn a_503_on_create_is_sent_again_since_nothing_was_done() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::status(Op::Create, 503, 1));
    w.client()
        .create(ServerId::new(1), "after_503", "")
        .await
        .unwrap();
    assert_eq!(w.sim.snapshots(ServerId::new(1)).len(), 1);
    assert_eq!(w.sim.requests().of(Op::Create), 2);
}

#[tokio::test]
async fn an_answer_echoing_the_token_is_scrubbed_before_anything_reads_it() {
    let w = world(SimOptions::default()).await;
    w.sim
        .inject(Fault::new(Op::List, FaultKind::EchoHeaders(400), 1));
    let e = w.client().list(None).await.unwrap_err().to_string();
    assert!(!e.contains(TOKEN), "{e}");
    assert!(e.contains("Bearer [redacted]"), "{e}");
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::new(
        Op::List,
        FaultKind::Status {
            code: 429,
            retry_after: Some(7),
            body: "{\"detail\":\"slow down\"}".into(),
        },
        1,
    ));
    w.client().list(None).await.unwrap();
    assert_eq!(w.clock.sleeps(), vec![Duration::from_secs(7)]);
}

#[tokio::test]
async fn rate_limited_create_is_retried_since_nothing_was_done() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::status(Op::Create, 429, 1));
    w.client()
        .create(ServerId::new(1), "after_429", "")
        .await
        .unwrap();
    assert_eq!(w.sim.snapshots(ServerId::new(1)).len(), 1);
}

#[tokio::test]
async fn a_dropped_create_is_outcome_unknown_not_retried() {
    let w = world(SimOptions::default()).await;
    w.sim
        .inject(Fault::new(Op::Create, FaultKind::DropAfter, 1));
    let e = w
        .client()
        .create(ServerId::new(1), "dropped", "")
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::OutcomeUnknown { .. }), "{e}");
    assert_eq!(
        w.sim.snapshots(ServerId::new(1)).len(),
        1,
        "the simulator did create it"
    );
    assert_eq!(
        w.sim.requests().of(Op::Create),
        1,
        "and the client did not send it twice"
    );
}

#[tokio::test]
async fn a_5xx_on_create_is_outcome_unknown() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::status(Op::Create, 500, 1));
    let e = w
        .client()
        .create(ServerId::new(1), "maybe", "")
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::OutcomeUnknown { .. }), "{e}");
}

#[tokio::test]
async fn slow_responses_time_out() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::new(
        Op::List,
        FaultKind::Delay(Duration::from_secs(3)),
        1,
    ));
    let mut settings = w.api_settings();
    settings.request_timeout = Duration::from_millis(200);
    settings.max_retries = 0;
    let e = w
        .client_with(&settings, TOKEN)
        .list(None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ApiError::Transport { ref kind, .. } if kind.contains("timed out")),
        "{e}"
    );
}

#[tokio::test]
async fn a_dropped_list_is_retried() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::new(Op::List, FaultKind::DropBefore, 1));
    w.client().list(None).await.unwrap();
    assert_eq!(w.sim.requests().total, 2);
}

#[tokio::test]
async fn unknown_status_values_are_kept() {
    let w = world(SimOptions::default()).await;
    let body = r#"{"count":1,"next":null,"results":[{"id":5,"server":{"id":1,"name":"a"},
        "name":"x","status":"rebooting","size_mb":null,"created_at":"2026-11-28T02:00:00Z","description":null}]}"#;
    w.sim
        .inject(Fault::new(Op::List, FaultKind::Body(body.into()), 1));
    let list = w.client().list(Some(ServerId::new(1))).await.unwrap();
    assert_eq!(
        list.snapshots[0].status,
        SnapshotStatus::Unknown("rebooting".into())
    );
}

#[tokio::test]
async fn malformed_bodies_are_retried_then_decode_errors() {
    let w = world(SimOptions::default()).await;
    // One bad answer is retried.
    w.sim.inject(Fault::new(
        Op::List,
        FaultKind::Body("{\"results\": [1, 2".into()),
        1,
    ));
    assert!(w.client().list(None).await.unwrap().snapshots.is_empty());
    // One that stays bad is a decode error naming the request.
    w.sim.inject(Fault::new(
        Op::List,
        FaultKind::Body("{\"results\": [1, 2".into()),
        100,
    ));
    let e = w.client().list(None).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Decode { ref what, .. } if what.contains("listing")),
        "{e}"
    );
    w.sim.clear_faults();
    // A page that reads, with an item that does not: an anomaly of the listing (it
    // takes a slot, and nothing is deleted on such a listing), not a failed listing.
    w.sim.inject(Fault::new(
        Op::List,
        FaultKind::Body("{\"results\": [{\"id\": \"seven\"}]}".into()),
        100,
    ));
    let l = w.client().list(None).await.unwrap();
    assert_eq!((l.snapshots.len(), l.unreadable), (0, 1));
    assert!(
        l.odd().contains("item \"seven\" could not be read"),
        "{l:?}"
    );
}

#[tokio::test]
async fn a_create_answered_with_garbage_is_outcome_unknown() {
    let w = world(SimOptions::default()).await;
    w.sim.inject(Fault::new(
        Op::Create,
        FaultKind::Body("<html>oops".into()),
        1,
    ));
    let e = w
        .client()
        .create(ServerId::new(1), "x", "")
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::OutcomeUnknown { .. }), "{e}");
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused() {
    let w = world(SimOptions::default()).await;
    let body = r#"{"count":9,"next":"https://evil.example/api/v1/snapshots/?page=2","results":[]}"#;
    w.sim
        .inject(Fault::new(Op::List, FaultKind::Body(body.into()), 1));
    let e = w.client().list(None).await.unwrap_err();
    assert!(e.to_string().contains("points away"), "{e}");
}

#[tokio::test]
async fn huge_bodies_are_refused() {
    let w = world(SimOptions::default()).await;
    let body = format!("{{\"results\": [], \"pad\": \"{}\"}}", "x".repeat(10 << 20));
    w.sim.inject(Fault::new(Op::List, FaultKind::Body(body), 4));
    let e = w.client().list(None).await.unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[tokio::test]
async fn debug_output_hides_the_token() {
    let w = world(SimOptions::default()).await;
    let c = w.client();
    assert!(!format!("{c:?}").contains(TOKEN));
    assert!(!format!("{:?}", w.api_settings()).contains(TOKEN));
}

#[tokio::test]
async fn a_fault_can_spare_the_first_requests() {
    let w = world(SimOptions::default()).await;
    let mut f = Fault::status(Op::List, 503, 1);
    f.skip = 2;
    w.sim.inject(f);
    let c = w.client();
    c.list(None).await.unwrap();
    c.list(None).await.unwrap();
    assert_eq!(w.sim.requests().total, 2, "the first two were spared");
    c.list(None).await.unwrap();
    assert_eq!(w.sim.requests().total, 4, "the third was hit and retried");
}
