//! `agent run`: the daemon. Each job's next fire time is computed here (DST-correct, see
//! [`crate::schedule`]) and armed as a **one-shot** on a [`Timer`] — tokio-cron-scheduler in
//! production — then re-armed after it fires. This sidesteps the scheduler's known
//! problems with time-zone jobs across DST changes and with repeating jobs that stop
//! firing. Running jobs are tracked here (a job still running when its next time comes is
//! not started twice), concurrency is capped, missed fires are caught up once, SIGHUP
//! reloads, SIGTERM drains.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use crate::alert::{self, Kind};
use crate::clock::SharedClock;
use crate::config::{JobSettings, Settings};
use crate::db::{Database, RunTrigger};
use crate::mail::Mailer;
use crate::run::Runner;
use crate::schedule;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The soonest next fire has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The job it was armed for (others due at the same time run with it).
    pub job: String,
    pub at: DateTime<Utc>,
    /// Fires armed before the last reload are ignored.
    pub generation: u64,
}

/// Delivers each armed [`Fire`] on a channel at its time.
pub trait Timer: Send + Sync + 'static {
    /// Arms `fire`, replacing whatever was armed before.
    fn arm(&self, fire: Fire, tx: mpsc::UnboundedSender<Fire>)
    -> BoxFuture<'_, anyhow::Result<()>>;
    fn disarm_all(&self) -> BoxFuture<'_, ()>;
}

/// A one-shot job on tokio-cron-scheduler.
pub struct CronTimer {
    sched: tokio_cron_scheduler::JobScheduler,
    armed: Mutex<Option<uuid::Uuid>>,
}

impl CronTimer {
    pub async fn start() -> anyhow::Result<Self> {
        let sched = tokio_cron_scheduler::JobScheduler::new().await?;
        sched.start().await?;
        Ok(Self {
            sched,
            armed: Mutex::new(None),
        })
    }
}

impl Timer for CronTimer {
    fn arm(
        &self,
        fire: Fire,
        tx: mpsc::UnboundedSender<Fire>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let delay = (fire.at - Utc::now()).to_std().unwrap_or_default();
            let instant = std::time::Instant::now() + delay;
            let job =
                tokio_cron_scheduler::Job::new_one_shot_at_instant_async(instant, move |_, _| {
                    let (tx, fire) = (tx.clone(), fire.clone());
                    Box::pin(async move {
                        // The scheduler keeps whole seconds and can fire up to a second
                        // early: wait out the rest, so a job never starts before its time.
                        if let Ok(early) = (fire.at - Utc::now()).to_std() {
                            tokio::time::sleep(early).await;
                        }
                        let _ = tx.send(fire);
                    })
                })?;
            let id = self.sched.add(job).await?;
            let old = self
                .armed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(id);
            if let Some(old) = old {
                let _ = self.sched.remove(&old).await;
            }
            Ok(())
        })
    }

    fn disarm_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let old = self.armed.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(id) = old {
                let _ = self.sched.remove(&id).await;
            }
        })
    }
}

/// A timer on a [`crate::clock::Clock`]: with tokio's paused time, tests cover days of
/// schedule in milliseconds, in order.
pub struct ClockTimer {
    clock: SharedClock,
    armed: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ClockTimer {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            armed: Mutex::new(None),
        }
    }
}

impl Timer for ClockTimer {
    fn arm(
        &self,
        fire: Fire,
        tx: mpsc::UnboundedSender<Fire>,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        let clock = self.clock.clone();
        let handle = tokio::spawn(async move {
            let wait = (fire.at - clock.now()).to_std().unwrap_or_default();
            clock.sleep(wait).await;
            let _ = tx.send(fire);
        });
        if let Some(old) = self
            .armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(handle)
        {
            old.abort();
        }
        Box::pin(async { Ok(()) })
    }

    fn disarm_all(&self) -> BoxFuture<'_, ()> {
        if let Some(h) = self.armed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
        Box::pin(async {})
    }
}

/// What runs a job when it fires (the real [`Runner`], or a recorder in scheduler tests).
pub trait Executor: Send + Sync + 'static {
    fn run(
        &self,
        job: JobSettings,
        trigger: RunTrigger,
        scheduled_for: DateTime<Utc>,
    ) -> BoxFuture<'static, ()>;
    /// Finishes runs a dead process left `running` (see [`Runner::resume_interrupted`]).
    fn resume(&self, jobs: Vec<JobSettings>) -> BoxFuture<'static, ()>;
}

impl Executor for Runner {
    fn run(
        &self,
        job: JobSettings,
        trigger: RunTrigger,
        scheduled_for: DateTime<Utc>,
    ) -> BoxFuture<'static, ()> {
        let runner = self.clone();
        Box::pin(async move {
            if let Err(e) = runner.run_job(&job, trigger, Some(scheduled_for)).await {
                tracing::error!(job = %job.name, "{e}");
            }
        })
    }

    fn resume(&self, jobs: Vec<JobSettings>) -> BoxFuture<'static, ()> {
        let runner = self.clone();
        Box::pin(async move {
            match runner.resume_interrupted(&jobs).await {
                Ok(done) => {
                    for o in done {
                        tracing::info!(run = o.run_id, job = %o.job, status = %o.status, "finished an interrupted run");
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        })
    }
}

/// Messages to the daemon loop (from signals, or from tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Reload,
    Stop,
}

/// The parts a configuration determines, rebuilt on reload.
pub struct Services {
    pub settings: Settings,
    pub executor: Arc<dyn Executor>,
    pub mailer: Option<Arc<Mailer>>,
}

pub type Reload = Box<dyn Fn() -> Result<Services, anyhow::Error> + Send + Sync>;

pub struct Daemon {
    pub services: Services,
    pub db: Database,
    pub clock: SharedClock,
    pub timer: Arc<dyn Timer>,
    /// How long SIGTERM waits for running jobs before leaving them for resumption.
    pub grace: Duration,
    /// How often alert delivery and resumption run.
    pub check_every: Duration,
    /// How often jobs without a recent success are looked for (stale limits are hours).
    pub stale_every: Duration,
    pub reload: Reload,
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// Builds the services a configuration calls for (the reload path of `agent run`).
pub fn services_for(
    settings: Settings,
    db: &Database,
    clock: &SharedClock,
) -> anyhow::Result<Services> {
    let token = settings.api.token()?;
    let client = crate::api::Client::new(&settings.api, token, clock.clone())?;
    let runner = Runner::from_settings(&settings, db.clone(), client, clock.clone());
    let mailer =
        Mailer::from_settings(settings.email.as_ref(), db.clone(), clock.clone())?.map(Arc::new);
    Ok(Services {
        settings,
        executor: Arc::new(runner),
        mailer,
    })
}

struct Loop {
    fires_tx: mpsc::UnboundedSender<Fire>,
    done_tx: mpsc::UnboundedSender<String>,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    running: HashSet<String>,
    next: HashMap<String, DateTime<Utc>>,
    generation: u64,
    started: DateTime<Utc>,
}

impl Daemon {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Computes `job`'s next fire strictly after `after` into the table of next fires.
    fn plan_next(&self, lp: &mut Loop, job: &JobSettings, after: DateTime<Utc>) {
        match schedule::next_fire(job, after) {
            Some(at) => {
                lp.next.insert(job.name.clone(), at);
            }
            None => {
                lp.next.remove(&job.name);
                tracing::warn!(job = %job.name, "the schedule never fires again");
            }
        }
    }

    /// Arms the timer for the soonest next fire only: one pending one-shot however many
    /// jobs there are (tokio-cron-scheduler walks all its jobs on every tick).
    async fn arm_soonest(&self, lp: &mut Loop) {
        let Some((job, at)) = lp.next.iter().min_by_key(|(_, t)| **t) else {
            return;
        };
        let fire = Fire {
            job: job.clone(),
            at: *at,
            generation: lp.generation,
        };
        if let Err(e) = self.timer.arm(fire, lp.fires_tx.clone()).await {
            tracing::error!("cannot arm the next run: {e}");
        }
    }

    async fn arm_all(&self, lp: &mut Loop) {
        let now = self.now();
        lp.next.clear();
        for job in self.services.settings.jobs.clone() {
            self.plan_next(lp, &job, now);
        }
        self.arm_soonest(lp).await;
    }

    fn start_run(&self, lp: &mut Loop, job: JobSettings, trigger: RunTrigger, at: DateTime<Utc>) {
        if !lp.running.insert(job.name.clone()) {
            tracing::warn!(job = %job.name, %at, "skipped: the previous run of this job is still going");
            return;
        }
        let exec = self.services.executor.clone();
        let permits = lp.permits.clone();
        let done = lp.done_tx.clone();
        lp.tracker.spawn(async move {
            let name = job.name.clone();
            if let Ok(_permit) = permits.acquire_owned().await {
                exec.run(job, trigger, at).await;
            }
            let _ = done.send(name);
        });
    }

    /// Runs each job whose latest fire was missed while the agent was down, once: only
    /// within `catch_up`, only if no run of the job started since that fire, only for a
    /// job that has run before, and for a maintenance-window job only before the window.
    async fn catch_up(&self, lp: &mut Loop) {
        let now = self.now();
        for job in self.services.settings.jobs.clone() {
            let Some(limit) = job.catch_up else { continue };
            let Some(prev) = schedule::previous_fire(&job, now) else {
                continue;
            };
            if (now - prev).to_std().unwrap_or_default() > limit {
                continue;
            }
            if schedule::window_for_run(&job, Some(prev), now).is_some_and(|opens| now >= opens) {
                continue;
            }
            match (
                self.db.has_run_since(&job.name, prev).await,
                self.db.last_run(&job.name).await,
            ) {
                (Ok(false), Ok(Some(_))) => {
                    tracing::info!(job = %job.name, missed = %prev, "catching up a run missed while the agent was down");
                    self.start_run(lp, job, RunTrigger::CatchUp, prev);
                }
                (Err(e), _) | (_, Err(e)) => tracing::error!("{e}"),
                _ => {}
            }
        }
    }

    fn status_line(&self, lp: &Loop) -> String {
        let next = lp.next.iter().min_by_key(|(_, t)| **t);
        let running = lp.running.len();
        match next {
            Some((job, t)) => format!(
                "next: {job} at {}; {running} running",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => format!("no job scheduled; {running} running"),
        }
    }

    /// Alerts for jobs without a success for `stale_after` (once per stale spell).
    async fn stale_check(&self, lp: &Loop) {
        if self.services.mailer.is_none() {
            return;
        }
        let now = self.now();
        for job in &self.services.settings.jobs {
            let last = match self.db.last_success(&job.name).await {
                Ok(r) => r.and_then(|r| r.finished_at),
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
            };
            let since = last.unwrap_or(lp.started);
            let limit = schedule::stale_after(job, now);
            if (now - since).to_std().unwrap_or_default() <= limit {
                continue;
            }
            match self
                .db
                .last_alert_at(&job.name, &[Kind::Stale.as_str()])
                .await
            {
                Ok(Some(t)) if t > since => continue,
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
                _ => {}
            }
            let text = format!(
                "Job {} has had no successful snapshot for {} (since {}).\n\
                 Check `agent status` and `agent history --job {}`; is the agent running and the schedule right?",
                job.name,
                alert::fmt_age(now - since),
                last.map_or("the agent started".to_string(), alert::fmt_time),
                job.name
            );
            tracing::warn!(job = %job.name, "stale: no success for {}", alert::fmt_age(now - since));
            let a = alert::notice(Kind::Stale, &job.name, job.server_id, None, &text, now);
            if let Err(e) = self.db.queue_alert(&a).await {
                tracing::error!("{e}");
            }
        }
    }

    fn reload(&mut self) -> Result<(), anyhow::Error> {
        let services = (self.reload)()?;
        self.services = services;
        Ok(())
    }

    /// Runs until `control` says stop (or closes).
    pub async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> anyhow::Result<()> {
        let (fires_tx, mut fires) = mpsc::unbounded_channel();
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let mut lp = Loop {
            fires_tx,
            done_tx,
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(
                self.services.settings.api.max_concurrent_jobs,
            )),
            running: HashSet::new(),
            next: HashMap::new(),
            generation: 0,
            started: self.now(),
        };
        self.catch_up(&mut lp).await;
        self.arm_all(&mut lp).await;
        tracing::info!(
            jobs = self.services.settings.jobs.len(),
            "scheduled; {}",
            self.status_line(&lp)
        );
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&self.status_line(&lp)),
        ]);

        let mut usec = 0;
        let watchdog_every =
            sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        let mut checks = tokio::time::interval(self.check_every);
        let mut delivery: Option<tokio::task::JoinHandle<()>> = None;
        let mut last_stale_check = None;
        // Resumption runs at start and again on every check: a run whose owner cannot be
        // told dead yet (its lease still runs) is picked up once the lease lapses.
        let mut resuming = Some(tokio::spawn(
            self.services
                .executor
                .resume(self.services.settings.jobs.clone()),
        ));
        loop {
            tokio::select! {
                Some(fire) = fires.recv() => {
                    if fire.generation != lp.generation {
                        continue;
                    }
                    // Every job due by now runs, each for the fire time it was due at.
                    let now = self.now().max(fire.at);
                    let mut due: Vec<(String, DateTime<Utc>)> = lp
                        .next
                        .iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(j, t)| (j.clone(), *t))
                        .collect();
                    due.sort_by_key(|(_, t)| *t);
                    for (name, at) in due {
                        let Some(job) = self.services.settings.job(&name).cloned() else {
                            lp.next.remove(&name);
                            continue;
                        };
                        self.plan_next(&mut lp, &job, at.max(now));
                        self.start_run(&mut lp, job, RunTrigger::Schedule, at);
                    }
                    self.arm_soonest(&mut lp).await;
                    notify(&[sd_notify::NotifyState::Status(&self.status_line(&lp))]);
                }
                Some(name) = done.recv() => {
                    lp.running.remove(&name);
                }
                c = control.recv() => match c {
                    Some(Control::Reload) => {
                        notify(&[sd_notify::NotifyState::Reloading]);
                        match self.reload() {
                            Ok(()) => {
                                lp.generation += 1;
                                self.timer.disarm_all().await;
                                lp.permits = Arc::new(Semaphore::new(self.services.settings.api.max_concurrent_jobs));
                                self.arm_all(&mut lp).await;
                                tracing::info!(jobs = self.services.settings.jobs.len(), "configuration reloaded; {}", self.status_line(&lp));
                            }
                            Err(e) => tracing::error!("reload failed, keeping the running configuration: {}", crate::run::chain(&e)),
                        }
                        notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&self.status_line(&lp))]);
                    }
                    Some(Control::Stop) | None => break,
                },
                _ = watchdog.tick(), if watchdog_every.is_some() => {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
                _ = checks.tick() => {
                    // Stale limits are hours or days: a look every few minutes is plenty.
                    if last_stale_check.is_none_or(|t: tokio::time::Instant| t.elapsed() >= self.stale_every) {
                        last_stale_check = Some(tokio::time::Instant::now());
                        self.stale_check(&lp).await;
                    }
                    if resuming.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                        resuming = Some(tokio::spawn(self.services.executor.resume(self.services.settings.jobs.clone())));
                    }
                    if let Some(m) = &self.services.mailer
                        && delivery.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
                    {
                        let m = m.clone();
                        delivery = Some(tokio::spawn(async move { m.deliver_due().await; }));
                    }
                }
            }
        }

        notify(&[sd_notify::NotifyState::Stopping]);
        self.timer.disarm_all().await;
        lp.tracker.close();
        let left = lp.running.len();
        if left > 0 {
            tracing::info!(
                "stopping: waiting up to {} for {left} running job(s)",
                humantime::format_duration(self.grace)
            );
        }
        if tokio::time::timeout(self.grace, lp.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "stopping with {} job(s) still running; they stay recorded as running and are resumed at the next start",
                lp.running.len()
            );
        }
        if let Some(d) = delivery {
            let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
        }
        Ok(())
    }
}

/// Turns SIGHUP into [`Control::Reload`] and SIGTERM/SIGINT into [`Control::Stop`].
pub fn signal_control() -> anyhow::Result<mpsc::UnboundedReceiver<Control>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
            };
            if tx.send(c).is_err() || c == Control::Stop {
                return;
            }
        }
    });
    Ok(rx)
}
