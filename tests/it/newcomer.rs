//! What a new user meets first, through the binary: exit codes, interrupts, `status
//! --check`, `snapshots --json`, logs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vps_snapshot_agent::db::{Database, RunStatus};
use vps_snapshot_agent::sim::{Delay, Fault, FaultKind, Mode, Op};

use crate::cli::{BIN, JOB, agent, config, sim, text};
use crate::helpers::{ServerId, TOKEN};

/// `agent ARGS` started in the background, stderr to `log`, token in the environment.
pub fn spawn(cfg: &Path, args: &[&str], log: &Path) -> std::process::Child {
    spawn_with(cfg, args, log, &[])
}

/// The timing under which the failover tests run the binary: leases, heartbeats and
/// checks in seconds rather than minutes ([`vps_snapshot_agent::timing`]).
pub const FAST: (&str, &str) = (
    "AGENT_TIMING",
    "agent_beat=500ms,agent_lease=4s,check_every=1s,lock_lease=8s",
);

/// [`spawn`] with `env` added.
pub fn spawn_with(
    cfg: &Path,
    args: &[&str],
    log: &Path,
    env: &[(&str, &str)],
) -> std::process::Child {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("AGENT_API__TOKEN", TOKEN)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// Waits (bounded, failing loudly) until `log` contains `want`.
pub async fn wait_for_log(log: &Path, want: &str) {
    for _ in 0..400 {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(want)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{want:?} never appeared in the log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Waits (bounded) until the job's run has asked for its snapshot.
async fn wait_for_snapshot_requested(db_path: &Path) {
    for _ in 0..400 {
        if let Ok(db) = Database::open(db_path).await {
            let runs = db.history(None, 10).await.unwrap();
            db.close().await;
            if runs
                .iter()
                .any(|r| r.snapshot.as_ref().is_some_and(|s| s.id.is_some()))
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the run never asked for its snapshot");
}

/// Waits for `child` to exit, bounded well below any grace period the test is about.
pub async fn exit_code(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("the process did not exit within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_checks_offline_with_only_a_token() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let o = agent(Path::new(example), &["check", "--offline"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("valid, 2 jobs"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_exit_code_rule_78_for_an_unusable_setup() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);

    // A token the API rejects: 78 whichever command meets it.
    for args in [&["run-once"][..], &["check"], &["snapshots"]] {
        let o = Command::new(BIN)
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("AGENT_API__TOKEN", "wrong-token")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(78), "{args:?}: {}", text(&o));
    }

    // A database the user cannot use: check finds it, and it is 78 like a bad config.
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    let unusable = text_cfg.replace(
        &dir.path().join("history.db").display().to_string(),
        "/dev/null/agent/history.db",
    );
    std::fs::write(&cfg, &unusable).unwrap();
    for args in [&["check"][..], &["run-once"], &["status"]] {
        let o = agent(&cfg, args).await;
        assert_eq!(o.status.code(), Some(78), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("/dev/null/agent/history.db"),
            "{}",
            text(&o)
        );
    }

    // No jobs at all: a config error for run and check; run-once says there is nothing to do.
    let empty = config(dir.path(), &s.base_url(), "");
    for args in [&["check", "--offline"][..], &["run"]] {
        let o = agent(&empty, args).await;
        assert_eq!(o.status.code(), Some(78), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("no [[jobs]]"), "{}", text(&o));
    }
    let o = agent(&empty, &["run-once"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing to do"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_owned_by_another_user_says_whose_it_is() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // As root: run the agent as nobody against a directory only root may write. As anyone
    // else: a directory under /proc, which belongs to root and takes no new entries.
    let db_path = if root {
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
        locked.join("history.db")
    } else {
        Path::new("/proc/agent-test/history.db").to_path_buf()
    };
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "database = \"{}\"\n[api]\ntoken = \"t\"\n[[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"0 30 2 * * *\"\n",
            db_path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&cfg).arg("history");
    if root {
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    // Root's files are handed to the user that runs agent, not run as root.
    let t = text(&o);
    assert!(t.contains("belongs to root: "), "{t}");
    assert!(!t.contains("sudo -u root"), "{t}");
    if root {
        assert!(t.contains("sudo chown vps-snapshot-agent: "), "{t}");
    } else {
        assert!(t.contains("create /proc/agent-test for the user"), "{t}");
    }
    assert!(t.contains("set `database` to a path you can write"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_run_once_stops_at_a_safe_point_and_the_next_run_once_finishes_it() {
    let s = sim().await;
    s.sim
        .set_delay(ServerId::new(5), Delay::Fixed(Duration::from_secs(6)));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let db_path = dir.path().join("history.db");
    let log = dir.path().join("first.log");
    let mut first = spawn(&cfg, &["run-once"], &log);
    wait_for_snapshot_requested(&db_path).await;
    signal(&first, libc::SIGINT);
    assert_eq!(
        exit_code(&mut first, Duration::from_secs(30)).await,
        Some(130)
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("stopping: no new runs start"), "{said}");
    // Signalled once the snapshot was asked for: the run is in its create step's last
    // moments or already polling, either a safe point to name.
    assert!(
        said.contains("web (run 1, poll)") || said.contains("web (run 1, create)"),
        "{said}"
    );
    assert!(said.contains("the next start"), "{said}");

    let db = Database::open(&db_path).await.unwrap();
    let run = db.history(None, 1).await.unwrap().remove(0);
    assert_eq!(run.status, RunStatus::Running, "left for the next start");
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("stopped by a signal"),
        "{run:?}"
    );
    db.close().await;

    // Seen from outside: a run whose process is gone, a warning for monitoring.
    let st = agent(&cfg, &["status"]).await;
    assert!(text(&st).contains("its process is gone"), "{}", text(&st));
    let check = agent(&cfg, &["status", "--check"]).await;
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).starts_with("WARNING: left running by a stopped agent: web"),
        "{}",
        text(&check)
    );

    // The next run-once finishes that run and counts it: one snapshot, not two.
    let second = agent(&cfg, &["run-once"]).await;
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        text(&second).contains("web: finished its interrupted run 1 (begun")
            && text(&second).contains("that snapshot counts as this run's"),
        "{}",
        text(&second)
    );
    let resumed_line = text(&second)
        .lines()
        .find(|l| l.contains("resuming a run interrupted"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        resumed_line.contains("job=web") && resumed_line.contains("run=1"),
        "a resumed run's lines carry its fields: {resumed_line:?}"
    );
    assert_eq!(s.sim.snapshots(ServerId::new(5)).len(), 1);
    let db = Database::open(&db_path).await.unwrap();
    let runs = db.history(None, 10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_exits_at_once() {
    let s = sim().await;
    // The create's answer takes a minute: no safe point to stop at before it.
    s.sim.inject(Fault::new(
        Op::Create,
        FaultKind::Delay(Duration::from_secs(60)),
        1,
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let log = dir.path().join("run.log");
    let mut child = spawn(&cfg, &["run-once"], &log);
    for _ in 0..400 {
        if s.sim.requests().of(Op::Create) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&child, libc::SIGINT);
    wait_for_log(&log, "press Ctrl-C again to exit now").await;
    signal(&child, libc::SIGINT);
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(30)).await,
        Some(130)
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("second signal: exiting now"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_says_what_a_reload_changed_and_a_second_sigterm_stops_it_at_once() {
    let s = sim().await;
    s.sim.set_mode(ServerId::new(9), Mode::Stuck);
    let dir = tempfile::tempdir().unwrap();
    let job = "[[jobs]]\nname = \"every-second\"\nserver_id = 9\nschedule = \"* * * * * *\"\n";
    let cfg = config(dir.path(), &s.base_url(), job);
    let log = dir.path().join("daemon.log");
    let mut child = spawn(&cfg, &["run"], &log);
    wait_for_log(&log, "run started").await;

    // A new job is applied; a listener (read only at start) is said to need a restart.
    let more = format!(
        "{}[[jobs]]\nname = \"extra\"\nserver_id = 10\nschedule = \"0 0 3 * * *\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        std::fs::read_to_string(&cfg).unwrap()
    );
    std::fs::write(&cfg, more).unwrap();
    signal(&child, libc::SIGHUP);
    wait_for_log(&log, "configuration reloaded: added extra").await;
    wait_for_log(
        &log,
        "metrics.listen changed in the file but is read only at start: restart the agent",
    )
    .await;

    // A snapshot that never completes holds the drain for its 75 s grace...
    signal(&child, libc::SIGTERM);
    wait_for_log(&log, "a second signal stops at once").await;
    // ...unless the operator asks again.
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exit_code(&mut child, Duration::from_secs(30)).await,
        Some(0)
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("they stay recorded as running"), "{said}");
    let db = Database::open(&dir.path().join("history.db"))
        .await
        .unwrap();
    let runs = db.history(None, 10).await.unwrap();
    assert!(
        runs.iter().any(|r| r.status == RunStatus::Running),
        "left for the next start: {runs:?}"
    );
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_check_speaks_like_a_monitoring_plugin() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let o = agent(&cfg, &["status", "--check"]).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "a job that never ran is new: {}",
        text(&o)
    );

    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    let o = agent(&cfg, &["status", "--check"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        line.starts_with("OK: 1 job(s); oldest last success"),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");

    s.sim.set_mode(ServerId::new(5), Mode::Fail);
    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(1));
    let o = agent(&cfg, &["status", "--check"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("CRITICAL: last run failed: web"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_as_json_and_no_table_for_an_empty_server() {
    let s = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let empty = agent(&cfg, &["snapshots"]).await;
    assert_eq!(empty.status.code(), Some(0), "{}", text(&empty));
    let out = String::from_utf8_lossy(&empty.stdout);
    assert!(out.contains("server 5: 0 snapshots"), "{out}");
    assert!(!out.contains("NAME"), "no header-only table: {out}");

    assert_eq!(agent(&cfg, &["run-once"]).await.status.code(), Some(0));
    let o = agent(&cfg, &["snapshots", "--json"]).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["server_id"], 5);
    assert_eq!(v[0]["jobs"][0], "web");
    let snap = &v[0]["snapshots"][0];
    assert!(snap["id"].is_u64(), "{snap}");
    assert_eq!(snap["status"], "completed");
    assert_eq!(snap["pinned"], false);
    assert_eq!(snap["verdict"], "keep: last #1");
    assert_eq!(snap["managed"], true, "{snap}");
    assert_eq!(snap["owner_job"], "web", "{snap}");
    assert_eq!(snap["reason"], "marked", "{snap}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_numbers_and_every_poll_is_logged_at_debug() {
    let s = sim().await;
    s.sim
        .set_delay(ServerId::new(5), Delay::Fixed(Duration::from_millis(500)));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &s.base_url(), JOB);
    let o = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["--log-format", "json", "-v", "run-once"])
        .env("AGENT_API__TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let event = |msg: &str| {
        lines
            .iter()
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(msg))
            })
            .unwrap_or_else(|| panic!("no {msg:?} in {lines:#?}"))
            .clone()
    };
    let requested = event("snapshot requested");
    assert!(requested["fields"]["snapshot"].is_u64(), "{requested}");
    assert!(requested["span"]["run"].is_i64(), "{requested}");
    assert!(requested["span"]["server"].is_u64(), "{requested}");
    let done = event("run succeeded");
    assert_eq!(done["fields"]["deleted"], 0, "{done}");
    let wait = event("next look in");
    assert!(wait["fields"]["status"].is_string(), "{wait}");
    let polled = event("polled");
    assert!(polled["fields"]["poll"].is_u64(), "{polled}");
    // Timestamps to the second.
    let ts = requested["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), "2026-11-28T21:40:22Z".len(), "{ts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_man_pages_have_the_usual_sections_and_every_page_referred_to_exists() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["manpage", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let main = std::fs::read_to_string(dir.path().join("agent.1")).unwrap();
    for section in [
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH EXAMPLES",
    ] {
        assert!(main.contains(section), "agent(1) lacks {section}");
    }
    assert!(main.contains("\\fB78\\fR"), "exit 78 is explained");
    let referred: Vec<String> = main
        .lines()
        .filter_map(|l| l.strip_suffix("(1)"))
        .map(|l| l.replace("\\-", "-"))
        .collect();
    assert!(referred.contains(&"agent-run".to_string()), "{referred:?}");
    for page in referred {
        assert!(
            dir.path().join(format!("{page}.1")).exists(),
            "agent(1) refers to {page}(1), which is not shipped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_reads_true_scheduled_runs_at_their_times() {
    let o = Command::new(BIN)
        .args(["demo", "--rounds", "3"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let history: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("=== history"))
        .filter(|l| l.contains(" snapshot "))
        .collect();
    assert_eq!(history.len(), 6, "{out}");
    for line in &history {
        assert!(
            line.contains(" schedule "),
            "a scheduled job says so: {line}"
        );
        let at_time = if line.contains("web-01-nightly") {
            " 02:30:00 "
        } else {
            " 03:15:00 "
        };
        assert!(line.contains(at_time), "every day at its time: {line}");
    }
    assert!(
        out.contains("TIME is each run from its scheduled start"),
        "{out}"
    );
}
