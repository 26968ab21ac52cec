//! Watched from outside: alert channels (webhook, Slack, ntfy) with their own outbox
//! rows, Healthchecks-style pings, Prometheus metrics (listener and textfile).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use vps_snapshot_agent::alert::Outbox;
use vps_snapshot_agent::clock::VirtualClock;
use vps_snapshot_agent::config::Settings;
use vps_snapshot_agent::db::{Database, NewPing, PingKind};
use vps_snapshot_agent::sim::Mode;

use crate::cli::{agent, config, sim, text};
use crate::helpers::{ServerId, TOKEN};
use crate::receiver::{Receiver, Reply};

fn job(ping: &str, schedule: &str) -> String {
    format!(
        "[[jobs]]\nname = \"web\"\nserver_id = 5\nschedule = \"{schedule}\"\nkeep_last = 2\nping_url = \"{ping}\"\n"
    )
}

/// A Healthchecks-style receiver, then a webhook, a Slack and an ntfy one.
async fn receivers() -> [Receiver; 4] {
    [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ]
}

fn channels(hook: &Receiver, slack: &Receiver, ntfy: &Receiver) -> String {
    format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"{}\"\n[[notify]]\nkind = \"slack\"\nurl = \"{}\"\n[[notify]]\nkind = \"ntfy\"\nurl = \"{}\"\ntimeout = \"1s\"\n",
        hook.url("/hook"),
        slack.url("/slack"),
        ntfy.url("/topic")
    )
}

/// Every alert the webhook received, as (kind, job), from the documented JSON body.
fn webhook_alerts(hook: &Receiver) -> Vec<(String, String)> {
    hook.got("/hook")
        .iter()
        .flat_map(|g| {
            let v: serde_json::Value = serde_json::from_str(&g.body).unwrap();
            assert_eq!(v["agent"]["version"], env!("CARGO_PKG_VERSION"));
            assert!(v["subject"].as_str().unwrap().starts_with("[agent] "));
            assert!(
                v["text"]
                    .as_str()
                    .unwrap()
                    .contains("vps-snapshot-agent on ")
            );
            v["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["kind"].as_str().unwrap().to_string(),
                        a["job"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn metrics(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_gets_each_alert_once_and_the_job_pings_its_check() {
    let s = sim().await;
    let [hc, hook, slack, ntfy] = receivers().await;
    let dir = tempfile::tempdir().unwrap();
    let textfile = dir.path().join("agent.prom");
    let extra = format!(
        "{}[metrics]\ntextfile = \"{}\"\n{}",
        channels(&hook, &slack, &ntfy),
        textfile.display(),
        job(&hc.url("/ping/abc"), "0 30 2 * * *")
    );
    let cfg = config(dir.path(), &s.base_url(), &extra);

    s.sim.set_mode(ServerId::new(5), Mode::Fail);
    let failed = agent(&cfg, &["run-once"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let pings: Vec<String> = hc.got("/ping").iter().map(|g| g.path.clone()).collect();
    assert_eq!(pings, ["/ping/abc/start", "/ping/abc/fail"]);
    assert!(hc.got("/ping").iter().all(|g| g.method == "POST"));
    assert!(
        hc.got("/ping/abc/fail")[0].body.contains("failed"),
        "the error is the body"
    );
    assert_eq!(
        webhook_alerts(&hook),
        [("failed".to_string(), "web".to_string())]
    );
    let slack_got = slack.got("/slack");
    assert_eq!(slack_got.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&slack_got[0].body).unwrap();
    assert!(v["text"].as_str().unwrap().contains("FAILED web"), "{v}");
    let ntfy_got = ntfy.got("/topic");
    assert_eq!(ntfy_got.len(), 1);
    assert!(ntfy_got[0].headers["title"].contains("FAILED web"));
    assert_eq!(ntfy_got[0].headers["priority"], "4");

    s.sim.set_mode(ServerId::new(5), Mode::Normal);
    let ok = agent(&cfg, &["run-once"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let pings: Vec<String> = hc.got("/ping").iter().map(|g| g.path.clone()).collect();
    assert_eq!(
        pings,
        [
            "/ping/abc/start",
            "/ping/abc/fail",
            "/ping/abc/start",
            "/ping/abc"
        ]
    );
    let kinds: Vec<String> = webhook_alerts(&hook).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["failed", "recovered"], "each alert once, in order");
    assert_eq!(slack.got("/slack").len(), 2);
    let ntfy_got = ntfy.got("/topic");
    assert_eq!(ntfy_got.len(), 2);
    assert_eq!(
        ntfy_got[1].headers["priority"], "2",
        "a recovery is low priority"
    );
    for g in [hook.got("/"), slack.got("/"), ntfy.got("/"), hc.got("/")].concat() {
        assert!(
            !g.body.contains(TOKEN),
            "the token never leaves: {}",
            g.body
        );
    }

    // The textfile, for node_exporter: written after the run, readable by others.
    let scrape = metrics(&std::fs::read_to_string(&textfile).unwrap());
    let success = value(
        &scrape,
        "vps_snapshot_job_last_success_timestamp_seconds",
        &[("job_name", "web")],
    );
    assert!(success.unwrap() > 1.7e9, "{success:?}");
    assert_eq!(
        value(
            &scrape,
            "vps_snapshot_job_last_status",
            &[("job_name", "web"), ("status", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "vps_snapshot_alerts_delivered_total",
            &[("channel", "webhook")]
        ),
        Some(2.0)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&textfile).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".agent.prom")
        })
        .count();
    assert_eq!(leftovers, 0, "no temporary file left beside the textfile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_is_down_keeps_its_alerts_while_the_others_deliver() {
    let s = sim().await;
    let [hc, hook, slack, ntfy] = receivers().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}{}",
        channels(&hook, &slack, &ntfy),
        job(&hc.url("/p"), "0 30 2 * * *")
    );
    let cfg = config(dir.path(), &s.base_url(), &extra);
    hook.plan(&[Reply::Status(500)]);
    ntfy.plan(&[Reply::Slow(Duration::from_secs(3))]);
    s.sim.set_mode(ServerId::new(5), Mode::Fail);
    let failed = agent(&cfg, &["run-once"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(webhook_alerts(&hook).is_empty());
    assert_eq!(slack.got("/slack").len(), 1);
    assert!(
        ntfy.got("/topic").is_empty(),
        "slower than its timeout: not delivered"
    );

    let status = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let pending = v["pending_alerts"].as_array().unwrap();
    assert_eq!(pending.len(), 1, "{v}");
    assert_eq!(
        pending[0]["channels"],
        serde_json::json!(["ntfy", "webhook"])
    );
    assert!(
        pending[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 500")
    );

    // The webhook is back: the next command delivers what it owes, and only to it.
    s.sim.set_mode(ServerId::new(5), Mode::Normal);
    let ok = agent(&cfg, &["run-once"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let kinds: Vec<String> = webhook_alerts(&hook).into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["failed", "recovered"]);
    assert_eq!(
        slack.got("/slack").len(),
        2,
        "slack had the failure already"
    );
    assert_eq!(ntfy.got("/topic").len(), 2);
    let status = agent(&cfg, &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["pending_alerts"], serde_json::json!([]));
}

async fn outbox_at(dir: &Path, ping: &str) -> (Outbox, Database, Arc<VirtualClock>) {
    let cfg = config(
        dir,
        "http://127.0.0.1:9/api/v1/",
        &job(ping, "0 30 2 * * *"),
    );
    let settings = Settings::load(&cfg).unwrap();
    let db = Database::open_at(&settings.database).await.unwrap();
    let clock = Arc::new(VirtualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 28, 2, 30, 0).unwrap(),
    ));
    let outbox = Outbox::from_settings(&settings, db.clone(), clock.clone())
        .unwrap()
        .unwrap();
    (outbox, db, clock)
}

fn ping(kind: PingKind, clock: &VirtualClock) -> NewPing {
    use vps_snapshot_agent::clock::Clock as _;
    let now = clock.now();
    NewPing {
        job: Some("web".into()),
        run_id: None,
        kind,
        body: String::new(),
        created_at: now,
        expires_at: now + vps_snapshot_agent::run::PING_EXPIRES,
    }
}

#[tokio::test]
async fn a_ping_is_retried_until_it_expires_then_dropped_never_sent_late() {
    let hc = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (outbox, db, clock) = outbox_at(dir.path(), &hc.url("/p")).await;

    // Down for one attempt: sent at the retry, once.
    hc.plan(&[Reply::Status(503)]);
    db.queue_ping(&ping(PingKind::Start, &clock)).await.unwrap();
    outbox.deliver_pings(false).await;
    assert!(hc.got("/p").is_empty());
    outbox.deliver_pings(false).await;
    assert!(hc.got("/p").is_empty(), "not before its backoff");
    clock.advance(Duration::from_secs(6));
    outbox.deliver_pings(false).await;
    outbox.deliver_pings(false).await;
    assert_eq!(hc.got("/p/start").len(), 1);

    // Down until it expires: dropped, and never sent once the watcher is back.
    hc.plan(&[Reply::Status(500); 20]);
    db.queue_ping(&ping(PingKind::Success, &clock))
        .await
        .unwrap();
    for _ in 0..12 {
        outbox.deliver_pings(false).await;
        clock.advance(Duration::from_secs(60));
    }
    clock.advance(Duration::from_secs(3600));
    outbox.deliver_pings(false).await;
    assert!(
        hc.got("/p").iter().all(|g| g.path == "/p/start"),
        "{:?}",
        hc.got("/p")
    );
    let due = db
        .due_pings(vps_snapshot_agent::clock::Clock::now(&*clock) + chrono::Duration::days(1))
        .await
        .unwrap();
    assert!(
        due.is_empty(),
        "the expired ping is dropped, not pending: {due:?}"
    );
}

/// Every metric the shipped dashboard and alert rules query is one the agent exports
/// (`# TYPE` lines name every family, samples or not).
fn contrib_uses_only(exported: &str) {
    let families: std::collections::HashSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(queries.len() >= 10, "a panel per figure: {queries:?}");
    let rules = std::fs::read_to_string(root.join("prometheus-alerts.yml")).unwrap();
    queries.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_string),
    );
    let mut seen = 0;
    for q in &queries {
        for (i, _) in q.match_indices("vps_snapshot_") {
            let name: String = q[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
                .unwrap_or(&name);
            assert!(
                families.contains(family),
                "{name} (in `{q}`) is not exported: {families:?}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 15, "{seen} metric references checked");
}

/// A port nothing listens on yet.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_serves_metrics_healthz_and_sends_its_heartbeat() {
    let s = sim().await;
    let hc = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[heartbeat]\nurl = \"{}\"\nevery = \"10s\"\n[[notify]]\nkind = \"webhook\"\nurl = \"{}\"\n{}",
        hc.url("/beat"),
        hc.url("/hook"),
        job(&hc.url("/p"), "*/2 * * * * *")
    );
    let cfg = config(dir.path(), &s.base_url(), &extra);
    let mut child = crate::newcomer::spawn(&cfg, &["run"], &dir.path().join("log"));
    hc.wait_for("/beat", 1).await;
    hc.wait_for("/p", 2).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut scrape = None;
    for _ in 0..300 {
        let body = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.contains(TOKEN));
        let m = metrics(&body);
        if value(
            &m,
            "vps_snapshot_run_duration_seconds_count",
            &[("job_name", "web")],
        )
        .unwrap_or(0.0)
            >= 1.0
        {
            scrape = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = scrape.expect("a run is counted within 30 s");
    let exported = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    contrib_uses_only(&exported);
    // For CI's `promtool check metrics` (the naming conventions' linter).
    std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-sample.prom"),
        &exported,
    )
    .unwrap();
    assert_eq!(
        value(
            &m,
            "vps_snapshot_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &m,
            "vps_snapshot_api_requests_total",
            &[("endpoint", "create"), ("outcome", "ok")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &m,
            "vps_snapshot_job_next_fire_timestamp_seconds",
            &[("job_name", "web")]
        )
        .unwrap()
            > 1.7e9
    );
    assert!(
        value(
            &m,
            "vps_snapshot_server_snapshots",
            &[("job_name", "web"), ("owner", "managed")]
        )
        .is_some()
    );
    assert!(
        value(
            &m,
            "vps_snapshot_pings_total",
            &[("kind", "heartbeat"), ("outcome", "sent")]
        )
        .unwrap()
            >= 1.0
    );

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let post = http.post(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(
        http.get(format!("{base}/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    crate::newcomer::signal(&child, libc::SIGTERM);
    let code = crate::newcomer::exit_code(&mut child, Duration::from_secs(60)).await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sends_a_test_alert_on_every_channel_and_names_bad_keys() {
    let s = sim().await;
    let (hook, slack, ntfy) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{}{}", channels(&hook, &slack, &ntfy), crate::cli::JOB);
    let cfg = config(dir.path(), &s.base_url(), &extra);
    let out = agent(&cfg, &["check", "--send-test-alert"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (r, path) in [(&hook, "/hook"), (&slack, "/slack"), (&ntfy, "/topic")] {
        let got = r.got(path);
        assert_eq!(got.len(), 1, "{path}");
        assert!(got[0].body.contains("test alert"), "{}", got[0].body);
    }
    // The old flag still works; a channel down fails the check and says which.
    slack.plan(&[Reply::Status(500)]);
    let out = agent(&cfg, &["check", "--send-test-email"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("notify slack: slack channel slack"),
        "{}",
        text(&out)
    );

    let bad = config(
        dir.path(),
        &s.base_url(),
        "[[notify]]\nkind = \"pager\"\nurl = \"https://x.example\"\n[[notify]]\nkind = \"slack\"\nurl = \"ftp://x\"\n[[notify]]\nkind = \"webhook\"\nurl = \"hooks.example.com/agent\"\n[[notify]]\nkind = \"webhook\"\nurl = \"hooks.example.com:8080/agent\"\n[metrics]\nlisten = \"everywhere\"\n[heartbeat]\nurl = \"https://hc.example/x\"\nevery = \"1s\"\n[[jobs]]\nname = \"web\"\nserver_id = 5\nschedule = \"0 30 2 * * *\"\nkeep_last = 2\nping_url = \"not a url\"\n",
    );
    let out = agent(&bad, &["check", "--offline"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let t = text(&out);
    for key in [
        "notify[0].kind",
        "notify[1].url",
        "metrics.listen",
        "heartbeat.every",
        "jobs[0].ping_url",
    ] {
        assert!(t.contains(key), "{key} in {t}");
    }
    for i in [2, 3] {
        assert!(
            t.contains(&format!(
                "notify[{i}].url: is not a URL: it has no scheme; write it with https:// in front"
            )),
            "{t}"
        );
    }
}

/// `run-once` with stdout and stderr on a pseudo-terminal (util-linux `script`).
async fn on_a_terminal(cfg: &Path, flags: &str) -> String {
    let cmd = format!(
        "{} --config {} run-once {flags}",
        crate::cli::BIN,
        cfg.display()
    );
    let mut c = tokio::process::Command::new("script");
    c.args(["-qefc", &cmd, "/dev/null"])
        .env("AGENT_API__TOKEN", TOKEN)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    let out = c.output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_shows_live_lines_on_a_terminal_and_plain_logs_in_a_pipe() {
    let s = vps_snapshot_agent::sim::Simulator::start(
        vps_snapshot_agent::sim::SimOptions {
            token: TOKEN.into(),
            delay: vps_snapshot_agent::sim::Delay::Fixed(Duration::from_millis(1500)),
            ..Default::default()
        },
        vps_snapshot_agent::clock::system(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), crate::cli::JOB);

    let tty = on_a_terminal(&cfg, "").await;
    // A live line for the job: redrawn in place (cursor control), its step as message.
    assert!(
        tty.contains("\u{1b}[2K") || tty.contains("\u{1b}[1A"),
        "{tty:?}"
    );
    assert!(tty.contains("web") && tty.contains("polled"), "{tty:?}");
    assert!(
        !tty.contains("run{job="),
        "no log lines on a terminal: {tty:?}"
    );
    assert!(
        tty.contains("succeeded"),
        "the summary still prints: {tty:?}"
    );

    // In a pipe: today's log lines, no terminal control.
    let piped = agent(&cfg, &["run-once"]).await;
    assert_eq!(piped.status.code(), Some(0));
    let t = text(&piped);
    assert!(t.contains("run started"), "{t}");
    assert!(!t.contains('\u{1b}'), "{t:?}");
    // -q on a terminal: no live lines either, only the summary.
    let quiet = on_a_terminal(&cfg, "-q").await;
    assert!(
        quiet.contains("succeeded") && !quiet.contains("polled"),
        "{quiet:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_history_are_coloured_on_a_terminal_only() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), crate::cli::JOB);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    let run = |cmd: &'static str, no_color: bool| {
        let cfg = cfg.clone();
        async move {
            let line = format!("{} --config {} {cmd}", crate::cli::BIN, cfg.display());
            let mut c = tokio::process::Command::new("script");
            c.args(["-qefc", &line, "/dev/null"])
                .env("TERM", "xterm-256color");
            if no_color {
                c.env("NO_COLOR", "1");
            } else {
                c.env_remove("NO_COLOR");
            }
            let out = c.output().await.unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    for cmd in ["status", "history"] {
        let green = "\u{1b}[32msucceeded";
        assert!(run(cmd, false).await.contains(green), "{cmd} on a terminal");
        assert!(
            !run(cmd, true).await.contains('\u{1b}'),
            "{cmd} under NO_COLOR"
        );
        let piped = agent(&cfg, &[cmd]).await;
        let out = String::from_utf8_lossy(&piped.stdout).into_owned();
        assert!(
            out.contains("succeeded") && !out.contains('\u{1b}'),
            "{cmd} in a pipe: {out:?}"
        );
    }
}

fn alert(i: usize, at: chrono::DateTime<Utc>) -> vps_snapshot_agent::db::NewAlert {
    vps_snapshot_agent::db::NewAlert {
        job: Some(format!("job-{i}")),
        server_id: None,
        run_id: None,
        kind: vps_snapshot_agent::alert::AlertKind::Stale,
        subject: format!("[agent] STALE job-{i}"),
        body: "b".into(),
        created_at: at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_never_send_an_alert_or_a_ping_twice() {
    use vps_snapshot_agent::clock::Clock as _;
    let r = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"{}\"\n{}",
        r.url("/hook"),
        job(&r.url("/p"), "0 30 2 * * *")
    );
    let cfg = config(dir.path(), "http://127.0.0.1:9/api/v1/", &extra);
    let settings = Settings::load(&cfg).unwrap();
    let clock = Arc::new(VirtualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 28, 2, 30, 0).unwrap(),
    ));
    let mut boxes = Vec::new();
    for _ in 0..2 {
        let db = Database::open_at(&settings.database).await.unwrap();
        let o = Outbox::from_settings(&settings, db, clock.clone())
            .unwrap()
            .unwrap();
        o.register().await.unwrap();
        boxes.push(o);
    }
    let db = Database::open_at(&settings.database).await.unwrap();
    for i in 0..40 {
        db.queue_alert(&alert(i, clock.now())).await.unwrap();
        db.queue_ping(&ping(PingKind::Start, &clock)).await.unwrap();
    }
    r.plan(&[Reply::Late(Duration::from_millis(40)); 50]);
    for _ in 0..3 {
        tokio::join!(boxes[0].deliver_all(), boxes[1].deliver_all());
    }
    let mut jobs: Vec<String> = webhook_alerts(&r).into_iter().map(|(_, j)| j).collect();
    jobs.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("job-{i}")).collect();
    want.sort();
    assert_eq!(jobs, want, "each alert once");
    assert_eq!(r.got("/p/start").len(), 40, "each ping once");
    // The claim itself, step by step: what one process holds, the other cannot take
    // until it is recorded or the claim runs out.
    let other = Database::open_at(&settings.database).await.unwrap();
    for i in 0..40 {
        db.queue_alert(&alert(i, clock.now())).await.unwrap();
        db.queue_ping(&ping(PingKind::Start, &clock)).await.unwrap();
    }
    let now = clock.now();
    let soon = now + chrono::Duration::minutes(5);
    let held = db.claim_alerts("webhook", now, true, soon).await.unwrap();
    assert_eq!(held.len(), 40);
    let later = soon + chrono::Duration::seconds(1);
    assert!(
        other
            .claim_alerts("webhook", now, true, later)
            .await
            .unwrap()
            .is_empty()
    );
    // Pings go to a check one at a time, in order: a claim holds the check's oldest.
    assert_eq!(other.claim_pings(now, later).await.unwrap().len(), 1);
    assert!(db.claim_pings(now, soon).await.unwrap().is_empty());
    let ids: Vec<i64> = held.iter().map(|a| a.id).collect();
    db.mark_alerts_failed("webhook", &ids, "test", now)
        .await
        .unwrap();
    let after = soon + chrono::Duration::seconds(2);
    assert_eq!(
        other
            .claim_alerts("webhook", now, true, after)
            .await
            .unwrap()
            .len(),
        40,
        "released when recorded"
    );
    let expired = after + chrono::Duration::seconds(1);
    assert_eq!(
        db.claim_pings(expired, expired + chrono::Duration::minutes(5))
            .await
            .unwrap()
            .len(),
        1,
        "taken back when the claim ran out"
    );
    // Let the outboxes have them all again, and race them: each alert goes once more,
    // and the pings, expired by now, are dropped rather than sent late.
    db.mark_alerts_failed("webhook", &ids, "test", now)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    for _ in 0..3 {
        tokio::join!(boxes[0].deliver_all(), boxes[1].deliver_all());
    }
    let mut jobs: Vec<String> = webhook_alerts(&r).into_iter().map(|(_, j)| j).collect();
    jobs.sort();
    let mut twice: Vec<String> = (0..40)
        .flat_map(|i| [format!("job-{i}"), format!("job-{i}")])
        .collect();
    twice.sort();
    assert_eq!(jobs, twice, "each alert once in each round");
    assert_eq!(r.got("/p/start").len(), 40, "no ping sent late");
}
