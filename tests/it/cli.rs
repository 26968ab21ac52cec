//! The `agent` binary as an operator (or systemd) runs it, against the simulator.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vps_snapshot_agent::db::{Action, Database, Intent, NewRun, RunKind, RunStatus, RunTrigger};
use vps_snapshot_agent::identity::Owner;
use vps_snapshot_agent::sim::{Mode, SimOptions, SimServer, Simulator};

use crate::helpers::{ServerId, SnapshotId, TOKEN};

pub const BIN: &str = env!("CARGO_BIN_EXE_agent");

pub async fn sim() -> SimServer {
    Simulator::start(
        SimOptions {
            token: TOKEN.into(),
            ..SimOptions::default()
        },
        vps_snapshot_agent::clock::system(),
    )
    .await
    .unwrap()
}

pub fn config(dir: &Path, base_url: &str, jobs: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "database = \"{}\"\n[api]\nbase_url = \"{base_url}\"\nmax_retries = 1\n[defaults]\npoll_interval = \"100ms\"\nsnapshot_timeout = \"20s\"\ncatch_up = \"off\"\n{jobs}",
            dir.join("history.db").display()
        ),
    )
    .unwrap();
    p
}

pub const JOB: &str =
    "[[jobs]]\nname = \"web\"\nserver_id = 5\nschedule = \"0 30 2 * * *\"\nkeep_last = 2\n";

/// Runs `agent ARGS` to completion off a terminal (stdin is /dev/null), token in the env.
pub async fn agent(cfg: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--config")
        .arg(cfg)
        .args(args)
        .env("AGENT_API__TOKEN", TOKEN)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null());
    cmd.output().await.unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_exit_codes_and_history_json() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);

    let ok = agent(&cfg, &["run-once"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("succeeded"));

    s.sim.set_mode(ServerId::new(5), Mode::Fail);
    let failed = agent(&cfg, &["run-once", "--job", "web"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));

    let unknown = agent(&cfg, &["run-once", "--job", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown).contains("no job named \"nope\""));

    let usage = agent(&cfg, &["run-once", "--bogus"]).await;
    assert_eq!(usage.status.code(), Some(2));

    let hist = agent(&cfg, &["history", "--json", "--limit", "5"]).await;
    assert_eq!(hist.status.code(), Some(0));
    let runs: serde_json::Value = serde_json::from_slice(&hist.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["status"], "failed", "newest first");
    assert_eq!(runs[1]["status"], "succeeded");
    assert_eq!(runs[1]["trigger"], "manual");

    for o in [&ok, &failed, &hist] {
        assert!(
            !text(o).contains(TOKEN),
            "token leaked at trace level:\n{}",
            text(o)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_exits_78_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "http://10.1.2.3/api/v1",
        "[[jobs]]\nname = \"x y\"\nserver_id = 1\nschedule = \"bad\"\n",
    );
    for cmd in [
        ["check", "--offline"].as_slice(),
        &["run-once"],
        &["run"],
        &["status"],
    ] {
        let o = agent(&cfg, cmd).await;
        assert_eq!(o.status.code(), Some(78), "{cmd:?}: {}", text(&o));
        let t = text(&o);
        assert!(
            t.contains("api.base_url")
                && t.contains("jobs[0].name")
                && t.contains("jobs[0].schedule"),
            "{t}"
        );
        assert!(t.contains(&cfg.display().to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_config_error() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let o = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .env("AGENT_API__TOKEN", "wrong-token-123")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    assert!(text(&o).contains("401"));
    assert!(!text(&o).contains("wrong-token-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_without_yes_off_a_terminal_and_records_with_it() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    let id = s.sim.snapshots(ServerId::new(5))[0].id.to_string();
    let refused = agent(&cfg, &["restore", &id]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("without --yes"));
    assert!(
        !s.sim
            .events()
            .iter()
            .any(|e| matches!(e, vps_snapshot_agent::sim::Event::Restored { .. }))
    );

    let done = agent(&cfg, &["restore", &id, "--yes"]).await;
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let hist = agent(&cfg, &["history", "--json"]).await;
    let runs: serde_json::Value = serde_json::from_slice(&hist.stdout).unwrap();
    assert_eq!(runs[0]["kind"], "restore");
    assert_eq!(
        runs[0]["status"], "started",
        "the API only starts a restore"
    );
}

/// A simulator, a config of `JOB` in a new directory, one `run-once` done, and the
/// snapshot it made.
async fn after_one_run() -> (SimServer, tempfile::TempDir, PathBuf, SnapshotId) {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    let first = s.sim.snapshots(ServerId::new(5))[0].id;
    (s, dir, cfg, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_protects_and_snapshots_shows_verdicts() {
    let (s, _dir, cfg, first) = after_one_run().await;
    assert_eq!(
        agent(&cfg, &["pin", &first.to_string()])
            .await
            .status
            .code(),
        Some(0)
    );
    for _ in 0..3 {
        assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    }
    let ids: Vec<SnapshotId> = s
        .sim
        .snapshots(ServerId::new(5))
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(
        ids.contains(&first),
        "the pinned snapshot survived rotation"
    );
    let shown = agent(&cfg, &["snapshots", "--job", "web"]).await;
    let t = String::from_utf8_lossy(&shown.stdout);
    assert!(
        t.contains("keep: pinned") && t.contains("keep: last #1"),
        "{t}"
    );

    let dry = agent(&cfg, &["run-once", "--dry-run"]).await;
    let t = String::from_utf8_lossy(&dry.stdout).to_string();
    assert!(
        t.contains("would create: agent-web-") && t.contains("would delete after success"),
        "{t}"
    );
    assert_eq!(
        s.sim.snapshots(ServerId::new(5)).len(),
        ids.len(),
        "a dry run changes nothing"
    );
    assert_eq!(agent(&cfg, &["pin", "99999"]).await.status.code(), Some(1));
}

/// `agent pin` of a snapshot whose delete a run recorded before the pin was committed
/// does not promise what it cannot: it says the snapshot may be gone, and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_after_a_recorded_delete_says_the_snapshot_may_be_gone() {
    let (_s, dir, cfg, first) = after_one_run().await;
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let owner = Owner::current();
    let now = chrono::Utc::now();
    let new = NewRun {
        job: "web",
        server_id: ServerId::new(5),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Manual,
        scheduled_for: None,
        started_at: now,
    };
    let run = db.start_run(new, &owner).await.unwrap();
    let delete = Intent {
        run_id: run,
        server_id: ServerId::new(5),
        action: Action::Delete,
        snapshot_id: Some(first),
        snapshot_name: None,
        detail: Some("rotation"),
    };
    db.intend_delete(delete, &owner, now)
        .await
        .unwrap()
        .unwrap();
    db.close().await;
    let o = agent(&cfg, &["pin", &first.to_string()]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!("run {run} had already set out to delete it"))
            && t.contains("may be gone"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_never_shows_the_token() {
    for args in [
        vec!["--help"],
        vec!["run-once", "--help"],
        vec!["check", "--help"],
    ] {
        let o = Command::new(BIN)
            .args(&args)
            .env("AGENT_API__TOKEN", TOKEN)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert!(!text(&o).contains(TOKEN));
    }
}

/// Collects sd_notify datagrams on a thread of its own, as systemd would: a socket nobody
/// reads fills up and blocks the sender.
struct Notifications {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Notifications {
    fn listen(path: &Path) -> Self {
        let sock = UnixDatagram::bind(path).unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                out.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Self { seen }
    }

    /// Waits (bounded) until a message after the first `from` contains `want`; returns its index.
    fn wait(&self, want: &str, from: usize) -> usize {
        for _ in 0..300 {
            if let Some(i) = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .position(|m| m.contains(want))
            {
                return from + i;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no {want:?} after message {from}: {:?}",
            self.seen.lock().unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_scheduled_jobs_and_stops_cleanly_on_sigterm() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        "[[jobs]]\nname = \"every-second\"\nserver_id = 9\nschedule = \"* * * * * *\"\nkeep_last = 2\n",
    );
    let notify_path = dir.path().join("notify.sock");
    let notes = Notifications::listen(&notify_path);
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "WATCHDOG_PID=$$ exec '{BIN}' --config '{}' run",
            cfg.display()
        ))
        .env("AGENT_API__TOKEN", TOKEN)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let ready = notes.wait("READY=1", 0);
    notes.wait("STATUS=next: every-second", ready);

    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let mut done = 0;
    for _ in 0..200 {
        done = db
            .history(None, 100)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.status == RunStatus::Succeeded)
            .count();
        if done >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done >= 3, "only {done} scheduled runs succeeded");
    // The scheduler loop pings the watchdog at half of WATCHDOG_USEC.
    notes.wait("WATCHDOG=1", ready);
    // SIGHUP: RELOADING=1, then READY=1 again.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let reloading = notes.wait("RELOADING=1", ready);
    notes.wait("READY=1", reloading);

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    notes.wait("STOPPING=1", reloading);
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let runs = db.history(None, 1000).await.unwrap();
    assert!(
        runs.iter().all(|r| r.status != RunStatus::Running),
        "a run was left running"
    );
    assert!(runs.iter().all(|r| r.trigger == RunTrigger::Schedule));
    // tokio-cron-scheduler keeps whole seconds and may fire early; a run never starts
    // before the time it was scheduled for.
    for r in &runs {
        assert!(
            r.started_at >= r.scheduled_for.unwrap(),
            "run {} started before its time",
            r.id
        );
    }
    assert!(
        s.sim.snapshots(ServerId::new(9)).len() <= 3,
        "rotation kept the server within its policy"
    );
    assert!(!err.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_sends_a_test_email_and_never_shows_the_smtp_password() {
    let s = sim().await;
    let (inbox, port) = crate::helpers::Inbox::start(0);
    let dir = tempfile::tempdir().unwrap();
    let email = |port: u16, login: &str| {
        format!(
            "{JOB}[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsecurity = \"none\"\nfrom = \"agent@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"3s\"\n{login}"
        )
    };
    let cfg = config(dir.path(), &s.base_url(), &email(port, ""));
    let o = agent(&cfg, &["check", "--send-test-email"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("test mail sent to ops@example.com"),
        "{}",
        text(&o)
    );
    let mails = inbox.messages();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("Subject: [agent] test email"));

    // A dead SMTP server with a login: a clear error naming the server, never the password.
    let dead = crate::helpers::closed_port();
    let cfg = config(
        dir.path(),
        &s.base_url(),
        &email(
            dead,
            "username = \"agent\"\npassword = \"smtp-secret-4242\"\n",
        ),
    );
    let o = agent(&cfg, &["check"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("127.0.0.1:{dead}")),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("smtp-secret-4242"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_has_the_spec_shape_and_json_logs_are_json() {
    let s = Simulator::start(
        SimOptions {
            token: TOKEN.into(),
            delay: vps_snapshot_agent::sim::Delay::Fixed(Duration::from_millis(300)),
            ..SimOptions::default()
        },
        vps_snapshot_agent::clock::system(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A window job whose lead (100 ms) is shorter than its snapshots take (300 ms).
    let jobs = "[[jobs]]\nname = \"db\"\nserver_id = 6\nmaintenance_window = \"0 0 4 * * Sun\"\nlead = \"100ms\"\nkeep_last = 2\n";
    let cfg = config(dir.path(), &s.base_url(), jobs);
    for _ in 0..3 {
        let o = agent(&cfg, &["--log-format", "json", "-v", "run-once"]).await;
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("run started")).collect();
        assert!(!lines.is_empty(), "{err}");
        for l in lines {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert_eq!(v["span"]["job"], "db", "{l}");
        }
    }
    let o = agent(&cfg, &["status", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let job = &v["jobs"][0];
    for key in [
        "name",
        "server_id",
        "next_run_at",
        "last_run",
        "last_success_at",
    ] {
        assert!(
            job.get(key).is_some(),
            "status JSON lacks jobs[].{key}: {v}"
        );
    }
    assert_eq!(job["last_run"]["status"], "succeeded");
    assert!(v["pending_alerts"].is_array());
    assert!(
        job["warnings"][0]
            .as_str()
            .unwrap()
            .contains("lead 100ms is shorter"),
        "{v}"
    );
    let plain = agent(&cfg, &["status"]).await;
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains("warning: db: lead 100ms is shorter"),
        "{}",
        text(&plain)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_for_one_job_reads_its_last_run_and_last_success() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = format!(
        "{JOB}[[jobs]]\nname = \"db\"\nserver_id = 6\nschedule = \"0 30 3 * * *\"\nkeep_last = 2\n"
    );
    let cfg = config(dir.path(), &s.base_url(), &jobs);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    s.sim
        .set_mode(ServerId::new(5), vps_snapshot_agent::sim::Mode::Fail);
    assert_eq!(
        agent(&cfg, &["run-once", "--job", "web"])
            .await
            .status
            .code(),
        Some(1)
    );

    let o = agent(&cfg, &["status", "--job", "web", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let jobs = st["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "only the job asked for");
    assert_eq!(jobs[0]["name"], "web");
    assert_eq!(jobs[0]["last_run"]["status"], "failed", "the newest run");
    assert_eq!(jobs[0]["last_run"]["id"], 3);
    let hist = agent(&cfg, &["history", "--json", "--job", "web"]).await;
    let runs: serde_json::Value = serde_json::from_slice(&hist.stdout).unwrap();
    assert_eq!(
        jobs[0]["last_success_at"], runs[1]["finished_at"],
        "the end of the last success, not of the newest run"
    );
    assert_eq!(
        jobs[0]["last_run"], runs[0],
        "the same run as history shows"
    );

    let unknown = agent(&cfg, &["status", "--job", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown).contains("no job named \"nope\""));
}

/// RUST_LOG is read as `target=level` directives: they choose what is logged, and a list
/// that cannot be read is named on stderr and the default used, the command unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_directives_filter_and_a_broken_list_is_named() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let with = |filter: &'static str| {
        let cfg = cfg.clone();
        async move {
            let out = tokio::process::Command::new(BIN)
                .arg("--config")
                .arg(&cfg)
                .arg("run-once")
                .env("AGENT_API__TOKEN", TOKEN)
                .env("RUST_LOG", filter)
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let debug = with("warn,vps_snapshot_agent=debug").await;
    assert!(debug.contains("DEBUG"), "{debug}");
    let quiet = with("vps_snapshot_agent=error").await;
    assert!(
        !quiet.contains("DEBUG") && !quiet.contains("INFO"),
        "{quiet}"
    );
    let broken = with("vps_snapshot_agent=loud").await;
    assert!(
        broken.contains("RUST_LOG=\"vps_snapshot_agent=loud\" is not a list of target=level"),
        "{broken}"
    );
    assert!(
        broken.contains("INFO") && !broken.contains("DEBUG"),
        "{broken}"
    );
}
