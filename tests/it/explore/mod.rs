//! The seeded fault explorer, after FoundationDB's simulation tests and TigerBeetle's VOPR:
//! many short random lives of one installation, each drawn from a seed, each checked
//! against the safety invariants, each failure replayable from its seed and shortened to
//! the events that still make it fail.
//!
//! Most histories run in this test process ([`world`]): the simulator on a virtual clock,
//! SQLite files (one history in ten: a PostgreSQL schema, [`store`]), a real SMTP server, and agent processes simulated by tokio runtimes of
//! their own (a kill drops every task where it stands) running the real daemon loop and
//! the real `run-once`. Kills are tied to logical points (the n-th API request from now,
//! carried out or not), so a seed replays. A smaller share runs through the `agent`
//! binary with real signals at random moments ([`binary`]).
//!
//! - all of it, in CI: `cargo nextest run explore` (or `cargo test --test it explore`)
//! - soak: `EXPLORE_HISTORIES=100000 cargo test --release --test it explore -- --nocapture`
//! - replay one: `EXPLORE_SEED=N cargo test --test it explore::replay -- --nocapture`
//!   (`EXPLORE_KEEP=0,3,7` keeps only those events, as a shortened report prints them)

mod binary;
mod history;
mod process;
mod receivers;
mod store;
mod world;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use binary::{BinaryHistory, Site};
use history::{Event, History, Model};
use vps_snapshot_agent::db::Database;
use vps_snapshot_agent::sim::Simulator;
use world::World;

use crate::helpers::{Inbox, TOKEN};
use crate::invariants::{self, Expect};
use crate::store::raw;

/// Every seed that ever failed, kept as regression tests.
const REGRESSION_SEEDS: &[u64] = &[37, 46, 315, 796, 882, 1081, 1480];

/// How many in-process histories the test suite runs, over [`SHARDS`] tests: enough that
/// every kind of event comes up in every run, few enough for a contributor's suite to
/// take minutes (CI runs ten times as many: `EXPLORE_HISTORIES` in `.ci/run`).
const DEFAULT_HISTORIES: u64 = 192;
const SHARDS: u64 = 8;

/// What a batch of histories exercised.
#[derive(Debug, Default)]
pub struct Stats {
    events: BTreeMap<String, u64>,
    notes: BTreeMap<String, u64>,
    /// Wall time spent per kind of event (milliseconds).
    millis: BTreeMap<String, u128>,
}

impl Stats {
    fn kind(e: &Event) -> String {
        let name = format!("{e:?}");
        name.split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string()
    }

    fn event(&mut self, e: &Event) {
        *self.events.entry(Self::kind(e)).or_default() += 1;
    }

    fn took(&mut self, what: &str, t: std::time::Duration) {
        *self.millis.entry(what.to_string()).or_default() += t.as_millis();
    }

    fn note(&mut self, what: &str) {
        *self.notes.entry(what.to_string()).or_default() += 1;
    }

    fn kill(&mut self, op: &str, carried_out: bool, whom: &str) {
        let done = if carried_out {
            "carried out"
        } else {
            "not carried out"
        };
        self.note(&format!("{whom} killed with a {op} in flight ({done})"));
    }

    fn merge(&mut self, other: Stats) {
        for (k, v) in other.events {
            *self.events.entry(k).or_default() += v;
        }
        for (k, v) in other.notes {
            *self.notes.entry(k).or_default() += v;
        }
        for (k, v) in other.millis {
            *self.millis.entry(k).or_default() += v;
        }
    }

    fn print(&self, histories: u64) {
        println!("explore: {histories} histories");
        for (k, v) in &self.events {
            println!("  event {k}: {v}");
        }
        for (k, v) in &self.notes {
            println!("  seen: {k}: {v}");
        }
        for (k, v) in &self.millis {
            println!("  wall time in {k}: {v} ms");
        }
    }
}

/// Counts what the journal shows a history did that only rare paths do.
async fn journal_notes(db: &Database, stats: &mut Stats) {
    let rows: Vec<(String, String, Option<String>)> = raw!(
        db,
        sqlx::query_as(
            "SELECT action, state, outcome FROM journal \
             WHERE action IN ('create', 'delete', 'restore', 'adopt', 'vanished')"
        ),
        fetch_all
    )
    .unwrap_or_default();
    for (action, state, detail) in rows {
        let detail = detail.unwrap_or_default();
        if detail.contains("appeared later") {
            stats.note("a create landed after its run ended, adopted later");
        } else if detail.contains("carried out; its answer was lost") {
            stats.note("a lost delete settled as the agent's own");
        } else if detail.contains("still listed afterwards") {
            stats.note("a lost delete settled as not carried out");
        } else if action == "adopt" {
            stats.note("a create's lost answer adopted by name");
        } else if action == "vanished" {
            stats.note("drift reported");
        } else if state == "unknown" {
            stats.note(&format!("a {action} left unknown"));
        }
    }
    let runs = db.history(None, u32::MAX).await.unwrap_or_default();
    for r in runs {
        if r.status == vps_snapshot_agent::db::RunStatus::Interrupted {
            stats.note("a run marked interrupted");
        }
        if r.error
            .as_deref()
            .is_some_and(|e| e.contains("Not asking again"))
        {
            stats.note("a run failed rather than ask for a lost create again");
        }
    }
}

/// The longest a history may take: well beyond its real-time waits (request timeouts,
/// a daemon's grace), so hitting it means something hangs.
const HISTORY_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Plays `history` in process, then the quiet phase; the invariants that broke.
pub async fn run(history: &History, smtp: &(Inbox, u16), stats: &mut Stats) -> Vec<String> {
    let mut w = World::new(history, smtp.clone()).await;
    let started = std::time::Instant::now();
    let log = w.log.clone();
    let played = tokio::time::timeout(HISTORY_LIMIT, async {
        w.play(history, stats).await;
        let t = std::time::Instant::now();
        let bad = quiet(&mut w, stats).await;
        stats.took("the quiet phase", t.elapsed());
        bad
    })
    .await;
    let bad = match played {
        Ok(bad) => bad,
        Err(_) => {
            // Where everything was when the time ran out, before anything is killed.
            let record = w.overrun_record().await;
            // Its processes' runtimes must be shut down, not dropped here.
            w.kill_all().await;
            let lines = log.lock().unwrap().clone();
            let waits: Vec<&String> = lines.iter().filter(|l| l.contains("!!")).collect();
            vec![format!(
                "{OVERRUN}: stuck after {} log lines; the waits that ran out: {waits:?}; where \
                 things were:\n{record}",
                lines.len()
            )]
        }
    };
    let engine = match w.store.on_postgres() {
        true => "histories on PostgreSQL",
        false => "histories on SQLite",
    };
    stats.note(engine);
    stats.took(engine, started.elapsed());
    w.store.remove().await;
    bad
}

/// What the quiet phase and the final checks need of an installation, in process or
/// through the binary.
trait Installation {
    fn sim(&self) -> &Simulator;
    fn inbox(&self) -> &Inbox;
    fn cfg(&self) -> &Path;
    fn store(&self) -> &store::Store;
    fn dir(&self) -> &Path;
    fn model(&mut self) -> &mut Model;
    fn write_config(&self);
    /// Kills every agent process still running.
    async fn stop_all(&mut self);
    /// Lets everything in flight land (late creates, snapshots in progress).
    async fn pass_time(&mut self);
    /// One `run-once` of every job, to its end.
    async fn run_once(&mut self);
    /// The outside world behaves again: the webhook channel and the ping receiver
    /// answer, `/proc` reads, the box's clock is right.
    fn heal(&self) {}
    /// What the installation saw go wrong on its own side: invariants broken during the
    /// history, what the receivers got against what the database says was sent, takeovers.
    async fn own_checks(&self, _db: &Database) -> Vec<String> {
        Vec::new()
    }
    /// The last run recorded before each step back of the wall clock.
    fn clock_back(&self) -> Vec<vps_snapshot_agent::domain::RunId> {
        Vec::new()
    }
}

impl Installation for World {
    fn sim(&self) -> &Simulator {
        World::sim(self)
    }
    fn inbox(&self) -> &Inbox {
        &self.inbox
    }
    fn cfg(&self) -> &Path {
        &self.cfg
    }
    fn store(&self) -> &store::Store {
        &self.store
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
    fn model(&mut self) -> &mut Model {
        &mut self.model
    }
    fn write_config(&self) {
        World::write_config(self);
    }
    async fn stop_all(&mut self) {
        self.kill_all().await;
    }
    async fn pass_time(&mut self) {
        self.clock.advance(Duration::from_secs(2 * 86_400));
    }
    async fn run_once(&mut self) {
        self.run_once_to_the_end().await;
    }
    fn heal(&self) {
        self.receivers.set_down(false);
        self.receivers.set_echo(false);
        self.proc_readable();
        // NTP sets the box's clock right.
        self.clock.step(-self.clock.off_by());
    }
    fn clock_back(&self) -> Vec<vps_snapshot_agent::domain::RunId> {
        self.clock_back.clone()
    }
    async fn own_checks(&self, db: &Database) -> Vec<String> {
        let mut bad = self.broken.clone();
        bad.extend(self.takeovers(db).await);
        bad.extend(self.stand_ins(db).await);
        bad.extend(
            receivers::check(
                &self.receivers,
                &self.model,
                db,
                &self.inbox,
                self.dir.path(),
            )
            .await,
        );
        bad
    }
}

impl Installation for Site {
    fn sim(&self) -> &Simulator {
        Site::sim(self)
    }
    fn inbox(&self) -> &Inbox {
        &self.inbox
    }
    fn cfg(&self) -> &Path {
        &self.cfg
    }
    fn store(&self) -> &store::Store {
        &self.store
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }
    fn model(&mut self) -> &mut Model {
        &mut self.model
    }
    fn write_config(&self) {
        Site::write_config(self);
    }
    async fn stop_all(&mut self) {
        self.kill_daemon().await;
    }
    async fn pass_time(&mut self) {
        // Until what is in flight has landed: late creates land 2 s after they are asked
        // for, snapshots take at most 0.4 s.
        for _ in 0..500 {
            if self.sim().settled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the simulator did not settle within 5 s");
    }
    async fn run_once(&mut self) {
        self.agent(&["run-once"]).await;
    }
}

/// The agent started once more with the API and the mail server healthy, after time
/// enough for everything in flight to land: then nothing may be left running, every alert
/// is delivered, no job holds more than its policy keeps, and the invariants hold.
async fn quiet(site: &mut impl Installation, stats: &mut Stats) -> Vec<String> {
    site.stop_all().await;
    let sim = site.sim().clone();
    sim.clear_faults();
    sim.clear_glitches();
    site.heal();
    sim.disarm_trip();
    for s in history::SERVERS {
        sim.set_mode(s, vps_snapshot_agent::sim::Mode::Normal);
    }
    site.inbox().set_down(false);
    site.pass_time().await;
    let db = site.store().open().await;
    // Deletes journaled from here on are under the quiet phase's config.
    let (first_quiet,): (i64,) = raw!(
        db,
        sqlx::query_as("SELECT COALESCE(max(id), 0) + 1 FROM journal"),
        fetch_one
    )
    .unwrap();
    let cap = site.model().max_deletions as usize;
    site.model().max_deletions = 3;
    site.write_config();
    // Enough runs for a backlog beyond one run's deletions to go.
    for _ in 0..3 {
        site.run_once().await;
        if over_policy(site.cfg(), &sim, &db).await.is_empty() {
            break;
        }
    }
    let expect = Expect {
        alerts: true,
        repeat_after: Duration::from_secs(6 * 3600),
        token: TOKEN.to_string(),
        max_deletions_per_run: cap,
        raised: Some((first_quiet, 3)),
        clock_back: site.clock_back(),
    };
    // A run-once cut short (30 s, on a loaded machine) keeps its claim on what it was
    // delivering, and every process simulated in this test process shares its agent id,
    // so none takes the claim back as a dead process's: let it run out (`outbox_claim`),
    // as a real one's would, and deliver once more.
    if !db.pending_alerts().await.unwrap().is_empty() {
        stats.note("the quiet phase waited for an outbox claim to run out");
        site.pass_time().await;
        site.run_once().await;
    }
    let mut bad = invariants::violations(&sim, &db, &expect).await;
    let pending = db.pending_alerts().await.unwrap();
    if !pending.is_empty() {
        let subjects: Vec<&str> = pending.iter().map(|a| a.subject.as_str()).collect();
        bad.push(format!(
            "alerts still queued with the mail server up: {subjects:?}"
        ));
    }
    bad.extend(over_policy(site.cfg(), &sim, &db).await);
    // Not even a piece: 8 characters of the token are as good as a leak (`secrets.rs`).
    // The files hold a SQLite database; a PostgreSQL one is read row by row.
    let rows = invariants::all_rows(&db).await;
    for piece in invariants::pieces(TOKEN) {
        for f in invariants::files_with_token(site.dir(), piece) {
            bad.push(format!("{piece:?}, a piece of the token, is in {f}"));
        }
        if let Some((table, _)) = rows.iter().find(|(_, row)| row.contains(piece)) {
            bad.push(format!(
                "{piece:?}, a piece of the token, is in a row of {table}"
            ));
        }
        if site.inbox().messages().iter().any(|m| m.contains(piece)) {
            bad.push(format!("{piece:?}, a piece of the token, is in a mail"));
        }
    }
    bad.extend(site.own_checks(&db).await);
    journal_notes(&db, stats).await;
    db.close().await;
    bad
}

/// Jobs whose servers still hold snapshots their policy drops.
async fn over_policy(cfg: &Path, sim: &Simulator, db: &Database) -> Vec<String> {
    let Ok(settings) = vps_snapshot_agent::config::Settings::load(cfg) else {
        return vec!["the final config does not load".into()];
    };
    // Pinned as the quiet phase's runs saw it (a safety snapshot's pin may have ended).
    let pins = db.pins(sim.now()).await.unwrap();
    let marker = crate::helpers::marker();
    let mut bad = Vec::new();
    for job in &settings.jobs {
        let listing = sim.snapshots(job.server_id);
        let owners =
            vps_snapshot_agent::snapshot::owners(Some(db), &marker, job.server_id, &listing)
                .await
                .unwrap();
        let cands = vps_snapshot_agent::snapshot::candidates(&listing, &owners, job, &pins);
        let drop =
            vps_snapshot_agent::retention::victims(&cands, &job.retention, job.timezone, u32::MAX);
        if !drop.is_empty() {
            bad.push(format!(
                "after the quiet phase job {} still holds {drop:?} on server {} that its policy drops",
                job.name, job.server_id
            ));
        }
    }
    bad
}

/// Plays a binary history, then the quiet phase; the invariants that broke.
pub async fn run_binary(h: &BinaryHistory, smtp: &(Inbox, u16), stats: &mut Stats) -> Vec<String> {
    let mut site = Site::new(h, smtp.clone()).await;
    let played = tokio::time::timeout(HISTORY_LIMIT, async {
        for step in &h.steps {
            let kind = format!("{step:?}");
            stats.note(&format!(
                "binary: {}",
                kind.split(['(', ' ', '{']).next().unwrap_or_default()
            ));
            site.step(*step).await;
        }
        let mut bad = quiet(&mut site, stats).await;
        bad.extend(site.hook_violations().await);
        bad.extend(site.broken.iter().cloned());
        bad
    })
    .await;
    site.kill_daemon().await;
    stats.note(match site.store.on_postgres() {
        true => "binary histories on PostgreSQL",
        false => "binary histories on SQLite",
    });
    site.store.remove().await;
    played.unwrap_or_else(|_| {
        vec![format!(
            "the binary history did not end within {HISTORY_LIMIT:?}"
        )]
    })
}

/// Whether `history` fails, tried up to `tries` times (interleavings of concurrent
/// processes are up to the operating system).
async fn fails(history: &History, smtp: &(Inbox, u16), tries: u32) -> Option<Vec<String>> {
    for _ in 0..tries {
        let bad = run(history, smtp, &mut Stats::default()).await;
        if !bad.is_empty() {
            return Some(bad);
        }
    }
    None
}

/// The fewest events of `history` (by index) that still make it fail.
async fn shrink(history: &History, smtp: &(Inbox, u16)) -> Vec<usize> {
    let mut keep: Vec<usize> = (0..history.events.len()).collect();
    let mut i = keep.len();
    while i > 0 {
        i -= 1;
        let mut fewer = keep.clone();
        fewer.remove(i);
        if fails(&history.only(&fewer), smtp, 2).await.is_some() {
            keep = fewer;
        }
    }
    keep
}

/// What a history that outlived [`HISTORY_LIMIT`] reports (it is not shrunk: each try
/// would take as long again).
const OVERRUN: &str = "the history did not end in time";

/// The report of a failing seed: what broke, the history, how to replay it, and the
/// shortened history that still fails.
async fn report(history: &History, bad: &[String], smtp: &(Inbox, u16)) -> String {
    // Not shrunk: an overrun (each try would take as long), or when asked not to
    // (`EXPLORE_SHRINK=0`: trying a mutation over many seeds).
    let keep = if bad.iter().any(|b| b.starts_with(OVERRUN))
        || std::env::var_os("EXPLORE_SHRINK").is_some_and(|v| v == "0")
    {
        (0..history.events.len()).collect()
    } else {
        shrink(history, smtp).await
    };
    let short = history.only(&keep);
    let list: Vec<String> = keep.iter().map(usize::to_string).collect();
    format!(
        "explore: seed {seed} broke {n} invariant(s):\n  {bad}\n\n{history}\n\
         replay: EXPLORE_SEED={seed} cargo test --test it explore::replay -- --nocapture\n\
         shortened to {k} of {all} events (still fails):\n\
         EXPLORE_SEED={seed} EXPLORE_KEEP={list} cargo test --test it explore::replay -- --nocapture\n{short}",
        seed = history.seed,
        n = bad.len(),
        bad = bad.join("\n  "),
        k = keep.len(),
        all = history.events.len(),
        list = list.join(","),
    )
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs shard `shard` of the in-process histories; panics with a report on the first
/// failure.
async fn shard(shard: u64) {
    if std::env::var_os("EXPLORE_LOG").is_some() {
        vps_snapshot_agent::logging::init(vps_snapshot_agent::cli::LogFormat::Text, 1, 0, false);
    }
    let total = env_u64("EXPLORE_HISTORIES").unwrap_or(DEFAULT_HISTORIES);
    // CI runs the seeds after the ones the suite ran (`EXPLORE_FIRST`), not them again.
    let first = env_u64("EXPLORE_FIRST").unwrap_or(0);
    let smtp = Inbox::start(0);
    let mut stats = Stats::default();
    let mut ran = 0;
    let mut seed = first + shard;
    while seed < first + total {
        let history = History::generate(seed);
        if std::env::var_os("EXPLORE_TRACE").is_some() {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "explore: seed {seed} at {:?}",
                std::time::SystemTime::now()
            );
        }
        let mut s = Stats::default();
        let bad = run(&history, &smtp, &mut s).await;
        if !bad.is_empty() {
            panic!("{}", report(&history, &bad, &smtp).await);
        }
        stats.merge(s);
        ran += 1;
        seed += SHARDS;
    }
    stats.print(ran);
}

/// How many binary histories the test suite runs, over [`BINARY_SHARDS`] tests (CI: more,
/// `EXPLORE_BINARY_HISTORIES`).
const DEFAULT_BINARY_HISTORIES: u64 = 8;
const BINARY_SHARDS: u64 = 4;
/// Binary seeds start here, apart from the in-process ones.
const BINARY_SEEDS: u64 = 1_000_000;

/// The fewest steps of `h` that still make it fail.
async fn shrink_binary(h: &BinaryHistory, smtp: &(Inbox, u16)) -> BinaryHistory {
    let mut steps = h.steps.clone();
    let mut i = steps.len();
    while i > 0 {
        i -= 1;
        let mut fewer = steps.clone();
        fewer.remove(i);
        let trial = BinaryHistory {
            steps: fewer.clone(),
            model: h.model.clone(),
            seed: h.seed,
            hooks: h.hooks,
            listener: h.listener,
        };
        if !run_binary(&trial, smtp, &mut Stats::default())
            .await
            .is_empty()
        {
            steps = fewer;
        }
    }
    BinaryHistory {
        steps,
        model: h.model.clone(),
        seed: h.seed,
        hooks: h.hooks,
        listener: h.listener,
    }
}

async fn binary_shard(shard: u64) {
    let total = env_u64("EXPLORE_BINARY_HISTORIES").unwrap_or(DEFAULT_BINARY_HISTORIES);
    let first = env_u64("EXPLORE_BINARY_FIRST").unwrap_or(0);
    let smtp = Inbox::start(0);
    let mut stats = Stats::default();
    let mut i = first + shard;
    while i < first + total {
        let h = BinaryHistory::generate(BINARY_SEEDS + i);
        let bad = run_binary(&h, &smtp, &mut stats).await;
        if !bad.is_empty() {
            let short = shrink_binary(&h, &smtp).await;
            panic!(
                "explore: binary seed {seed} broke {n} invariant(s):\n  {bad}\n\n{h}\n\
                 replay: EXPLORE_BINARY_SEED={seed} cargo test --test it explore::replay -- --nocapture\n\
                 shortened to {k} of {all} steps (still fails):\n{short}",
                seed = h.seed,
                n = bad.len(),
                bad = bad.join("\n  "),
                k = short.steps.len(),
                all = h.steps.len(),
            );
        }
        i += BINARY_SHARDS;
    }
    stats.print(total.saturating_sub(shard).div_ceil(BINARY_SHARDS));
}

macro_rules! binary_shards {
    ($($name:ident = $n:expr),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            binary_shard($n).await;
        }
    )*};
}
binary_shards!(binary_0 = 0, binary_1 = 1, binary_2 = 2, binary_3 = 3);

macro_rules! shards {
    ($($name:ident = $n:expr),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            shard($n).await;
        }
    )*};
}
shards!(
    shard_0 = 0,
    shard_1 = 1,
    shard_2 = 2,
    shard_3 = 3,
    shard_4 = 4,
    shard_5 = 5,
    shard_6 = 6,
    shard_7 = 7
);

/// `EXPLORE_SEED=N` (and `EXPLORE_KEEP=i,j,...`) replays one history and prints it,
/// `EXPLORE_BINARY_SEED=N` one binary history; without, every seed that ever failed is
/// replayed. `EXPLORE_LOG=1` shows the agent's log (`RUST_LOG` filters it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay() {
    if std::env::var_os("EXPLORE_LOG").is_some() {
        vps_snapshot_agent::logging::init(vps_snapshot_agent::cli::LogFormat::Text, 1, 0, false);
    }
    let smtp = Inbox::start(0);
    if let Some(seed) = env_u64("EXPLORE_BINARY_SEED") {
        let h = BinaryHistory::generate(seed);
        println!("{h}");
        let mut stats = Stats::default();
        let bad = run_binary(&h, &smtp, &mut stats).await;
        stats.print(1);
        assert!(
            bad.is_empty(),
            "binary seed {seed}:\n  {}",
            bad.join("\n  ")
        );
        return;
    }
    let seeds: Vec<u64> = match env_u64("EXPLORE_SEED") {
        Some(seed) => vec![seed],
        None => REGRESSION_SEEDS.to_vec(),
    };
    for seed in seeds {
        // Regression seeds replay exactly the history they failed with (before edge
        // events and peers existed).
        let mut history = if REGRESSION_SEEDS.contains(&seed) {
            let mut h = History::base(seed);
            h.model.peer = false;
            h
        } else {
            History::generate(seed)
        };
        if let Ok(keep) = std::env::var("EXPLORE_KEEP") {
            let keep: Vec<usize> = keep
                .split(',')
                .filter_map(|i| i.trim().parse().ok())
                .collect();
            history = history.only(&keep);
        }
        println!("{history}");
        let mut stats = Stats::default();
        let bad = run(&history, &smtp, &mut stats).await;
        stats.print(1);
        assert!(bad.is_empty(), "seed {seed}:\n  {}", bad.join("\n  "));
    }
}

/// A seed always draws the same installation and events, and a valid config.
#[test]
fn a_seed_always_draws_the_same_history() {
    for seed in [0, 1, 7, 12_345] {
        let (a, b) = (History::generate(seed), History::generate(seed));
        assert_eq!(a.events, b.events);
        assert_eq!(a.model.jobs, b.model.jobs);
        assert!(a.model.valid(), "{a}");
    }
}
