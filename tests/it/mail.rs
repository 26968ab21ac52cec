use std::time::Duration;

use vps_snapshot_agent::alert::Delivery;
use vps_snapshot_agent::db::{RunStatus, RunTrigger};
use vps_snapshot_agent::run::run_many;
use vps_snapshot_agent::sim::{Mode, SimOptions};

use crate::helpers::*;

#[tokio::test]
pub(crate) async fn a_failure_sends_one_mail_naming_job_server_and_error() {
    let (inbox, port) = Inbox::start(0);
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = w.runner(w.db(&dir).await);
    let mailer = w.mailer(&runner.db, port);
    w.sim.set_mode(ServerId::new(7), Mode::Fail);
    let o = runner
        .run_job(&job("web-01", 7, 3), RunTrigger::Schedule, None)
        .await
        .unwrap();
    assert_eq!(o.status, RunStatus::Failed);
    assert_eq!(mailer.deliver_due().await, Delivery::Sent(1));
    let mails = inbox.messages();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert!(
        m.contains("Subject: [agent] FAILED web-01 (server 7)"),
        "{m}"
    );
    assert!(m.contains("ended failed"), "{m}");
    assert!(m.contains(&format!("Run:      {}", o.run_id)), "{m}");
    assert!(m.contains("What to do next"), "{m}");
    assert!(m.contains("Date: ") && m.contains("Message-ID: "), "{m}");
    assert!(m.contains("ops@example.com") && m.contains("oncall@example.com"));
    assert!(!m.contains(TOKEN), "the API token must never be mailed");
    assert!(runner.db.pending_alerts().await.unwrap().is_empty());

    // A repeat within repeat_after queues nothing.
    runner
        .run_job(&job("web-01", 7, 3), RunTrigger::Schedule, None)
        .await
        .unwrap();
    assert_eq!(mailer.deliver_due().await, Delivery::Nothing);
    assert_eq!(inbox.messages().len(), 1);

    // After repeat_after it alerts again.
    w.clock.advance(Duration::from_secs(6 * 3600 + 1));
    runner
        .run_job(&job("web-01", 7, 3), RunTrigger::Schedule, None)
        .await
        .unwrap();
    assert_eq!(mailer.deliver_due().await, Delivery::Sent(1));

    // Recovery sends one mail.
    w.sim.set_mode(ServerId::new(7), Mode::Normal);
    let ok = runner
        .run_job(&job("web-01", 7, 3), RunTrigger::Schedule, None)
        .await
        .unwrap();
    assert_eq!(ok.status, RunStatus::Succeeded);
    assert_eq!(mailer.deliver_due().await, Delivery::Sent(1));
    let mails = inbox.messages();
    assert!(
        mails[2].contains("Subject: [agent] RECOVERED web-01 (server 7)"),
        "{}",
        mails[2]
    );
    // And a second success sends nothing.
    runner
        .run_job(&job("web-01", 7, 3), RunTrigger::Schedule, None)
        .await
        .unwrap();
    assert_eq!(mailer.deliver_due().await, Delivery::Nothing);
}

#[tokio::test]
pub(crate) async fn jobs_failing_together_send_one_digest() {
    let (inbox, port) = Inbox::start(0);
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = w.runner(w.db(&dir).await);
    let jobs: Vec<_> = (1..=3).map(|i| job(&format!("app-{i}"), i, 2)).collect();
    for i in 1..=3 {
        w.sim.set_mode(ServerId::new(i), Mode::Fail);
    }
    let outs = run_many(&runner, &jobs, 8, RunTrigger::Schedule).await;
    assert!(
        outs.iter()
            .all(|o| o.as_ref().unwrap().status == RunStatus::Failed)
    );
    assert_eq!(
        w.mailer(&runner.db, port).deliver_due().await,
        Delivery::Sent(3)
    );
    let mails = inbox.messages();
    assert_eq!(mails.len(), 1, "one digest, not three mails");
    assert!(
        mails[0].contains("Subject: [agent] 3 alerts:"),
        "{}",
        mails[0]
    );
    for i in 1..=3 {
        assert!(mails[0].contains(&format!("FAILED app-{i} (server {i})")));
    }
}

#[tokio::test]
pub(crate) async fn an_alert_survives_an_smtp_outage_and_a_restart() {
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    {
        let runner = w.runner(w.db(&dir).await);
        w.sim.set_mode(ServerId::new(3), Mode::Fail);
        runner
            .run_job(&job("db", 3, 2), RunTrigger::Schedule, None)
            .await
            .unwrap();
        let d = w.mailer(&runner.db, port).deliver_due().await;
        assert!(
            matches!(
                d,
                Delivery::Failed(vps_snapshot_agent::alert::DeliveryError::Smtp { ref server, .. })
                    if *server == format!("127.0.0.1:{port}")
            ),
            "{d:?}"
        );
        let pending = runner.db.pending_alerts().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].attempts, 1);
        assert!(pending[0].last_error.is_some());
        // Not due again until the backoff has passed.
        assert_eq!(
            w.mailer(&runner.db, port).deliver_due().await,
            Delivery::Nothing
        );
        runner.db.close().await;
    }
    // "Restart": a new database handle on the same file, and the mail server comes back.
    let (inbox, _) = Inbox::start(port);
    let db = w.db(&dir).await;
    w.clock.advance(Duration::from_secs(60));
    assert_eq!(w.mailer(&db, port).deliver_due().await, Delivery::Sent(1));
    assert!(inbox.messages()[0].contains("FAILED db (server 3)"));
    assert!(db.pending_alerts().await.unwrap().is_empty());
}

#[tokio::test]
pub(crate) async fn alerts_older_than_a_day_go_out_marked_late() {
    let (inbox, port) = Inbox::start(0);
    let w = world(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runner = w.runner(w.db(&dir).await);
    w.sim.set_mode(ServerId::new(3), Mode::Fail);
    runner
        .run_job(&job("db", 3, 2), RunTrigger::Schedule, None)
        .await
        .unwrap();
    w.clock.advance(Duration::from_secs(2 * 86_400));
    w.mailer(&runner.db, port).deliver_due().await;
    let m = &inbox.messages()[0];
    assert!(
        m.contains("Subject: [late] [agent] FAILED db (server 3)"),
        "{m}"
    );
    assert!(m.contains("Late: queued 2 days ago"), "{m}");
}
