//! An agent process, simulated inside the test process: a tokio runtime of its own (so a
//! kill drops every task it runs at whatever await point it reached) and a helper OS
//! process that stands for its pid (so the agent's liveness check sees it die).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use vps_snapshot_agent::config::JobSettings;
use vps_snapshot_agent::daemon::{BoxFuture, Control, Executor, Fire, Timer};
use vps_snapshot_agent::db::{Database, Location, RunTrigger};
use vps_snapshot_agent::identity::Owner;
use vps_snapshot_agent::run::Runner;

pub struct Proc {
    /// Taken by [`Proc::kill`]; a process dropped unkilled (a history cut short by its
    /// time limit) is shut down in the background instead.
    rt: Option<tokio::runtime::Runtime>,
    token: std::process::Child,
    pub owner: Owner,
    /// The databases it opened, and the label of their threads: SQLite statements run on
    /// sqlx's own threads, which outlive the runtime, and a statement whose future was
    /// dropped still runs. A kill closes the databases and waits for those threads to
    /// end, so that nothing of the process is written after it.
    dbs: Dbs,
}

/// A process's databases, as [`open`] registers them.
#[derive(Clone)]
pub struct Dbs {
    label: String,
    open: Arc<Mutex<Vec<Database>>>,
}

/// Opens the database for a process, registered so that its kill can drain it.
pub async fn open(dbs: &Dbs, location: &Location) -> Option<Database> {
    let db = super::store::open_for(location, &dbs.label).await.ok()?;
    dbs.open.lock().unwrap().push(db.clone());
    Some(db)
}

/// Whether a thread of this process whose name starts with `label-` still runs.
fn threads_named(label: &str) -> bool {
    let prefix = format!("{label}-");
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.starts_with(&prefix))
        })
}

/// When each simulated process was killed (Unix ms, real time), by owner: what a
/// takeover of its runs is checked against.
static KILLED: std::sync::LazyLock<Mutex<std::collections::HashMap<String, i64>>> =
    std::sync::LazyLock::new(Mutex::default);

/// When the process of `owner` was killed (Unix ms), if it was.
pub fn killed_at(owner: &str) -> Option<i64> {
    KILLED.lock().unwrap().get(owner).copied()
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.mark_killed();
        let _ = self.token.kill();
        let _ = self.token.wait();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Proc {
    /// A new process; its threads draw random numbers from `seed`.
    pub fn start(seed: u64) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .on_thread_start(move || fastrand::seed(seed))
            .build()
            .unwrap();
        let token = std::process::Command::new("sleep")
            .arg("3600")
            .spawn()
            .unwrap();
        let owner = Owner::of_process(token.id());
        let dbs = Dbs {
            label: format!("p{}", token.id()),
            open: Arc::default(),
        };
        Self {
            rt: Some(rt),
            token,
            owner,
            dbs,
        }
    }

    /// The pid that stands for it.
    pub fn pid(&self) -> u32 {
        self.token.id()
    }

    /// Notes the moment it dies, just before it does.
    fn mark_killed(&self) {
        let now = Utc::now().timestamp_millis();
        KILLED
            .lock()
            .unwrap()
            .entry(self.owner.as_str().to_string())
            .or_insert(now);
    }

    /// Where the process registers the databases it opens (see [`open`]).
    pub fn dbs(&self) -> Dbs {
        self.dbs.clone()
    }

    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.rt {
            Some(rt) => rt.spawn(f),
            None => unreachable!("a killed process spawns nothing"),
        }
    }

    /// SIGKILL: every task dropped where it stands, the pid gone, and no statement of
    /// it committed afterwards.
    pub async fn kill(mut self) {
        self.mark_killed();
        let _ = self.token.kill();
        let _ = self.token.wait();
        if let Some(rt) = self.rt.take() {
            let _ =
                tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(2)))
                    .await;
        }
        let dbs: Vec<Database> = std::mem::take(&mut *self.dbs.open.lock().unwrap());
        for db in dbs {
            let _ = tokio::time::timeout(Duration::from_secs(2), db.close()).await;
        }
        for _ in 0..5_000 {
            if !threads_named(&self.dbs.label) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "the database threads of a killed process ({}) never ended",
            self.dbs.label
        );
    }
}

/// The daemon's timer, fired by the harness: one pending fire at a time.
#[derive(Default)]
pub struct ManualTimer {
    armed: Mutex<Option<(Fire, mpsc::UnboundedSender<Fire>)>>,
    /// Bumped on every arm: the daemon has dealt with the previous fire.
    pub arms: AtomicUsize,
}

impl ManualTimer {
    /// When the armed fire is due, if one is.
    pub fn due(&self) -> Option<DateTime<Utc>> {
        self.armed.lock().unwrap().as_ref().map(|(f, _)| f.at)
    }

    /// Delivers the armed fire.
    pub fn fire(&self) -> bool {
        match self.armed.lock().unwrap().take() {
            Some((fire, tx)) => tx.send(fire).is_ok(),
            None => false,
        }
    }
}

impl Timer for ManualTimer {
    fn arm(
        &self,
        fire: Fire,
        tx: mpsc::UnboundedSender<Fire>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        *self.armed.lock().unwrap() = Some((fire, tx));
        self.arms.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }

    fn disarm_all(&self) -> BoxFuture<'_, ()> {
        *self.armed.lock().unwrap() = None;
        Box::pin(async {})
    }
}

/// The real runner, counting the runs in flight so the harness knows when the daemon is
/// quiet.
pub struct Counting {
    pub runner: Runner,
    pub active: Arc<AtomicUsize>,
}

impl Executor for Counting {
    fn run(
        &self,
        job: JobSettings,
        trigger: RunTrigger,
        at: DateTime<Utc>,
        again: bool,
    ) -> BoxFuture<'static, ()> {
        let active = self.active.clone();
        active.fetch_add(1, Ordering::SeqCst);
        let run = Executor::run(&self.runner, job, trigger, at, again);
        Box::pin(async move {
            run.await;
            active.fetch_sub(1, Ordering::SeqCst);
        })
    }

    fn resume(&self, jobs: Vec<JobSettings>) -> BoxFuture<'static, ()> {
        let active = self.active.clone();
        active.fetch_add(1, Ordering::SeqCst);
        let resume = Executor::resume(&self.runner, jobs);
        Box::pin(async move {
            resume.await;
            active.fetch_sub(1, Ordering::SeqCst);
        })
    }
}

/// A daemon process and the handles the harness drives it with.
pub struct DaemonProc {
    pub proc: Proc,
    pub control: mpsc::UnboundedSender<Control>,
    pub timer: Arc<ManualTimer>,
    pub active: Arc<AtomicUsize>,
    pub task: tokio::task::JoinHandle<()>,
}

impl DaemonProc {
    /// Waits until the daemon has dealt with its last fire and no run of it is in flight
    /// (bounded: a run waiting out another's lock may take seconds); whether it did.
    pub async fn quiet(&self, arms_before: usize) -> bool {
        let mut still = 0;
        for _ in 0..20_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let armed =
                self.timer.arms.load(Ordering::SeqCst) > arms_before || self.task.is_finished();
            if armed && self.active.load(Ordering::SeqCst) == 0 {
                still += 1;
                if still >= 5 {
                    return true;
                }
            } else {
                still = 0;
            }
        }
        false
    }
}
