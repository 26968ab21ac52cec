//! Process-level scenes: a simulator on loopback, a config in a temp dir, and the `agent`
//! binary run against them as an operator (or systemd) would, with real signals. After a
//! scene the safety invariants are checked (`invariants.rs`) and every output is scanned
//! for the token.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::db::{Database, RunStatus, Step};
use vps_snapshot_agent::domain::AlertKind;
use vps_snapshot_agent::sim::{Delay, SimOptions, SimServer, Simulator};

use crate::helpers::{RunId, ServerId, TOKEN};
use crate::invariants::{self, Expect};

pub const BIN: &str = env!("CARGO_BIN_EXE_agent");
pub const SERVER: ServerId = ServerId::new(5);

pub struct Scene {
    pub sim: SimServer,
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
}

/// What a scene's config says beyond its fixed parts.
pub struct Setup {
    /// How long the simulator's snapshots take.
    pub delay: Duration,
    /// Extra `[defaults]` lines.
    pub defaults: String,
    /// The job's server.
    pub server: ServerId,
    pub smtp_port: u16,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(200),
            defaults: String::new(),
            server: SERVER,
            smtp_port: crate::helpers::closed_port(),
        }
    }
}

/// What the invariants expect of a scene configured by `config` (its deletion cap).
pub fn expect_for(config: &str) -> Expect {
    let cap = config
        .lines()
        .find_map(|l| l.strip_prefix("max_deletions_per_run = "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(3);
    Expect {
        alerts: true,
        repeat_after: Duration::from_secs(6 * 3600),
        token: TOKEN.to_string(),
        max_deletions_per_run: cap,
        raised: None,
        clock_back: Vec::new(),
    }
}

pub fn expect() -> Expect {
    expect_for("")
}

/// A config for one job "web": short timeouts, keep_last 1 unless `defaults` says
/// otherwise, alerts to `smtp_port`.
fn config_text(dir: &Path, base_url: &str, setup: &Setup) -> String {
    // Each default unless `defaults` sets it (any `keep_*` replaces keep_last).
    let mut defaults = String::new();
    for (key, line) in [
        ("poll_interval", "poll_interval = \"50ms\""),
        ("snapshot_timeout", "snapshot_timeout = \"3s\""),
        ("catch_up", "catch_up = \"off\""),
        ("keep_", "keep_last = 1"),
    ] {
        if !setup.defaults.contains(key) {
            defaults.push_str(line);
            defaults.push('\n');
        }
    }
    format!(
        "database = \"{db}\"\n[api]\nbase_url = \"{base_url}\"\nrequest_timeout = \"300ms\"\nmax_retries = 2\n\
         [defaults]\n{defaults}{extra}\n\
         [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsecurity = \"none\"\nfrom = \"agent@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"2s\"\n\
         [[jobs]]\nname = \"web\"\nserver_id = {server}\nschedule = \"0 30 2 * * *\"\n",
        db = dir.join("history.db").display(),
        extra = setup.defaults,
        port = setup.smtp_port,
        server = setup.server,
    )
}

/// A simulator (real time) whose server holds `old` completed snapshots the agent made
/// earlier for job "web" (named and marked), and a config for it.
pub async fn scene(delay: Duration, old: usize, smtp_port: u16, extra_defaults: &str) -> Scene {
    let s = scene_with(Setup {
        delay,
        defaults: extra_defaults.to_string(),
        smtp_port,
        ..Setup::default()
    })
    .await;
    let now = chrono::Utc::now();
    for i in 0..old {
        let at = now - chrono::Duration::days(i as i64 + 1);
        let name = vps_snapshot_agent::snapshot::naming::new_name("web", at);
        let description = crate::helpers::marker().description("web", SERVER, RunId::new(0), &name);
        s.sim.sim.put_described(
            SERVER,
            &name,
            Some(&description),
            SnapshotStatus::Completed,
            at,
        );
    }
    s
}

pub async fn scene_with(setup: Setup) -> Scene {
    let sim = Simulator::start(
        SimOptions {
            token: TOKEN.into(),
            delay: Delay::Fixed(setup.delay),
            ..SimOptions::default()
        },
        vps_snapshot_agent::clock::system(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config_text(dir.path(), &sim.base_url(), &setup)).unwrap();
    Scene { sim, dir, cfg }
}

pub fn command(cfg: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.arg("--config")
        .arg(cfg)
        .args(args)
        .env("AGENT_API__TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null());
    c
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// No token, no panic, a recognized exit code.
pub fn sane(o: &Output, what: &str) {
    let t = text(o);
    assert!(!t.contains(TOKEN), "{what}: the token leaked:\n{t}");
    assert!(!t.contains("panicked"), "{what}: panic:\n{t}");
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{what}: exit {:?}:\n{t}",
        o.status.code()
    );
}

impl Scene {
    pub async fn db(&self) -> Database {
        Database::open(&self.dir.path().join("history.db"))
            .await
            .unwrap()
    }

    /// Runs `agent ARGS` to completion and checks it is sane.
    pub async fn agent(&self, args: &[&str]) -> Output {
        let o = command(&self.cfg, args).output().await.unwrap();
        sane(&o, &args.join(" "));
        o
    }

    /// Rewrites the config with `setup` (the simulator stays).
    pub fn reconfigure(&self, setup: &Setup) {
        std::fs::write(
            &self.cfg,
            config_text(self.dir.path(), &self.sim.base_url(), setup),
        )
        .unwrap();
    }

    pub async fn check(&self) {
        let db = self.db().await;
        let config = std::fs::read_to_string(&self.cfg).unwrap();
        invariants::check(&self.sim.sim, &db, &expect_for(&config)).await;
        db.close().await;
        invariants::no_token_in_files(self.dir.path(), TOKEN);
    }

    /// The kinds of the alerts queued or sent so far.
    pub async fn alert_kinds(&self) -> Vec<AlertKind> {
        let db = self.db().await;
        let kinds = sqlx::query_scalar("SELECT kind FROM alerts ORDER BY id")
            .fetch_all(db.sqlite_pool().unwrap())
            .await
            .unwrap();
        db.close().await;
        kinds
    }
}

/// Starts `agent run-once` and SIGKILLs it once `at` holds; returns the run it left
/// `running`.
pub async fn kill_when(
    s: &Scene,
    point: &str,
    at: impl AsyncFn(&Database, &Simulator) -> bool,
) -> RunId {
    let log = std::fs::File::create(s.dir.path().join("killed.log")).unwrap();
    let mut child = command(&s.cfg, &["run-once"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let db = s.db().await;
    let mut hit = false;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if at(&db, &s.sim.sim).await {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = child.start_kill();
    assert!(
        hit,
        "{point}: the crash point was never reached; the run said:\n{}",
        std::fs::read_to_string(s.dir.path().join("killed.log")).unwrap_or_default()
    );
    let _ = child.wait().await;
    let killed = db.history(None, 1).await.unwrap()[0].clone();
    assert_eq!(
        killed.status,
        RunStatus::Running,
        "{point}: killed before it could finish"
    );
    db.close().await;
    killed.id
}

/// Kills a `run-once` once `at` holds, runs it again (which resumes the dead run), and
/// checks the invariants and that the killed run ended.
pub async fn crash(s: &Scene, point: &str, at: impl AsyncFn(&Database, &Simulator) -> bool) {
    let killed = kill_when(s, point, at).await;
    s.sim.sim.clear_faults();
    s.agent(&["run-once"]).await;
    let db = s.db().await;
    let after = db.run(killed).await.unwrap().unwrap();
    assert_ne!(
        after.status,
        RunStatus::Running,
        "{point}: the killed run was not finished"
    );
    println!(
        "{point}: killed run ended {} ({:?})",
        after.status, after.error
    );
    db.close().await;
    s.check().await;
}

/// Whether a run is recorded at `step` (as history's JSON names it).
pub async fn step_is(db: &Database, step: Step) -> bool {
    db.running().await.unwrap().iter().any(|r| r.step == step)
}
