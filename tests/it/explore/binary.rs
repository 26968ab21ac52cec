//! The share of histories that runs through the `agent` binary: real processes on the
//! wall clock, `run-once` and `agent run` started, SIGKILLed, SIGTERMed and SIGHUPed at
//! random moments, against the simulator. Slower, so fewer; they catch what only a real
//! process shows (signals, stdout and stderr, a daemon's own timers).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fastrand::Rng;
use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::domain::{ServerId, SnapshotId};
use vps_snapshot_agent::sim::{Delay, Fault, Mode, SimOptions, SimServer, Simulator};

use super::history::{EditPick, FaultPick, History, Model, OpPick, Pace, SERVERS};
use crate::helpers::{Inbox, TOKEN};
use crate::scene::BIN;
use crate::store::raw;

/// One thing that happens to the installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `agent run-once`, SIGKILLed this many milliseconds in if given.
    RunOnce(Option<u64>),
    /// Two at once, the first SIGKILLed this many milliseconds in if given.
    TwoRunOnces(Option<u64>),
    StartDaemon,
    TermDaemon,
    KillDaemon,
    Wait(u64),
    Fault {
        op: OpPick,
        fault: FaultPick,
        times: u32,
    },
    ClearFaults,
    Mode {
        server: ServerId,
        mode: u8,
    },
    DeleteByHand(u32),
    AddByHand {
        server: ServerId,
        look_alike: bool,
    },
    Pin(u32),
    Unpin(u32),
    Restore(u32),
    /// A config edit, and SIGHUP to the daemon.
    Edit(EditPick, u32),
    SmtpDown,
    SmtpUp,
    /// This many idle connections opened to the daemon's metrics listener from another
    /// address than the one that then asks for `/healthz`, held for a while.
    Flood(u32),
}

/// A history for the binary: the installation of the in-process history of the same seed,
/// and steps of its own.
pub struct BinaryHistory {
    pub seed: u64,
    pub model: Model,
    pub steps: Vec<Step>,
    pub hooks: Option<Hooks>,
    /// The daemon serves `[metrics]` (under a low descriptor limit) and gets floods.
    pub listener: bool,
}

/// The `before` and `after` hooks every job of a binary history runs: they log their
/// phase and run to `hooks.log`; `before` takes `sleep` (a window for kills) and, with
/// `failing`, fails in every third run. With `echo`, both print the API token after that
/// many characters on stdout, and a 10-character piece of it on stderr: a hook that
/// prints its secrets, at any offset of what the agent keeps of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    pub thaw_completed: bool,
    pub snapshot_anyway: bool,
    pub failing: bool,
    pub sleep_ms: u32,
    pub echo: Option<u32>,
}

/// The token as the hook is given it (ROT13, so that no file of the site holds it): the
/// hook turns it back.
fn rot13(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
            _ => c,
        })
        .collect()
}

const HOOK: &str = r#"#!/bin/sh
if [ -n "$4" ]; then
  t=$(printf %s "$4" | tr 'A-Za-z' 'N-ZA-Mn-za-m')
  printf '%s%s\n' "$(head -c "$5" /dev/zero | tr '\0' x)" "$t"
  printf '%s\n' "$t" | cut -c 3-12 >&2
fi
echo "$VPS_SNAPSHOT_PHASE $VPS_SNAPSHOT_RUN_ID" >> "$1"
[ "$VPS_SNAPSHOT_PHASE" = before ] || exit 0
sleep "$2"
[ "$3" = failing ] && [ $((VPS_SNAPSHOT_RUN_ID % 3)) -eq 0 ] && exit 1
exit 0
"#;

impl Hooks {
    /// Two histories in three have hooks (drawn apart from the steps, so that adding
    /// hooks changed no seed's steps).
    fn draw(seed: u64) -> Option<Hooks> {
        let mut rng = Rng::with_seed(seed ^ 0x400c_5000);
        (rng.u32(..3) != 0).then(|| Hooks {
            thaw_completed: rng.bool(),
            snapshot_anyway: rng.bool(),
            failing: rng.bool(),
            sleep_ms: rng.u32(..300),
            echo: rng.bool().then(|| rng.u32(..6_000)),
        })
    }

    /// The keys for `[defaults]`, the script written into `dir`.
    fn keys(&self, dir: &std::path::Path) -> String {
        let script = dir.join("hook.sh");
        if !script.exists() {
            std::fs::write(&script, HOOK).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let log = dir.join("hooks.log");
        let (s, l) = (script.display(), log.display());
        let sleep = format!("{}.{:03}", self.sleep_ms / 1000, self.sleep_ms % 1000);
        let failing = if self.failing { "failing" } else { "-" };
        let echo = match self.echo {
            Some(pad) => format!("\"{}\", \"{pad}\"", rot13(TOKEN)),
            None => "\"\", \"0\"".to_string(),
        };
        format!(
            "before = [[\"{s}\", \"{l}\", \"{sleep}\", \"{failing}\", {echo}]]\n\
             after = [[\"{s}\", \"{l}\", \"0\", \"-\", {echo}]]\n\
             thaw_after = \"{}\"\nbefore_failure = \"{}\"\n",
            if self.thaw_completed {
                "completed"
            } else {
                "created"
            },
            if self.snapshot_anyway {
                "snapshot-anyway"
            } else {
                "skip"
            },
        )
    }
}

impl BinaryHistory {
    pub fn generate(seed: u64) -> Self {
        let model = History::generate(seed).model;
        let mut rng = Rng::with_seed(seed ^ 0xb1a5_ed00);
        let kill = |rng: &mut Rng| rng.bool().then(|| rng.u64(0..400));
        let mut steps = vec![Step::StartDaemon];
        for _ in 0..rng.usize(5..12) {
            steps.push(match rng.u32(..100) {
                0..=19 => Step::RunOnce(kill(&mut rng)),
                20..=27 => Step::TwoRunOnces(kill(&mut rng)),
                28..=33 => Step::StartDaemon,
                34..=37 => Step::TermDaemon,
                38..=42 => Step::KillDaemon,
                43..=54 => Step::Wait(rng.u64(100..2_500)),
                55..=66 => {
                    let picks = [
                        FaultPick::Status5xx([500, 502, 503, 504][rng.usize(..4)]),
                        FaultPick::RateLimited,
                        FaultPick::DropBefore,
                        FaultPick::DropAfter,
                        FaultPick::Slow,
                        FaultPick::LandLate,
                        FaultPick::Truncated,
                        FaultPick::EchoHeaders,
                    ];
                    let fault = picks[rng.usize(..picks.len())];
                    let op = if fault == FaultPick::LandLate {
                        OpPick::Create
                    } else {
                        [OpPick::List, OpPick::Create, OpPick::Delete, OpPick::Any][rng.usize(..4)]
                    };
                    Step::Fault {
                        op,
                        fault,
                        times: rng.u32(1..4),
                    }
                }
                67..=69 => Step::ClearFaults,
                70..=72 => Step::Mode {
                    server: SERVERS[rng.usize(..4)],
                    mode: rng.u8(..3),
                },
                73..=76 => Step::DeleteByHand(rng.u32(..)),
                77..=80 => Step::AddByHand {
                    server: SERVERS[rng.usize(..4)],
                    look_alike: rng.bool(),
                },
                81..=83 => Step::Pin(rng.u32(..)),
                84..=85 => Step::Unpin(rng.u32(..)),
                86..=87 => Step::Restore(rng.u32(..)),
                88..=94 => Step::Edit(
                    [
                        EditPick::Keep,
                        EditPick::Rename,
                        EditPick::Move,
                        EditPick::Remove,
                        EditPick::KeepLast,
                    ][rng.usize(..5)],
                    rng.u32(..),
                ),
                95..=97 => Step::SmtpDown,
                _ => Step::SmtpUp,
            });
        }
        // Drawn apart from the steps, so that adding floods changed no seed's steps.
        let mut rng = Rng::with_seed(seed ^ 0xf100_d000);
        let listener = rng.u8(..3) == 0;
        if listener {
            for _ in 0..rng.usize(1..=2) {
                let at = rng.usize(1..=steps.len());
                steps.insert(at, Step::Flood(rng.u32(100..400)));
            }
        }
        BinaryHistory {
            seed,
            model,
            steps,
            hooks: Hooks::draw(seed),
            listener,
        }
    }
}

impl std::fmt::Display for BinaryHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "binary seed {}: max_deletions_per_run {}{}",
            self.seed,
            self.model.max_deletions,
            if self.model.postgres {
                "; on PostgreSQL"
            } else {
                ""
            }
        )?;
        for j in &self.model.jobs {
            writeln!(
                f,
                "  {} on server {}: keep_last {}",
                j.name, j.server, j.keep_last
            )?;
        }
        if let Some(h) = &self.hooks {
            writeln!(f, "  hooks: {h:?}")?;
        }
        if self.listener {
            writeln!(f, "  metrics listener, {DESCRIPTORS} descriptors")?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {i:>2}. {s:?}")?;
        }
        Ok(())
    }
}

/// The installation a binary history runs against.
pub struct Site {
    pub server: SimServer,
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub store: super::store::Store,
    pub inbox: Inbox,
    smtp_port: u16,
    pub model: Model,
    pub hooks: Option<Hooks>,
    daemon: Option<tokio::process::Child>,
    /// Commands run so far (each writes its output to a file of its own).
    commands: u32,
    /// The daemon's metrics listener, when the history has one.
    listen: Option<std::net::SocketAddr>,
    /// Invariants broken during the history.
    pub broken: Vec<String>,
}

/// A daemon with a listener runs with this few file descriptors: a flood must not take
/// the ones it needs for its database, the API and its answers.
const DESCRIPTORS: u64 = 128;

fn signal(child: &tokio::process::Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to a child process this test started.
        unsafe { libc::kill(pid as i32, sig) };
    }
}

impl Site {
    pub async fn new(h: &BinaryHistory, smtp: (Inbox, u16)) -> Self {
        let server = Simulator::start(
            SimOptions {
                token: TOKEN.into(),
                delay: Delay::Uniform(Duration::from_millis(100), Duration::from_millis(400)),
                seed: h.seed,
                ..SimOptions::default()
            },
            vps_snapshot_agent::clock::system(),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (inbox, smtp_port) = smtp;
        inbox.set_down(false);
        let store = super::store::for_history(h.model.postgres, dir.path(), h.seed).await;
        let mut model = h.model.clone();
        model.postgres = store.on_postgres();
        let site = Site {
            cfg: dir.path().join("config.toml"),
            store,
            server,
            dir,
            inbox,
            smtp_port,
            model,
            hooks: h.hooks,
            daemon: None,
            commands: 0,
            listen: h.listener.then(|| {
                // A free port, asked of the system (the daemon binds it again at start).
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            }),
            broken: Vec::new(),
        };
        site.write_config();
        site
    }

    pub fn sim(&self) -> &Simulator {
        &self.server.sim
    }

    pub fn write_config(&self) {
        let mut text = self.model.render_without_receivers(
            self.store.configured(),
            &self.server.base_url(),
            self.smtp_port,
            Pace::Real,
        );
        if let Some(h) = &self.hooks {
            text = text.replace(
                "[defaults]\n",
                &format!("[defaults]\n{}", h.keys(self.dir.path())),
            );
        }
        if let Some(addr) = self.listen {
            text = text.replace(
                "[email]\n",
                &format!("[metrics]\nlisten = \"{addr}\"\n[email]\n"),
            );
        }
        std::fs::write(&self.cfg, text).unwrap();
    }

    /// Every run whose `before` ran had its `after` run, once; twice only where the
    /// journal says the agent died while it ran (a thaw is at least once, never zero).
    pub async fn hook_violations(&self) -> Vec<String> {
        if self.hooks.is_none() {
            return Vec::new();
        }
        let log = std::fs::read_to_string(self.dir.path().join("hooks.log")).unwrap_or_default();
        let mut seen: std::collections::BTreeMap<String, (u32, u32)> = Default::default();
        for line in log.lines() {
            let Some((phase, run)) = line.split_once(' ') else {
                continue;
            };
            let e = seen.entry(run.to_string()).or_default();
            match phase {
                "before" => e.0 += 1,
                _ => e.1 += 1,
            }
        }
        let db = self.store.open().await;
        let again: Vec<(i64,)> = raw!(
            db,
            sqlx::query_as(
                "SELECT run_id FROM journal WHERE action = 'after' AND outcome LIKE '%again%'"
            ),
            fetch_all
        )
        .unwrap();
        db.close().await;
        let mut bad = Vec::new();
        for (run, (before, after)) in seen {
            let twice_ok = again.iter().any(|(r,)| r.to_string() == run);
            if before > 1 {
                bad.push(format!("run {run} ran before {before} times"));
            }
            if before > 0 && after == 0 {
                bad.push(format!("run {run} ran before and never after"));
            }
            if after > 1 && !(after == 2 && twice_ok) {
                bad.push(format!("run {run} ran after {after} times"));
            }
        }
        bad
    }

    /// `agent ARGS` in the background, its output in a file of the site's.
    fn spawn(&mut self, args: &[&str]) -> tokio::process::Child {
        self.commands += 1;
        let out = std::fs::File::create(self.dir.path().join(format!("out-{}.log", self.commands)))
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = tokio::process::Command::new(BIN);
        if args == ["run"] && self.listen.is_some() {
            // SAFETY: only setrlimit, which is async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let limit = libc::rlimit {
                        rlim_cur: DESCRIPTORS,
                        rlim_max: DESCRIPTORS,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.arg("--config")
            .arg(&self.cfg)
            .args(args)
            .env("AGENT_API__TOKEN", TOKEN)
            .env("RUST_LOG", "vps_snapshot_agent=debug")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// `agent ARGS` to its end (at most a minute).
    pub async fn agent(&mut self, args: &[&str]) {
        let mut child = self.spawn(args);
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    async fn run_once(&mut self, kill_after: Option<u64>) -> tokio::process::Child {
        let mut child = self.spawn(&["run-once"]);
        if let Some(ms) = kill_after {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let _ = child.start_kill();
        }
        child
    }

    async fn wait(mut child: tokio::process::Child) {
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    fn pick(&self, n: u32, completed: bool) -> Option<SnapshotId> {
        let mut all: Vec<_> = SERVERS
            .iter()
            .flat_map(|s| self.sim().snapshots(*s))
            .collect();
        all.retain(|s| !completed || s.status == SnapshotStatus::Completed);
        all.sort_by_key(|s| s.id);
        (!all.is_empty()).then(|| all[n as usize % all.len()].id)
    }

    pub async fn step(&mut self, step: Step) {
        match step {
            Step::RunOnce(kill) => {
                let child = self.run_once(kill).await;
                Self::wait(child).await;
            }
            Step::TwoRunOnces(kill) => {
                let second = self.spawn(&["run-once"]);
                let first = self.run_once(kill).await;
                Self::wait(first).await;
                Self::wait(second).await;
            }
            Step::StartDaemon => {
                if self.daemon.is_none() {
                    self.daemon = Some(self.spawn(&["run"]));
                }
            }
            Step::TermDaemon => {
                if let Some(d) = self.daemon.take() {
                    signal(&d, libc::SIGTERM);
                    Self::wait(d).await;
                }
            }
            Step::KillDaemon => self.kill_daemon().await,
            Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Step::Fault { op, fault, times } => {
                self.sim().inject(Fault::new(
                    super::world::op(op),
                    super::world::fault_kind(fault, Pace::Real),
                    times,
                ));
            }
            Step::ClearFaults => self.sim().clear_faults(),
            Step::Mode { server, mode } => {
                self.sim().set_mode(
                    server,
                    [Mode::Normal, Mode::Fail, Mode::Stuck][usize::from(mode % 3)],
                );
            }
            Step::DeleteByHand(n) => {
                if let Some(id) = self.pick(n, false) {
                    self.sim().delete_external(id);
                }
            }
            Step::AddByHand { server, look_alike } => {
                if self.sim().snapshots(server).len() < 5 {
                    let at = chrono::Utc::now() - chrono::Duration::hours(1);
                    let name = if look_alike {
                        vps_snapshot_agent::snapshot::naming::new_name("job-0", at)
                    } else {
                        format!("by-hand-{}", self.commands)
                    };
                    self.sim().put(server, &name, SnapshotStatus::Completed, at);
                }
            }
            Step::Pin(n) => {
                if let Some(id) = self.pick(n, false) {
                    self.agent(&["pin", &id.to_string()]).await;
                }
            }
            Step::Unpin(n) => {
                if let Some(id) = self.pick(n, false) {
                    self.agent(&["unpin", &id.to_string()]).await;
                }
            }
            Step::Restore(n) => {
                if let Some(id) = self.pick(n, true) {
                    self.agent(&["restore", &id.to_string(), "--yes"]).await;
                }
            }
            Step::Edit(pick, n) => {
                if let Some(m) = super::world::edited(&self.model, pick, n) {
                    self.model = m;
                    self.write_config();
                    if let Some(d) = &self.daemon {
                        signal(d, libc::SIGHUP);
                    }
                }
            }
            Step::SmtpDown => self.inbox.set_down(true),
            Step::SmtpUp => self.inbox.set_down(false),
            Step::Flood(n) => self.flood(n).await,
        }
    }

    /// `n` idle connections from 127.0.0.2 to the running daemon's listener, held for
    /// two seconds; meanwhile `/healthz` from 127.0.0.1 must answer, and afterwards the
    /// daemon must still be there.
    async fn flood(&mut self, n: u32) {
        let Some(addr) = self.listen else { return };
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        if d.try_wait().ok().flatten().is_some() {
            return;
        }
        // The listener is up once it answers (a daemon just started may not be yet).
        if !healthz(addr).await {
            return;
        }
        let mut held = Vec::new();
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            if socket.bind("127.0.0.2:0".parse().unwrap()).is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(500), socket.connect(addr)).await {
                Ok(Ok(c)) => held.push(c),
                _ => break,
            }
        }
        let answered = healthz(addr).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(held);
        let alive = d.try_wait().ok().flatten().is_none();
        if !answered && alive {
            self.broken.push(format!(
                "with {n} idle connections from another address, /healthz did not answer"
            ));
        }
        if !alive {
            self.broken.push(format!(
                "the daemon ended during a flood of {n} connections"
            ));
        }
    }

    pub async fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill().await;
        }
    }
}

/// Whether `GET /healthz` at `addr` answers 200 within five seconds.
async fn healthz(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await.ok()?;
        Some(answer.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ask).await,
        Ok(Some(true))
    )
}
