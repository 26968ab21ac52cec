//! One installation, in process: the simulator (on the history's virtual clock), an SMTP
//! server, a config file and its history database (a SQLite file, or a PostgreSQL schema:
//! [`super::store`]), and the agent processes the history
//! starts, kills and stops. [`World::play`] turns a [`History`]'s events into all that.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeZone, Timelike, Utc};
use vps_snapshot_agent::alert::Outbox;
use vps_snapshot_agent::api::{Client, Snapshot, SnapshotStatus};
use vps_snapshot_agent::clock::{Clock, SharedClock, VirtualClock};
use vps_snapshot_agent::config::Settings;
use vps_snapshot_agent::daemon::{Control, Daemon, Services};
use vps_snapshot_agent::db::{Database, Engine, Run, RunKind, RunStatus};
use vps_snapshot_agent::domain::{RunId, ServerId, SnapshotId};
use vps_snapshot_agent::identity::Owner;
use vps_snapshot_agent::run::{Runner, STAND_IN};
use vps_snapshot_agent::sim::{
    Delay, Fault, FaultKind, Mode, Op, SimOptions, SimServer, Simulator, TripWire,
};
use vps_snapshot_agent::timing::Timing;

use super::history::{
    EditPick, Event, FaultPick, GlitchPick, History, Kill, Model, OddTarget, OpPick, Pace, SERVERS,
};
use super::process::{Counting, DaemonProc, ManualTimer, Proc};
use crate::helpers::{Inbox, TOKEN};
use crate::store::raw;

pub struct World {
    pub seed: u64,
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub store: super::store::Store,
    pub clock: VirtualClock,
    pub server: SimServer,
    pub inbox: Inbox,
    smtp_port: u16,
    /// The webhook channel and every job's ping receiver.
    pub receivers: crate::receiver::Receiver,
    pub client: Arc<Client>,
    pub model: Model,
    daemon: Option<DaemonProc>,
    /// The second daemon of a model with a peer.
    peer: Option<DaemonProc>,
    /// Processes started so far (each draws its random numbers from its own seed).
    started: u64,
    /// What happened, for the report (shared: a hung history is reported from outside).
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
    /// Invariants broken during the history (checked with the quiet phase's).
    pub broken: Vec<String>,
    /// The last run recorded before each step back of the wall clock.
    pub clock_back: Vec<RunId>,
    /// The pid of every process started so far.
    pids: Vec<u32>,
    /// Every `run-once` started: who, when, for which jobs, and whether it ran to its end.
    run_onces: Vec<RunOnce>,
}

/// A `run-once` the history started.
struct RunOnce {
    owner: String,
    /// The box's clock when it started.
    at: DateTime<Utc>,
    jobs: Vec<String>,
    /// It ran to its end (not killed, not cut short).
    ended: bool,
}

/// Builds a runner for `settings` owned by `owner`, as a process would at start.
fn runner(
    settings: &Settings,
    db: Database,
    client: Arc<Client>,
    clock: SharedClock,
    owner: Owner,
) -> Runner {
    // A history's real-time budget is two minutes: a fire that cannot claim itself
    // (a killed process's transaction still draining) gives up within seconds.
    let timing = Timing {
        claim_patience: Duration::from_secs(2),
        ..db.timing()
    };
    let mut r = Runner::from_settings(settings, db.with_timing(timing), client, clock);
    r.owner = owner;
    r
}

impl World {
    pub async fn new(history: &History, smtp: (Inbox, u16)) -> Self {
        let clock = VirtualClock::new(Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).unwrap());
        let server = Simulator::start(
            SimOptions {
                token: TOKEN.into(),
                delay: Delay::Uniform(Duration::from_secs(180), Duration::from_secs(600)),
                seed: history.seed,
                ..SimOptions::default()
            },
            // The API's clock is not the box's: a step of the box's leaves it alone.
            Arc::new(clock.unstepped()),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        let store =
            super::store::for_history(history.model.postgres, dir.path(), history.seed).await;
        let mut model = history.model.clone();
        model.postgres = store.on_postgres();
        let (inbox, smtp_port) = smtp;
        inbox.set_down(false);
        let mut settings = vps_snapshot_agent::config::ApiSettings::new(
            vps_snapshot_agent::config::validate_base_url(&server.base_url()).unwrap(),
            secrecy::SecretString::from(TOKEN),
        );
        settings.request_timeout = Duration::from_millis(200);
        settings.max_retries = 2;
        let client = Client::new(
            &settings,
            &secrecy::SecretString::from(TOKEN),
            Arc::new(clock.clone()),
        )
        .unwrap();
        let receivers = crate::receiver::Receiver::start().await;
        let world = World {
            receivers,
            seed: history.seed,
            dir,
            cfg,
            store,
            clock,
            server,
            inbox,
            smtp_port,
            client,
            model,
            daemon: None,
            peer: None,
            started: 0,
            log: Arc::default(),
            broken: Vec::new(),
            clock_back: Vec::new(),
            pids: Vec::new(),
            run_onces: Vec::new(),
        };
        world.watch_takeovers().await;
        world.write_config();
        world
    }

    pub fn sim(&self) -> &Simulator {
        &self.server.sim
    }

    pub fn write_config(&self) {
        let text = self.model.render(
            self.store.configured(),
            &self.server.base_url(),
            self.smtp_port,
            Pace::Virtual,
            Some(&self.receivers.url("")),
        );
        std::fs::write(&self.cfg, text).unwrap();
    }

    fn shared_clock(&self) -> SharedClock {
        Arc::new(self.clock.clone())
    }

    fn new_proc(&mut self, role: &str) -> Proc {
        self.started += 1;
        let p = Proc::start(self.seed.wrapping_mul(1_000_003).wrapping_add(self.started));
        self.pids.push(p.pid());
        if std::env::var_os("EXPLORE_SEED").is_some() {
            eprintln!(
                "explore:   process {} ({role}): {}",
                self.started,
                p.owner.as_str()
            );
        }
        p
    }

    /// Starts `agent run-once` (every job, or job `job` of the config) in a new process.
    fn start_run_once(&mut self, job: Option<u32>) -> (Proc, tokio::task::JoinHandle<()>) {
        let proc = self.new_proc("run-once");
        let names = self.model.jobs.iter().map(|j| j.name.clone());
        self.run_onces.push(RunOnce {
            owner: proc.owner.as_str().to_string(),
            at: self.clock.now(),
            jobs: match job {
                None => names.collect(),
                Some(i) => names
                    .skip(i as usize % self.model.jobs.len().max(1))
                    .take(1)
                    .collect(),
            },
            ended: false,
        });
        let (cfg, client, clock, owner, dbs) = (
            self.cfg.clone(),
            self.client.clone(),
            self.shared_clock(),
            proc.owner.clone(),
            proc.dbs(),
        );
        let task = proc.spawn(async move {
            let Ok(settings) = Settings::load(&cfg) else {
                return;
            };
            let Some(db) = super::process::open(&dbs, &settings.database).await else {
                return;
            };
            let jobs = match job {
                None => settings.jobs.clone(),
                Some(i) => settings
                    .jobs
                    .get(i as usize % settings.jobs.len().max(1))
                    .cloned()
                    .into_iter()
                    .collect(),
            };
            let r = runner(&settings, db.clone(), client, clock, owner);
            let _ = vps_snapshot_agent::commands::run_jobs(&settings, &r, &jobs, false).await;
            db.close().await;
        });
        (proc, task)
    }

    /// Starts `agent run` in a new process, unless one runs (and its peer, if the model
    /// has one and it is not running).
    async fn start_daemon(&mut self) {
        if self.daemon.is_none() {
            self.daemon = Some(self.spawn_daemon("daemon").await);
        }
        if self.model.peer && self.peer.is_none() {
            self.peer = Some(self.spawn_daemon("peer daemon").await);
        }
    }

    async fn spawn_daemon(&mut self, role: &str) -> DaemonProc {
        let proc = self.new_proc(role);
        let (control, rx) = tokio::sync::mpsc::unbounded_channel();
        let timer = Arc::new(ManualTimer::default());
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cfg, client, clock, owner, dbs) = (
            self.cfg.clone(),
            self.client.clone(),
            self.shared_clock(),
            proc.owner.clone(),
            proc.dbs(),
        );
        let (t, a) = (timer.clone(), active.clone());
        let task = proc.spawn(async move {
            let Ok(settings) = Settings::load(&cfg) else {
                return;
            };
            let Some(db) = super::process::open(&dbs, &settings.database).await else {
                return;
            };
            let build = {
                let (db, clock) = (db.clone(), clock.clone());
                move |settings: Settings| -> anyhow::Result<Services> {
                    let r = runner(
                        &settings,
                        db.clone(),
                        client.clone(),
                        clock.clone(),
                        owner.clone(),
                    );
                    let outbox =
                        Outbox::from_settings(&settings, db.clone(), clock.clone())?.map(Arc::new);
                    let kick = r.kick.clone();
                    let executor = Arc::new(Counting {
                        runner: r,
                        active: a.clone(),
                    });
                    Ok(Services {
                        settings,
                        kick,
                        executor,
                        outbox,
                    })
                }
            };
            let Ok(first) = build(settings) else { return };
            let timing = Timing {
                grace: Duration::from_secs(2),
                // A step of the wall clock is noticed between two events.
                step_every: Duration::from_millis(20),
                check_every: Duration::from_secs(3600),
                stale_every: Duration::from_secs(3600),
                ..db.timing()
            };
            let daemon = Daemon {
                services: first,
                db: db.with_timing(timing),
                clock,
                timer: t,
                reload: Box::new(move || build(Settings::load(&cfg)?)),
            };
            let _ = daemon.run(rx).await;
        });
        let d = DaemonProc {
            proc,
            control,
            timer,
            active,
            task,
        };
        if !d.quiet(0).await {
            self.note(format!("the {role} did not settle after its start"));
        }
        d
    }
}

/// The simulator's fault for `fault`, timed for `pace`.
pub fn fault_kind(fault: FaultPick, pace: Pace) -> FaultKind {
    match fault {
        FaultPick::Status5xx(code) => FaultKind::Status {
            code,
            retry_after: None,
            body: format!("<html><body>{code} upstream trouble</body></html>"),
        },
        FaultPick::RateLimited => FaultKind::Status {
            code: 429,
            retry_after: Some(2),
            body: "{\"detail\":\"slow down\"}".into(),
        },
        FaultPick::DropBefore => FaultKind::DropBefore,
        FaultPick::DropAfter => FaultKind::DropAfter,
        FaultPick::Slow => FaultKind::Delay(Duration::from_millis(300)),
        FaultPick::LandLate => FaultKind::LandLate(match pace {
            Pace::Virtual => Duration::from_secs(1200),
            Pace::Real => Duration::from_secs(2),
        }),
        FaultPick::Truncated => FaultKind::Body("{\"count\": 1, \"results\": [{\"id\":".into()),
        FaultPick::Mistyped => {
            FaultKind::Body("{\"id\": \"eight\", \"results\": {\"a\": 1}}".into())
        }
        FaultPick::EchoHeaders => FaultKind::EchoHeaders(400),
    }
}

pub fn op(pick: OpPick) -> Op {
    match pick {
        OpPick::List => Op::List,
        OpPick::Create => Op::Create,
        OpPick::Delete => Op::Delete,
        OpPick::Restore => Op::Restore,
        OpPick::Any => Op::Any,
    }
}

impl World {
    /// Plays `history`'s events in order.
    pub async fn play(&mut self, history: &History, stats: &mut super::Stats) {
        let verbose = std::env::var_os("EXPLORE_SEED").is_some();
        for (i, e) in history.events.iter().enumerate() {
            if verbose {
                eprintln!("explore: {i}. {e}");
            }
            self.log.lock().unwrap().push(format!("{i}. {e}"));
            stats.event(e);
            let t = std::time::Instant::now();
            self.step(*e, stats).await;
            stats.took(&super::Stats::kind(e), t.elapsed());
        }
    }

    async fn step(&mut self, e: Event, stats: &mut super::Stats) {
        match e {
            Event::Fire(kill) => self.fire(kill, stats).await,
            Event::RunOnce { job, kill } => {
                let run = self.start_run_once(job);
                self.finish(vec![run], kill, stats).await;
            }
            Event::TwoRunOnces(kill) => {
                if self.running_runs().await > 0 {
                    stats.note("two run-once racing to resume a run");
                }
                let (a, b) = (self.start_run_once(None), self.start_run_once(None));
                self.finish(vec![a, b], kill, stats).await;
            }
            Event::RunOnceBesideFire(kill) => {
                let arms = self.send_fire();
                let run = self.start_run_once(None);
                self.finish(vec![run], kill, stats).await;
                if let (Some(d), Some(arms)) = (&self.daemon, arms) {
                    let settled = d.quiet(arms).await;
                    self.note_unquiet(settled, "the daemon, after a fire beside a run-once,");
                }
            }
            Event::StartDaemon => self.start_daemon().await,
            Event::TermDaemonMidFire => {
                self.send_fire();
                self.stop_daemon().await;
            }
            Event::TermDaemon => self.stop_daemon().await,
            Event::KillDaemon => {
                if let Some(d) = self.daemon.take() {
                    d.proc.kill().await;
                }
            }
            Event::Advance(m) => self.clock.advance(Duration::from_secs(u64::from(m) * 60)),
            Event::Fault {
                op: o,
                fault,
                times,
            } => {
                self.sim()
                    .inject(Fault::new(op(o), fault_kind(fault, Pace::Virtual), times));
            }
            Event::ClearFaults => {
                self.sim().clear_faults();
                self.sim().clear_glitches();
            }
            Event::Glitch(g) => self.glitch(g),
            Event::RestoreOdd(target, n) => self.restore_odd(target, n).await,
            Event::Downtime(hours) => {
                if let Some(d) = self.daemon.take() {
                    d.proc.kill().await;
                }
                if let Some(p) = self.peer.take() {
                    p.proc.kill().await;
                }
                self.clock
                    .advance(Duration::from_secs(u64::from(hours) * 3600));
            }
            Event::ReceiversDown => self.receivers.set_down(true),
            Event::ReceiversUp => {
                self.receivers.set_down(false);
                self.receivers.set_echo(false);
            }
            Event::ReceiversEcho => {
                self.receivers.set_down(false);
                self.receivers.set_echo(true);
            }
            Event::ClockStep(minutes) => {
                self.step_clock(chrono::Duration::minutes(i64::from(minutes)), false, stats)
                    .await;
            }
            Event::ProcUnreadable(reads) => {
                for pid in &self.pids {
                    vps_snapshot_agent::identity::fail_liveness_reads(*pid, reads);
                }
            }
            Event::Suspend(hours) => {
                self.step_clock(chrono::Duration::hours(i64::from(hours)), true, stats)
                    .await;
            }
            Event::Mode { server, mode } => {
                let m = [Mode::Normal, Mode::Fail, Mode::Stuck][usize::from(mode % 3)];
                self.sim().set_mode(server, m);
            }
            Event::DeleteByHand(n) => {
                if let Some(s) = self.pick(n, |_| true) {
                    self.sim().delete_external(s.id);
                }
            }
            Event::AddByHand { server, look_alike } => self.add_by_hand(server, look_alike),
            Event::Restore(n) => self.restore(n).await,
            Event::Pin(n) => {
                if let Some(s) = self.pick(n, |_| true) {
                    let db = self.store.open().await;
                    db.pin(s.id, self.clock.now()).await.unwrap();
                    db.close().await;
                }
            }
            Event::Unpin(n) => {
                let db = self.store.open().await;
                let mut pins: Vec<SnapshotId> = db
                    .pins(chrono::Utc::now() + chrono::Duration::days(3650))
                    .await
                    .unwrap()
                    .into_iter()
                    .collect();
                pins.sort_unstable();
                if !pins.is_empty() {
                    db.unpin(pins[n as usize % pins.len()]).await.unwrap();
                }
                db.close().await;
            }
            Event::Edit(pick, n) => self.edit(pick, n).await,
            Event::SmtpDown => self.inbox.set_down(true),
            Event::SmtpUp => self.inbox.set_down(false),
        }
    }

    /// The wall clock steps by `by`, or the box sleeps that long (`suspended`: the world
    /// moves on too), with the daemons running. Each must notice, re-arm from the new time and stay armed no
    /// later than the configuration's next fire: a step never silences a schedule.
    async fn step_clock(
        &mut self,
        by: chrono::Duration,
        suspended: bool,
        stats: &mut super::Stats,
    ) {
        if by < chrono::Duration::zero() {
            let db = self.store.open().await;
            let (last,): (i64,) = raw!(
                db,
                sqlx::query_as("SELECT COALESCE(max(id), 0) FROM runs"),
                fetch_one
            )
            .unwrap();
            let (crossed,): (i64,) = raw!(
                db,
                sqlx::query_as("SELECT count(*) FROM fires WHERE scheduled_for > $1")
                    .bind((self.clock.now() + by).timestamp_millis()),
                fetch_one
            )
            .unwrap();
            db.close().await;
            self.clock_back.push(RunId::new(last));
            if crossed > 0 {
                stats.note("the clock went back past fires already run");
            }
        }
        let daemons: Vec<&DaemonProc> = self.daemon.iter().chain(&self.peer).collect();
        let arms: Vec<usize> = daemons
            .iter()
            .map(|d| d.timer.arms.load(Ordering::SeqCst))
            .collect();
        match (suspended, by.to_std()) {
            (true, Ok(d)) => self.clock.suspend(d),
            _ => self.clock.step(by),
        }
        let mut broken = Vec::new();
        for (d, arms) in daemons.into_iter().zip(arms) {
            // It looks at the clock every 20 ms; ten seconds is plenty on a loaded machine.
            let mut noticed = false;
            for _ in 0..10_000 {
                noticed = d.timer.arms.load(Ordering::SeqCst) > arms;
                if noticed || d.task.is_finished() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if d.task.is_finished() {
                continue;
            }
            if noticed {
                let settled = d.quiet(arms).await;
                self.note_unquiet(settled, "a daemon, after a clock step,");
            } else {
                broken.push(format!(
                    "the daemon did not re-arm within 10 s of a step of the wall clock by {} min",
                    by.num_minutes()
                ));
            }
            let now = self.clock.now();
            let next = next_fire(&self.model, now);
            match (d.timer.due(), next) {
                (Some(due), Some(next)) if due > next => broken.push(format!(
                    "after the wall clock stepped by {} min to {now}, the daemon was armed for \
                     {due}, past the schedule's next fire at {next}",
                    by.num_minutes()
                )),
                (None, Some(next)) => broken.push(format!(
                    "after the wall clock stepped by {} min to {now}, the daemon was armed for \
                     nothing; the schedule's next fire is at {next}",
                    by.num_minutes()
                )),
                _ => {}
            }
        }
        self.broken.extend(broken);
    }

    /// Every process's `/proc` reads again.
    pub fn proc_readable(&self) {
        for pid in &self.pids {
            vps_snapshot_agent::identity::fail_liveness_reads(*pid, 0);
        }
    }

    /// Records every change of a run's owner (a takeover), with the real time it happened,
    /// in a table of the harness's own.
    async fn watch_takeovers(&self) {
        let db = self.store.open().await;
        let table = "CREATE TABLE explore_takeovers \
                     (run_id BIGINT, from_owner TEXT, to_owner TEXT, at_ms BIGINT)";
        let trigger: &[&str] = match db.engine() {
            Engine::Sqlite => &[
                "CREATE TRIGGER explore_takeover AFTER UPDATE OF owner ON runs \
                 WHEN OLD.owner IS NOT NEW.owner BEGIN \
                 INSERT INTO explore_takeovers VALUES (OLD.id, OLD.owner, NEW.owner, \
                 CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)); END",
            ],
            // The real time of the UPDATE itself (`now()` is the transaction's start).
            Engine::Postgres => &[
                "CREATE FUNCTION explore_takeover() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN INSERT INTO explore_takeovers VALUES (OLD.id, OLD.owner, NEW.owner, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint); RETURN NEW; END $$",
                "CREATE TRIGGER explore_takeover AFTER UPDATE OF owner ON runs FOR EACH ROW \
                 WHEN (OLD.owner IS DISTINCT FROM NEW.owner) EXECUTE FUNCTION explore_takeover()",
            ],
        };
        for sql in std::iter::once(&table).chain(trigger) {
            raw!(db, sqlx::query(*sql), execute).unwrap();
        }
        db.close().await;
    }

    /// No run was taken from a process that was still alive: every takeover came after
    /// the process it took from was killed.
    pub async fn takeovers(&self, db: &Database) -> Vec<String> {
        let rows: Vec<(i64, String, String, i64)> = raw!(
            db,
            sqlx::query_as("SELECT run_id, from_owner, to_owner, at_ms FROM explore_takeovers"),
            fetch_all
        )
        .unwrap();
        rows.into_iter()
            .filter_map(|(run, from, to, at)| {
                let alive = super::process::killed_at(&from).is_none_or(|k| at < k);
                alive.then(|| {
                    format!("run {run} was taken over by {to} from {from}, a process still alive")
                })
            })
            .collect()
    }

    async fn running_runs(&self) -> usize {
        let db = self.store.open().await;
        let n = db.running().await.unwrap().len();
        db.close().await;
        n
    }

    /// Every snapshot on every server, by id.
    fn snapshots(&self) -> Vec<Snapshot> {
        let mut all: Vec<Snapshot> = SERVERS
            .iter()
            .flat_map(|s| self.sim().snapshots(*s))
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// The `n`-th (modulo) snapshot that `want` accepts.
    fn pick(&self, n: u32, want: impl Fn(&Snapshot) -> bool) -> Option<Snapshot> {
        let all: Vec<Snapshot> = self.snapshots().into_iter().filter(|s| want(s)).collect();
        (!all.is_empty()).then(|| all[n as usize % all.len()].clone())
    }

    fn add_by_hand(&mut self, server: ServerId, look_alike: bool) {
        if self.sim().snapshots(server).len() >= 5 {
            return;
        }
        let at = self.sim().now() - chrono::Duration::hours(1);
        let n = self.snapshots().len();
        let job = self
            .model
            .jobs
            .iter()
            .find(|j| j.server == server)
            .map_or("job-0".to_string(), |j| j.name.clone());
        let (name, description) = if look_alike {
            let name = vps_snapshot_agent::snapshot::naming::new_name(&job, at);
            let fake = format!(
                "Made by vps-snapshot-agent (job {job}, run 1). agent-mark:v1:{:032x}",
                n
            );
            (name, Some(fake))
        } else {
            (format!("by-hand-{n}"), None)
        };
        self.sim().put_described(
            server,
            &name,
            description.as_deref(),
            SnapshotStatus::Completed,
            at,
        );
    }

    /// A listing glitch (until the faults are cleared).
    fn glitch(&mut self, g: GlitchPick) {
        use vps_snapshot_agent::sim::Glitch;
        let sim = self.sim().clone();
        match g {
            GlitchPick::Duplicate(n) => {
                if let Some(s) = self.pick(n, |_| true) {
                    sim.glitch(Glitch::Duplicate(s.id));
                }
            }
            GlitchPick::Stranger => sim.glitch(Glitch::Extra(serde_json::json!({
                "id": 4_000_000_001_u64, "server": {"id": 99, "name": "elsewhere"},
                "name": "agent-job-0-20261127T000000Z-000000", "status": "completed",
                "created_at": "2026-11-27T00:00:00Z", "description": null}))),
            GlitchPick::Unreadable => {
                let server = self.model.jobs[0].server;
                sim.glitch(Glitch::Extra(serde_json::json!({
                    "id": 4_000_000_002_u64, "server": {"id": server, "name": "s"},
                    "name": "by-hand-unreadable", "status": "completed",
                    "created_at": "the day before yesterday", "description": null})));
            }
            GlitchPick::Copy(n) => {
                if let Some(s) = self.pick(n, |_| true) {
                    let mut copy = serde_json::to_value(&s).unwrap();
                    copy["id"] = serde_json::json!(4_000_000_003_u64 + u64::from(n % 1000));
                    sim.glitch(Glitch::Extra(copy));
                }
            }
            GlitchPick::BigIds => sim.set_next_id((1 << 63) - 2),
        }
    }

    /// A restore of a target that cannot be restored: it must be refused before anything
    /// changes (the invariants check that such a run touched nothing).
    async fn restore_odd(&mut self, target: OddTarget, n: u32) {
        let job = &self.model.jobs[n as usize % self.model.jobs.len()];
        let server = job.server;
        // The API's time, which a step of the box's clock does not move.
        let now = self.sim().now();
        let snap = match target {
            OddTarget::InProgress | OddTarget::Failed => {
                if self.sim().snapshots(server).len() >= 5 {
                    return;
                }
                let status = if target == OddTarget::InProgress {
                    SnapshotStatus::InProgress
                } else {
                    SnapshotStatus::Failed("failed".into())
                };
                let id = self.sim().put(server, "by-hand-odd", status, now);
                match self
                    .sim()
                    .snapshots(server)
                    .into_iter()
                    .find(|s| s.id == id)
                {
                    Some(s) => s,
                    None => return,
                }
            }
            OddTarget::Missing => Snapshot {
                // An id no snapshot has (nor will: the simulator counts from 800).
                id: SnapshotId::new(3_999_999_999),
                server: vps_snapshot_agent::api::ServerRef {
                    id: server,
                    name: None,
                },
                name: "gone".into(),
                status: SnapshotStatus::Completed,
                size_mb: None,
                created_at: now,
                description: None,
            },
        };
        // Nothing else runs meanwhile (fires come only when the history sends them), once
        // the requests still in flight have landed (a slowed create its run gave up on):
        // every effect on the API in this window is the restore's, and there must be none.
        for _ in 0..500 {
            if self.sim().requests_in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = self.sim().events().len();
        let (id, status) = (snap.id, snap.status.clone());
        self.restore_snapshot(snap).await;
        let effects: Vec<String> = self.sim().events()[before..]
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        if !effects.is_empty() {
            self.broken.push(format!(
                "a restore of snapshot {id} ({status}, or missing) changed the server: {effects:?}"
            ));
        }
    }

    async fn restore(&mut self, n: u32) {
        let Some(snap) = self.pick(n, |s| s.status == SnapshotStatus::Completed) else {
            return;
        };
        self.restore_snapshot(snap).await;
    }

    async fn restore_snapshot(&mut self, snap: Snapshot) {
        let proc = self.new_proc("restore");
        let (cfg, client, clock, owner, dbs) = (
            self.cfg.clone(),
            self.client.clone(),
            self.shared_clock(),
            proc.owner.clone(),
            proc.dbs(),
        );
        let task = proc.spawn(async move {
            let Ok(settings) = Settings::load(&cfg) else {
                return;
            };
            let Some(db) = super::process::open(&dbs, &settings.database).await else {
                return;
            };
            // As `agent restore` does: the server's job takes a safety snapshot first.
            let job = vps_snapshot_agent::run::job_for(&settings.jobs, &snap);
            let r = runner(&settings, db.clone(), client, clock, owner);
            let _ = r
                .restore(vps_snapshot_agent::run::RestoreRequest {
                    snapshot: &snap,
                    job,
                    safety: job.is_some(),
                })
                .await;
            db.close().await;
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        proc.kill().await;
    }

    /// Notes in the log that a daemon did not settle after a fire (for an overrun's record).
    fn note_unquiet(&self, settled: bool, what: &str) {
        if !settled {
            self.note(format!(
                "{what} did not settle: no re-arm, or a run still in flight"
            ));
        }
    }

    /// A wait of the harness that ran out: in the log (an overrun's record), and at once
    /// on the terminal with `EXPLORE_TRACE`.
    fn note(&self, what: String) {
        if std::env::var_os("EXPLORE_TRACE").is_some() {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "explore: seed {}: !! {what}", self.seed);
        }
        self.log.lock().unwrap().push(format!("   !! {what}"));
    }

    async fn edit(&mut self, pick: EditPick, n: u32) {
        let Some(m) = edited(&self.model, pick, n) else {
            return;
        };
        self.model = m;
        self.write_config();
        for d in self.daemon.iter().chain(&self.peer) {
            let arms = d.timer.arms.load(Ordering::SeqCst);
            let _ = d.control.send(Control::Reload);
            let settled = d.quiet(arms).await;
            self.note_unquiet(settled, "a daemon, after a reload,");
        }
    }

    /// Delivers the peer's fire if it is due by now (the same fire as the first
    /// daemon's); the timer's arm count before.
    fn fire_peer(&self) -> Option<usize> {
        let p = self.peer.as_ref()?;
        if p.timer.due()? > self.clock.now() {
            return None;
        }
        let arms = p.timer.arms.load(Ordering::SeqCst);
        p.timer.fire().then_some(arms)
    }

    /// Moves time to the daemon's next fire and delivers it; the timer's arm count before.
    fn send_fire(&mut self) -> Option<usize> {
        let d = self.daemon.as_ref()?;
        let at = d.timer.due()?;
        if let Ok(ahead) = (at - self.clock.now()).to_std() {
            self.clock.advance(ahead);
        }
        let arms = d.timer.arms.load(Ordering::SeqCst);
        d.timer.fire().then_some(arms)
    }

    async fn fire(&mut self, kill: Option<Kill>, stats: &mut super::Stats) {
        if self.daemon.is_none() {
            // Nobody is there to fire: the hour passes unnoticed.
            self.clock.advance(Duration::from_secs(3600));
            return;
        }
        let wire = kill.map(|k| self.sim().arm_trip(k.skip, k.carry_out));
        let Some(arms) = self.send_fire() else {
            self.sim().disarm_trip();
            return;
        };
        let peer_arms = self.fire_peer();
        if peer_arms.is_some() {
            stats.note("two daemons firing the same fire");
        }
        self.fire_daemon(arms, kill, wire, stats).await;
        if let (Some(p), Some(arms)) = (&self.peer, peer_arms) {
            let settled = p.quiet(arms).await;
            self.note_unquiet(settled, "the peer daemon, after a fire,");
        }
        self.sim().disarm_trip();
    }

    async fn fire_daemon(
        &mut self,
        arms: usize,
        kill: Option<Kill>,
        wire: Option<TripWire>,
        stats: &mut super::Stats,
    ) {
        let Some(d) = &self.daemon else { return };
        match wire {
            None => {
                let settled = d.quiet(arms).await;
                self.note_unquiet(settled, "the daemon, after a fire,");
            }
            Some(TripWire { tripped, release }) => {
                tokio::select! {
                    op = tripped => {
                        if let Ok(op) = op {
                            stats.kill(op, kill.is_some_and(|k| k.carry_out), "daemon");
                        }
                        if let Some(d) = self.daemon.take() {
                            d.proc.kill().await;
                        }
                        self.log.lock().unwrap().push("   -> the daemon was killed".into());
                        let _ = release.send(());
                    }
                    settled = d.quiet(arms) => self.note_unquiet(settled, "the daemon, after a fire,"),
                }
            }
        }
    }

    /// Waits for `runs` (at most 30 s each); with `kill`, kills the first when its kill
    /// point trips.
    async fn finish(
        &mut self,
        mut runs: Vec<(Proc, tokio::task::JoinHandle<()>)>,
        kill: Option<Kill>,
        stats: &mut super::Stats,
    ) {
        if let Some(k) = kill {
            let TripWire { tripped, release } = self.sim().arm_trip(k.skip, k.carry_out);
            let (first, task) = runs.remove(0);
            tokio::select! {
                op = tripped => {
                    if let Ok(op) = op {
                        stats.kill(op, k.carry_out, "run-once");
                    }
                    self.log.lock().unwrap().push("   -> the run-once was killed".into());
                    first.kill().await;
                    let _ = release.send(());
                }
                _ = task => {
                    self.ended(&first);
                    first.kill().await;
                }
            }
            self.sim().disarm_trip();
        }
        for (p, t) in runs {
            if tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .is_err()
            {
                self.note(format!(
                    "the run-once {} did not end within 30 s",
                    p.owner.as_str()
                ));
            } else {
                self.ended(&p);
            }
            p.kill().await;
        }
    }

    /// Notes that the `run-once` of process `p` ran to its end.
    fn ended(&mut self, p: &Proc) {
        for r in &mut self.run_onces {
            if r.owner == p.owner.as_str() {
                r.ended = true;
            }
        }
    }

    /// A `run-once` that made no run of a job of its own, because an interrupted run it
    /// finished stands in for one, did so only within the documented bound: that run
    /// succeeded and began at most [`STAND_IN`] before (and not after) the `run-once`.
    pub async fn stand_ins(&self, db: &Database) -> Vec<String> {
        let runs = db.history(None, u32::MAX).await.unwrap();
        let mut bad = Vec::new();
        for r in self.run_onces.iter().filter(|r| r.ended) {
            for job in &r.jobs {
                let ours = runs
                    .iter()
                    .filter(|x| x.job == *job && x.owner == r.owner && x.kind == RunKind::Snapshot);
                // The history keeps times to the millisecond.
                let at = r.at.timestamp_millis();
                let (fresh, resumed): (Vec<&Run>, Vec<&Run>) =
                    ours.partition(|x| x.started_at.timestamp_millis() >= at);
                if !fresh.is_empty() {
                    continue;
                }
                for x in resumed {
                    let age = r.at - x.started_at;
                    let within = age.to_std().is_ok_and(|a| a <= STAND_IN);
                    if x.status != RunStatus::Succeeded || !within {
                        bad.push(format!(
                            "the run-once at {} made no run of {job}: run {} ({}, begun {} \
                             before) stood in for it, beyond the {} a run may stand in",
                            r.at,
                            x.id,
                            x.status,
                            vps_snapshot_agent::human::fmt_age(age),
                            vps_snapshot_agent::human::span(STAND_IN)
                        ));
                    }
                }
            }
        }
        bad
    }

    /// SIGTERM: the daemon stops starting runs and lets running ones finish (its grace),
    /// then the process ends.
    async fn stop_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.control.send(Control::Stop);
            let _ = tokio::time::timeout(Duration::from_secs(10), d.task).await;
            d.proc.kill().await;
        }
    }

    /// Where things are now, for a history that outlived its time: the database's
    /// running runs, locks, open journal entries and agents, and which processes live.
    pub async fn overrun_record(&self) -> String {
        let mut out = Vec::new();
        for (what, d) in [("daemon", &self.daemon), ("peer", &self.peer)] {
            if let Some(d) = d {
                out.push(format!(
                    "  {what} {}: timer armed {} times, {} run(s) in flight, task finished: {}",
                    d.proc.owner.as_str(),
                    d.timer.arms.load(Ordering::SeqCst),
                    d.active.load(Ordering::SeqCst),
                    d.task.is_finished()
                ));
            }
        }
        let db = match tokio::time::timeout(Duration::from_secs(5), self.store.try_open()).await {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return format!("{}\n  the database: {e}", out.join("\n")),
            Err(_) => return format!("{}\n  the database did not open in 5 s", out.join("\n")),
        };
        // Each row as one text column, so that one query reads on either engine.
        for (what, sql) in [
            (
                "running runs",
                "SELECT CAST(id AS TEXT) || ' | ' || job || ' | ' || step || ' | ' || owner \
                 FROM runs WHERE status = 'running'",
            ),
            (
                "locks",
                "SELECT CAST(server_id AS TEXT) || ' | ' || holder || ' | ' || \
                 COALESCE(CAST(run_id AS TEXT), '-') || ' | ' || CAST(expires_at AS TEXT) \
                 FROM locks",
            ),
            (
                "open journal entries",
                "SELECT CAST(id AS TEXT) || ' | ' || CAST(run_id AS TEXT) || ' | ' || action \
                 || ' | ' || state || ' | ' || COALESCE(CAST(snapshot_id AS TEXT), '-') \
                 FROM journal WHERE state IN ('pending', 'unknown')",
            ),
            (
                "agents",
                "SELECT id || ' | ' || role || ' | ' || CAST(seen_at AS TEXT) || ' | ' || \
                 COALESCE(CAST(stopped_at AS TEXT), '-') FROM agents",
            ),
        ] {
            out.push(format!("  {what}:"));
            let rows: Result<Vec<String>, _> = raw!(db, sqlx::query_scalar(sql), fetch_all);
            for r in rows.unwrap_or_else(|e| vec![e.to_string()]) {
                out.push(format!("    {r}"));
            }
        }
        db.close().await;
        out.join("\n")
    }

    /// Kills whatever still runs.
    pub async fn kill_all(&mut self) {
        for d in [self.daemon.take(), self.peer.take()].into_iter().flatten() {
            d.proc.kill().await;
        }
    }

    /// A `run-once` of every job, to its end.
    pub async fn run_once_to_the_end(&mut self) {
        let run = self.start_run_once(None);
        let mut stats = super::Stats::default();
        self.finish(vec![run], None, &mut stats).await;
    }
}

/// `model` edited as `pick` and `n` say, if the result is a valid config.
pub fn edited(model: &Model, pick: EditPick, n: u32) -> Option<Model> {
    let mut m = model.clone();
    let i = n as usize % m.jobs.len();
    match pick {
        EditPick::Keep => {}
        EditPick::Rename => m.jobs[i].name = format!("job-{i}-r{}", n % 1000),
        EditPick::Move => m.jobs[i].server = SERVERS[(n / 7) as usize % SERVERS.len()],
        EditPick::Remove if m.jobs.len() > 1 => {
            m.jobs.remove(i);
        }
        EditPick::Remove => {}
        EditPick::KeepLast => m.jobs[i].keep_last = 1 + (n / 7) % 3,
    }
    let unique = m
        .jobs
        .iter()
        .all(|j| m.jobs.iter().filter(|k| k.name == j.name).count() == 1);
    (m.valid() && unique).then_some(m)
}

/// The next fire after `now` of any job of `model`, worked out from the model alone (not
/// by the agent's schedule code): a schedule fires at its minute of every hour, a window
/// job 45 minutes before its window opens at its minute of every sixth hour (UTC).
fn next_fire(model: &Model, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let hour = now.duration_trunc(chrono::Duration::hours(1)).ok()?;
    model
        .jobs
        .iter()
        .filter_map(|j| {
            let minute = chrono::Duration::minutes(i64::from(j.minute));
            (-6..=12)
                .map(|h| hour + chrono::Duration::hours(h) + minute)
                .filter(|open| !j.window || open.hour() % 6 == 0)
                .map(|at| {
                    if j.window {
                        at - chrono::Duration::minutes(45)
                    } else {
                        at
                    }
                })
                .find(|at| *at > now)
        })
        .min()
}
