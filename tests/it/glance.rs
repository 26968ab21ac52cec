//! At a glance: `status` draws each job's last 30 runs as a timeline, from a seeded history.

use std::path::Path;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use vps_snapshot_agent::db::{Database, Finish, NewRun, RunKind, RunStatus, RunTrigger};
use vps_snapshot_agent::domain::ServerId;
use vps_snapshot_agent::identity::Owner;

use crate::cli::{BIN, agent, config, text};

/// Records runs of `job` ending as `ends` (oldest first); `None` leaves one running.
async fn seed(db: &Database, job: &str, ends: &[Option<RunStatus>]) {
    let owner = Owner::current();
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 2, 30, 0).unwrap();
    for (i, end) in ends.iter().enumerate() {
        let at = t0 + chrono::Duration::hours(i as i64);
        let run = NewRun {
            job,
            server_id: ServerId::new(5),
            kind: RunKind::Snapshot,
            trigger: RunTrigger::Schedule,
            scheduled_for: Some(at),
            started_at: at,
        };
        let id = db.start_run(run, &owner).await.unwrap();
        if let Some(status) = end {
            let end = Finish {
                status: *status,
                error: (*status != RunStatus::Succeeded).then_some("seeded"),
                step: None,
                at: at + chrono::Duration::minutes(5),
                alerts: &[],
                ping: None,
            };
            db.finish_run(id, &owner, end).await.unwrap();
        }
    }
}

/// `agent status` on a pseudo-terminal (util-linux `script`).
async fn status_on_a_terminal(cfg: &Path) -> String {
    let line = format!("{BIN} --config {} status", cfg.display());
    let out = tokio::process::Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_draws_the_last_30_runs_as_a_timeline() {
    use RunStatus::{Failed as F, Interrupted as I, Succeeded as S};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "http://127.0.0.1:9/api/v1/",
        "[[jobs]]\nname = \"web\"\nserver_id = 5\nschedule = \"0 30 2 * * *\"\ntimezone = \"Europe/Berlin\"\nkeep_last = 2\n[[jobs]]\nname = \"db\"\nserver_id = 6\nschedule = \"0 0 3 * * *\"\nkeep_last = 2\n",
    );
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    // 33 finished runs (the first three fall off), then one running.
    let mut web: Vec<Option<RunStatus>> = vec![Some(F), Some(F), Some(F)];
    for i in 0..30 {
        web.push(Some(match i % 10 {
            3 => F,
            7 => I,
            _ => S,
        }));
    }
    web.push(None);
    seed(&db, "web", &web).await;
    db.close().await;

    let json = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    let marks: Vec<&str> = jobs[0]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(marks.len(), 30, "{marks:?}");
    assert_eq!(marks.last(), Some(&"running"));
    assert_eq!(
        marks[0], "succeeded",
        "the failures before the last 30 are gone"
    );
    assert_eq!(marks.iter().filter(|m| **m == "failed").count(), 3);
    assert_eq!(jobs[1]["timeline"], serde_json::json!([]), "db never ran");
    assert_eq!(jobs[0]["timezone"], "Europe/Berlin");
    // Whatever the season: the zone's offset and name at the next run itself.
    let next: chrono::DateTime<chrono::Utc> =
        jobs[0]["next_run_at"].as_str().unwrap().parse().unwrap();
    let local = next.with_timezone(&chrono_tz::Europe::Berlin);
    let offset = local.format("%:z").to_string();
    assert!(
        jobs[0]["next_run_at_local"]
            .as_str()
            .unwrap()
            .ends_with(&offset),
        "{} in {offset}",
        jobs[0]["next_run_at_local"]
    );
    assert_eq!(jobs[0]["stale_after_secs"], 2 * 86_400);
    assert!(jobs[0]["last_success_age_secs"].as_i64().unwrap() > 0);

    // In a pipe: the marks alone tell the statuses apart (shapes, no colour).
    let piped = agent(&cfg, &["status"]).await;
    let out = text(&piped);
    let want: String = marks
        .iter()
        .map(|m| match *m {
            "succeeded" => '●',
            "failed" => '✗',
            "interrupted" => '○',
            _ => '▶',
        })
        .collect();
    assert!(out.contains(&want), "{want} in {out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    let shown = format!("{} ({} UTC)", local.format("%Z"), next.format("%H:%M"));
    assert!(out.contains(&shown), "{shown} in {out}");
    assert!(
        out.contains("STALE under 2 days"),
        "the last success is weeks old: {out}"
    );

    // On a terminal: the same marks, in colour.
    let tty = status_on_a_terminal(&cfg).await;
    assert!(tty.contains("\u{1b}[31m✗"), "{tty:?}");
    assert!(tty.contains("\u{1b}[32m●"), "{tty:?}");
    assert!(tty.contains("\u{1b}[33m▶"), "{tty:?}");
}

/// Chromium from Debian's package, or `None` (then the browser part is skipped and
/// counted, unless required: [`crate::needs`]).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        crate::needs::missing(crate::needs::Need::Browser);
    }
    found
}

async fn browser(bin: &str, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_jobs_snapshots_and_verdicts_in_a_browser_and_never_a_secret() {
    use vps_snapshot_agent::api::SnapshotStatus;
    let s = crate::cli::sim().await;
    let manual = s.sim.put(
        ServerId::new(5),
        "before-php-upgrade",
        SnapshotStatus::Completed,
        Utc::now() - chrono::Duration::hours(3),
    );
    let dir = tempfile::tempdir().unwrap();
    let port = crate::watch::free_port();
    let secret_path = "/hooks/T000/B000/s3cr3t-webhook-path";
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[[notify]]\nkind = \"slack\"\nurl = \"http://127.0.0.1:9{secret_path}\"\n[[jobs]]\nname = \"web\"\nserver_id = 5\nschedule = \"*/2 * * * * *\"\nkeep_last = 2\n[[jobs]]\nname = \"db\"\nserver_id = 6\nschedule = \"0 0 3 * * *\"\nkeep_last = 2\n"
        ),
    );
    let pinned = agent(&cfg, &["pin", &manual.to_string()]).await;
    assert_eq!(pinned.status.code(), Some(0), "{}", text(&pinned));
    let mut child = crate::newcomer::spawn(&cfg, &["run"], &dir.path().join("log"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // Three runs of web: its server has its own snapshots and the hand-made one.
    let mut page = String::new();
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/")).send().await {
            page = r.text().await.unwrap();
            if page.matches("class=\"mark succeeded\"").count() >= 4 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.contains("keep: last #1"), "{page}");

    // Read-only, strict, and no secret in any answer.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.starts_with("default-src 'none'") && !csp.contains("script"),
        "{csp}"
    );
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let r = http
            .request(method.clone(), format!("{base}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
    }
    for path in ["/", "/status.css", "/metrics", "/healthz", "/nope"] {
        let body = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains(crate::helpers::TOKEN), "the token in {path}");
        assert!(!body.contains("s3cr3t"), "the webhook URL in {path}");
    }
    assert!(!page.contains("<script"), "no JavaScript");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external asset"
    );

    if let Some(bin) = chromium() {
        let dom = browser(bin, &["--dump-dom".into(), format!("{base}/")]).await;
        assert!(
            dom.contains("id=\"job-web\"") && dom.contains("id=\"job-db\""),
            "{dom}"
        );
        assert!(dom.contains("no runs yet"), "db has not run: {dom}");
        assert!(
            dom.matches("class=\"mark succeeded\"").count() >= 4,
            "{dom}"
        );
        assert!(dom.contains("before-php-upgrade"), "{dom}");
        assert!(
            dom.contains("keep: pinned"),
            "the hand-made, pinned one: {dom}"
        );
        assert!(
            dom.contains("keep: last #1") && dom.contains("keep: last #2"),
            "{dom}"
        );
        assert!(
            dom.contains("Not listed since the agent started"),
            "server 6: {dom}"
        );
        let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        let _ = std::fs::remove_file(&shot);
        browser(
            bin,
            &[
                format!("--screenshot={}", shot.display()),
                "--window-size=1280,1000".into(),
                "--hide-scrollbars".into(),
                format!("{base}/"),
            ],
        )
        .await;
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a screenshot of the page"
        );
    }
    crate::newcomer::signal(&child, libc::SIGTERM);
    assert_eq!(
        crate::newcomer::exit_code(&mut child, Duration::from_secs(60)).await,
        Some(0)
    );
}
