//! Seeded histories: a short life of one installation, drawn from one seed. The same seed
//! always draws the same installation and the same events; what they do is up to the
//! agent.

use std::fmt;

use fastrand::Rng;
use vps_snapshot_agent::domain::ServerId;

/// The servers a history can use.
pub const SERVERS: [ServerId; 4] = [
    ServerId::new(11),
    ServerId::new(12),
    ServerId::new(13),
    ServerId::new(14),
];

/// One job as the config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobModel {
    pub name: String,
    pub server: ServerId,
    pub keep_last: u32,
    /// A maintenance-window job (else a schedule).
    pub window: bool,
    /// The minute past each hour it fires (schedule) or its window opens.
    pub minute: u32,
}

/// The configuration a history starts from and edits.
#[derive(Debug, Clone)]
pub struct Model {
    pub jobs: Vec<JobModel>,
    pub max_deletions: u32,
    /// A second daemon on the same database (started with the first, and fired with it;
    /// kills and stops go to the first).
    pub peer: bool,
    /// On PostgreSQL (a schema of its own in `AGENT_TEST_POSTGRES_URL`), not a SQLite file.
    pub postgres: bool,
}

impl Model {
    /// Every server's jobs fit the 4 slots the limit leaves.
    pub fn valid(&self) -> bool {
        SERVERS.iter().all(|s| {
            self.jobs
                .iter()
                .filter(|j| j.server == *s)
                .map(|j| j.keep_last)
                .sum::<u32>()
                <= 4
        }) && !self.jobs.is_empty()
    }

    /// The TOML file for this model, with timings for `pace`; with `receivers` (a base
    /// URL), a webhook channel and a dead-man ping URL per job there, each path secret.
    pub fn render(
        &self,
        db: &str,
        base_url: &str,
        smtp_port: u16,
        pace: Pace,
        receivers: Option<&str>,
    ) -> String {
        let (poll, timeout) = match pace {
            Pace::Virtual => ("2m", "30m"),
            Pace::Real => ("50ms", "5s"),
        };
        let mut t = format!(
            "database = \"{}\"\n[api]\nbase_url = \"{base_url}\"\nrequest_timeout = \"200ms\"\nmax_retries = 2\n\
             [defaults]\npoll_interval = \"{poll}\"\nsnapshot_timeout = \"{timeout}\"\ncatch_up = \"2h\"\nmax_deletions_per_run = {}\n\
             [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp_port}\nsecurity = \"none\"\nfrom = \"agent@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"2s\"\n",
            db, self.max_deletions
        );
        if let Some(r) = receivers {
            t.push_str(&format!(
                "[[notify]]\nkind = \"webhook\"\nurl = \"{r}{HOOK_PATH}\"\ntimeout = \"2s\"\n"
            ));
        }
        for j in &self.jobs {
            let when = match (pace, j.window) {
                (Pace::Virtual, true) => format!(
                    "maintenance_window = \"0 {} */6 * * *\"\nlead = \"45m\"",
                    j.minute
                ),
                (Pace::Virtual, false) => format!("schedule = \"0 {} * * * *\"", j.minute),
                // Real time: fires every few seconds, windows open every ten.
                (Pace::Real, true) => {
                    "maintenance_window = \"*/10 * * * * *\"\nlead = \"3s\"".to_string()
                }
                (Pace::Real, false) => format!("schedule = \"*/{} * * * * *\"", 2 + j.minute % 3),
            };
            t.push_str(&format!(
                "[[jobs]]\nname = \"{}\"\nserver_id = {}\n{when}\nkeep_last = {}\n",
                j.name, j.server, j.keep_last
            ));
            if let Some(r) = receivers {
                t.push_str(&format!("ping_url = \"{r}{}\"\n", ping_path(&j.name)));
            }
        }
        t
    }
}

/// The webhook channel's path: the secret part of its URL.
pub const HOOK_PATH: &str = "/hooks/T0EXPLORE/B0EXPLORE/whk7Qm2Zp9Lx4Vb8N3cR";

/// A job's check, as Healthchecks addresses it: by a key in the path.
pub fn ping_path(job: &str) -> String {
    format!("/ping/5f0e8a1c-3b2d-4e6f-9a7b-{:012x}", fxhash(job))
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) & 0xffff_ffff_ffff
}

impl Model {
    /// [`Model::render`] with no receivers (the binary histories).
    pub fn render_without_receivers(
        &self,
        db: &str,
        base_url: &str,
        smtp_port: u16,
        pace: Pace,
    ) -> String {
        self.render(db, base_url, smtp_port, pace, None)
    }
}

/// Whose clock a history runs on: the simulator's virtual one (in process), or the
/// wall clock (through the binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    Virtual,
    Real,
}

/// A kill point: the `skip`-th request after the next is held (carried out first or
/// not) while its sender is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    pub skip: u32,
    pub carry_out: bool,
}

/// A fault from the simulator's menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPick {
    Status5xx(u16),
    RateLimited,
    DropBefore,
    DropAfter,
    Slow,
    LandLate,
    Truncated,
    Mistyped,
    EchoHeaders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpPick {
    List,
    Create,
    Delete,
    Restore,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditPick {
    /// Rewrite the same values (a reload that changes nothing).
    Keep,
    Rename,
    Move,
    Remove,
    KeepLast,
}

/// What a real API's listing does now and then ("Safety, third pass").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlitchPick {
    /// The n-th snapshot listed twice (a paging glitch).
    Duplicate(u32),
    /// A snapshot of a server no job has, in every server's listing.
    Stranger,
    /// An item whose `created_at` cannot be read.
    Unreadable,
    /// The n-th snapshot copied, name and description (its mark) alike.
    Copy(u32),
    /// New snapshots get ids near and above 2^63.
    BigIds,
}

/// What a restore is asked for, besides a completed snapshot ([`Event::Restore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OddTarget {
    /// A snapshot made by hand that is still in progress.
    InProgress,
    /// One that failed.
    Failed,
    /// An id no snapshot has.
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The daemon's next scheduled fire comes (time moves to it).
    Fire(Option<Kill>),
    /// `agent run-once` for every job (`job: None`) or one.
    RunOnce {
        job: Option<u32>,
        kill: Option<Kill>,
    },
    /// Two `run-once` started at once; the first may be killed.
    TwoRunOnces(Option<Kill>),
    /// A `run-once` beside the daemon's next fire; the run-once may be killed.
    RunOnceBesideFire(Option<Kill>),
    StartDaemon,
    /// SIGTERM to the daemon, right after its next fire started.
    TermDaemonMidFire,
    TermDaemon,
    KillDaemon,
    /// Time passes (minutes).
    Advance(u32),
    Fault {
        op: OpPick,
        fault: FaultPick,
        times: u32,
    },
    ClearFaults,
    /// A server's snapshots start failing, sticking, or behave again (0, 1, 2).
    Mode {
        server: ServerId,
        mode: u8,
    },
    /// Someone deletes a snapshot (the n-th listed) in the panel.
    DeleteByHand(u32),
    /// Someone makes a snapshot by hand: named like a job's (`look_alike`) or not.
    AddByHand {
        server: ServerId,
        look_alike: bool,
    },
    Restore(u32),
    Pin(u32),
    Unpin(u32),
    Edit(EditPick, u32),
    SmtpDown,
    SmtpUp,
    /// The API's listings glitch from now until the faults are cleared.
    Glitch(GlitchPick),
    /// A restore of a target that cannot be restored, on server (index) `n`.
    RestoreOdd(OddTarget, u32),
    /// The daemon is killed and the box stays down this many hours.
    Downtime(u32),
    /// The webhook channel and the ping receiver go down, or come back.
    ReceiversDown,
    ReceiversUp,
    /// They answer 404 repeating the request's path (the secret part of the URL).
    ReceiversEcho,
    /// The wall clock steps by this many minutes (back when negative) with whatever runs
    /// running: NTP, an operator's `date -s`.
    ClockStep(i32),
    /// The box sleeps this many hours: monotonic time stops, the wall clock jumps.
    Suspend(u32),
    /// The next this many reads of `/proc` fail for every process of the history, alive
    /// or gone (out of descriptors): liveness cannot be told.
    ProcUnreadable(u32),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kill = |k: &Option<Kill>| match k {
            None => String::new(),
            Some(k) => format!(
                ", killed at request {} ({})",
                k.skip + 1,
                if k.carry_out {
                    "carried out"
                } else {
                    "not carried out"
                }
            ),
        };
        match self {
            Event::Fire(k) => write!(f, "scheduled fire{}", kill(k)),
            Event::RunOnce { job, kill: k } => match job {
                None => write!(f, "run-once{}", kill(k)),
                Some(j) => write!(f, "run-once --job #{j}{}", kill(k)),
            },
            Event::TwoRunOnces(k) => write!(f, "two run-once at once{}", kill(k)),
            Event::RunOnceBesideFire(k) => write!(f, "run-once beside a scheduled fire{}", kill(k)),
            other => write!(f, "{other:?}"),
        }
    }
}

/// A history: where it starts and what happens.
#[derive(Debug, Clone)]
pub struct History {
    pub seed: u64,
    pub model: Model,
    pub events: Vec<Event>,
}

fn kill(rng: &mut Rng) -> Option<Kill> {
    (rng.u8(..10) < 3).then(|| Kill {
        skip: rng.u32(0..12),
        carry_out: rng.bool(),
    })
}

fn fault(rng: &mut Rng) -> Event {
    let fault = match rng.u8(..9) {
        0 => FaultPick::Status5xx([500, 502, 503, 504][rng.usize(..4)]),
        1 => FaultPick::RateLimited,
        2 => FaultPick::DropBefore,
        3 => FaultPick::DropAfter,
        4 => FaultPick::Slow,
        5 => FaultPick::LandLate,
        6 => FaultPick::Truncated,
        7 => FaultPick::Mistyped,
        _ => FaultPick::EchoHeaders,
    };
    let op = if fault == FaultPick::LandLate {
        OpPick::Create
    } else {
        [
            OpPick::List,
            OpPick::Create,
            OpPick::Delete,
            OpPick::Restore,
            OpPick::Any,
        ][rng.usize(..5)]
    };
    Event::Fault {
        op,
        fault,
        times: rng.u32(1..4),
    }
}

fn event(rng: &mut Rng) -> Event {
    match rng.u32(..100) {
        0..=21 => Event::Fire(kill(rng)),
        22..=35 => Event::RunOnce {
            job: rng.bool().then(|| rng.u32(..6)),
            kill: kill(rng),
        },
        36..=39 => Event::TwoRunOnces(kill(rng)),
        40..=43 => Event::RunOnceBesideFire(kill(rng)),
        44..=47 => Event::StartDaemon,
        48..=49 => Event::TermDaemonMidFire,
        50 => Event::TermDaemon,
        51..=52 => Event::KillDaemon,
        53..=59 => Event::Advance(rng.u32(1..600)),
        60..=71 => fault(rng),
        72..=73 => Event::ClearFaults,
        74..=75 => Event::Mode {
            server: SERVERS[rng.usize(..4)],
            mode: rng.u8(..3),
        },
        76..=78 => Event::DeleteByHand(rng.u32(..)),
        79..=81 => Event::AddByHand {
            server: SERVERS[rng.usize(..4)],
            look_alike: rng.bool(),
        },
        82..=83 => Event::Restore(rng.u32(..)),
        84..=86 => Event::Pin(rng.u32(..)),
        87..=88 => Event::Unpin(rng.u32(..)),
        89..=94 => {
            let pick = [
                EditPick::Keep,
                EditPick::Rename,
                EditPick::Move,
                EditPick::Remove,
                EditPick::KeepLast,
            ][rng.usize(..5)];
            Event::Edit(pick, rng.u32(..))
        }
        95..=97 => Event::SmtpDown,
        _ => Event::SmtpUp,
    }
}

/// One event of what the outside world does at the agent's edges, from a stream of its
/// own (see [`History::generate`]).
fn edge(rng: &mut Rng) -> Event {
    match rng.u32(..100) {
        0..=13 => Event::Glitch(GlitchPick::Duplicate(rng.u32(..))),
        14..=21 => Event::Glitch(GlitchPick::Stranger),
        22..=29 => Event::Glitch(GlitchPick::Unreadable),
        30..=37 => Event::Glitch(GlitchPick::Copy(rng.u32(..))),
        38..=43 => Event::Glitch(GlitchPick::BigIds),
        44..=63 => Event::RestoreOdd(
            [OddTarget::InProgress, OddTarget::Failed, OddTarget::Missing][rng.usize(..3)],
            rng.u32(..),
        ),
        64..=71 => Event::Downtime([3, 30, 50][rng.usize(..3)]),
        72..=81 => Event::ReceiversDown,
        82..=91 => Event::ReceiversUp,
        _ => Event::ReceiversEcho,
    }
}

/// What the box itself does under the agent: its wall clock steps or it sleeps, `/proc`
/// cannot be read for a while.
fn host(rng: &mut Rng) -> Event {
    match rng.u32(..100) {
        0..=59 => {
            let by = [3, 20, 50, 130, 600][rng.usize(..5)];
            Event::ClockStep(if rng.u8(..3) == 0 { by } else { -by })
        }
        60..=74 => Event::Suspend([1, 9, 30][rng.usize(..3)]),
        _ => Event::ProcUnreadable([1, 4, 40][rng.usize(..3)]),
    }
}

impl History {
    /// The history of `seed`: [`History::base`]'s events, and between them a few from
    /// the edges of the outside world (odd listings, restores that cannot happen, long
    /// downtime, receivers down or echoing), drawn from a stream of their own, and from a
    /// third a few of the host's own (clock steps, suspends, `/proc` unreadable).
    pub fn generate(seed: u64) -> Self {
        let mut h = Self::base(seed);
        let mut rng = Rng::with_seed(seed ^ 0x5851_f42d_4c95_7f2d);
        for _ in 0..rng.usize(1..=4) {
            let at = rng.usize(1..=h.events.len());
            h.events.insert(at, edge(&mut rng));
        }
        // From a third stream, so that every seed keeps the edge events it drew before.
        let mut rng = Rng::with_seed(seed ^ 0x2545_f491_4f6c_dd1d);
        for _ in 0..rng.usize(0..=2) {
            let at = rng.usize(1..=h.events.len());
            h.events.insert(at, host(&mut rng));
        }
        h
    }

    /// The history `seed` drew before edge events existed: what the regression seeds
    /// replay.
    pub fn base(seed: u64) -> Self {
        let mut rng = Rng::with_seed(seed);
        let servers = rng.usize(1..=4);
        let mut jobs: Vec<JobModel> = Vec::new();
        for i in 0..rng.usize(2..=6) {
            let server = SERVERS[rng.usize(..servers)];
            if jobs.iter().filter(|j| j.server == server).count() >= 3 {
                continue;
            }
            jobs.push(JobModel {
                name: format!("job-{i}"),
                server,
                keep_last: 1,
                window: rng.u8(..4) == 0,
                minute: rng.u32(..60),
            });
        }
        let mut model = Model {
            jobs,
            max_deletions: rng.u32(1..=3),
            // From a stream of its own, so that every seed still draws the events it drew
            // before peers existed (the regression seeds replay without one).
            // EXPLORE_PEERS=0 turns them off.
            peer: std::env::var_os("EXPLORE_PEERS").is_none_or(|v| v != "0")
                && Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15).u8(..4) == 0,
            // One in five, from a stream of its own too. Without a PostgreSQL to run on
            // it runs on SQLite, counted as skipped (`crate::needs`); EXPLORE_POSTGRES=0
            // runs every history on SQLite, =1 every one on PostgreSQL.
            postgres: match std::env::var("EXPLORE_POSTGRES").as_deref() {
                Ok("0") => false,
                Ok("1") => true,
                _ => Rng::with_seed(seed ^ 0xbf58_476d_1ce4_e5b9).u8(..10) == 0,
            },
        };
        // Spend what is left of each server's 4 slots at random.
        for _ in 0..4 {
            let i = rng.usize(..model.jobs.len());
            model.jobs[i].keep_last += 1;
            if !model.valid() {
                model.jobs[i].keep_last -= 1;
            }
        }
        let mut events = vec![Event::StartDaemon];
        events.extend((0..rng.usize(6..20)).map(|_| event(&mut rng)));
        History {
            seed,
            model,
            events,
        }
    }

    /// The same history with only the events at `keep` (indices into `events`).
    pub fn only(&self, keep: &[usize]) -> Self {
        History {
            events: keep
                .iter()
                .filter_map(|i| self.events.get(*i).copied())
                .collect(),
            ..self.clone()
        }
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: max_deletions_per_run {}{}{}",
            self.seed,
            self.model.max_deletions,
            if self.model.peer {
                "; two daemons on the database"
            } else {
                ""
            },
            if self.model.postgres {
                "; on PostgreSQL"
            } else {
                ""
            }
        )?;
        for j in &self.model.jobs {
            writeln!(
                f,
                "  {} on server {}: keep_last {}{}",
                j.name,
                j.server,
                j.keep_last,
                if j.window { ", before a window" } else { "" }
            )?;
        }
        for (i, e) in self.events.iter().enumerate() {
            writeln!(f, "  {i:>2}. {e}")?;
        }
        Ok(())
    }
}
