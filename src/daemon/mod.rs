//! `agent run`: the daemon. Each job's next fire time is computed here (DST-correct, see
//! [`crate::schedule`]) and only the soonest is armed as a one-shot on a [`Timer`]
//! (`timer`: tokio-cron-scheduler in production), then re-armed after it fires. Running
//! jobs are tracked (a job still running when its next time comes is not started twice),
//! concurrency is capped, missed fires are caught up once and stale jobs alerted
//! (`checks`), SIGHUP reloads and SIGTERM drains ([`signals`]), and systemd hears of it
//! all ([`notify`]).

mod checks;
mod drain;
mod executor;
pub mod notify;
mod observability;
pub mod signals;
mod timer;

pub use executor::Executor;
pub use timer::{BoxFuture, ClockTimer, CronTimer, Fire, Timer};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::alert::Outbox;
use crate::clock::SharedClock;
use crate::config::{JobSettings, Settings};
use crate::db::{Database, RunTrigger};
use crate::presence::Presence;
use crate::run::Runner;
use crate::schedule;

/// Messages to the daemon loop (from signals, or from tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Reload,
    /// Runs the periodic checks now, stale check included (tests step the loop with it).
    Check,
    Stop,
}

/// The parts a configuration determines, rebuilt on reload.
pub struct Services {
    pub settings: Settings,
    pub executor: Arc<dyn Executor>,
    pub outbox: Option<Arc<Outbox>>,
    /// Woken when a run queues a ping or an alert: the outbox delivers at once.
    pub kick: Arc<tokio::sync::Notify>,
}

/// Builds the services of a newly read configuration (SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Services, anyhow::Error> + Send + Sync>;

pub struct Daemon {
    pub services: Services,
    pub db: Database,
    pub clock: SharedClock,
    pub timer: Arc<dyn Timer>,
    pub reload: Reload,
}

/// Builds the services a configuration calls for.
pub fn services_for(
    settings: Settings,
    db: &Database,
    clock: &SharedClock,
) -> anyhow::Result<Services> {
    let token = settings.api.token()?;
    let client = crate::api::Client::new(&settings.api, token, clock.clone())?;
    let runner = Runner::from_settings(&settings, db.clone(), client, clock.clone());
    let outbox = Outbox::from_settings(&settings, db.clone(), clock.clone())?.map(Arc::new);
    Ok(Services {
        settings,
        kick: runner.kick.clone(),
        executor: Arc::new(runner),
        outbox,
    })
}

impl Daemon {
    /// The daemon for the configuration file at `path` (read as `settings`), woken by
    /// `timer`; a reload reads the file again.
    pub fn for_config(
        path: &std::path::Path,
        settings: Settings,
        db: Database,
        clock: SharedClock,
        timer: Arc<dyn Timer>,
    ) -> anyhow::Result<Self> {
        let services = services_for(settings, &db, &clock)?;
        let (path, reload_db, reload_clock) = (path.to_path_buf(), db.clone(), clock.clone());
        Ok(Daemon {
            services,
            db,
            clock,
            timer,
            reload: Box::new(move || {
                let settings = Settings::load_logged(&path)?;
                settings.require_jobs()?;
                services_for(settings, &reload_db, &reload_clock)
            }),
        })
    }
}

/// The loop's state.
struct Loop {
    fires_tx: mpsc::UnboundedSender<Fire>,
    done_tx: mpsc::UnboundedSender<String>,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    running: HashSet<String>,
    next: HashMap<String, DateTime<Utc>>,
    /// Fires armed before the last reload carry an older generation and are ignored.
    generation: u64,
    started: DateTime<Utc>,
    /// The daemon's own background work besides runs — resumption, delivery, channel
    /// registration, the textfile — stopped and awaited by [`Daemon::drain`].
    chores: TaskTracker,
    /// The periodic work in flight (at most one of each).
    resuming: Option<JoinHandle<()>>,
    delivery: Option<JoinHandle<()>>,
    /// The alert channels last recorded in the database.
    channels: Option<Vec<String>>,
    /// Something was queued while a delivery was going.
    again: Arc<std::sync::atomic::AtomicBool>,
    last_stale_check: Option<tokio::time::Instant>,
    /// The wall clock went back to before this: fires up to it come round again.
    back_to: Option<DateTime<Utc>>,
}

/// Gives the whole heap pages freed after reading the configuration and dropping the
/// parsed cron expressions back to the system (glibc keeps them otherwise; about 0.6 MiB
/// at 1,000 jobs).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn idle(task: &Option<JoinHandle<()>>) -> bool {
    task.as_ref().is_none_or(JoinHandle::is_finished)
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
            tracing::error!("cannot arm the next run: {}", crate::errors::line(&e));
        }
    }

    async fn arm_all(&self, lp: &mut Loop) {
        let now = self.now();
        lp.next.clear();
        // A disabled job (`enabled = false`) is never armed.
        for job in self.services.settings.jobs.clone() {
            if job.enabled {
                self.plan_next(lp, &job, now);
            }
        }
        self.arm_soonest(lp).await;
    }

    fn start_run(&self, lp: &mut Loop, job: JobSettings, trigger: RunTrigger, at: DateTime<Utc>) {
        if !lp.running.insert(job.name.clone()) {
            tracing::warn!(job = %job.name, %at, "skipped: the previous run of this job is still going");
            return;
        }
        let again = lp.back_to.is_some_and(|t| at <= t);
        let exec = self.services.executor.clone();
        let permits = lp.permits.clone();
        let done = lp.done_tx.clone();
        lp.tracker.spawn(async move {
            let name = job.name.clone();
            if let Ok(_permit) = permits.acquire_owned().await {
                exec.run(job, trigger, at, again).await;
            }
            let _ = done.send(name);
        });
    }

    fn status_line(&self, lp: &Loop) -> String {
        let running = lp.running.len();
        match lp.next.iter().min_by_key(|(_, t)| **t) {
            Some((job, t)) => format!(
                "next: {job} at {}; {running} running",
                crate::human::fmt_time(*t)
            ),
            None => format!("no job scheduled; {running} running"),
        }
    }

    /// Every job due by now runs, each for the fire time it was due at.
    async fn on_fire(&self, lp: &mut Loop, fire: Fire) {
        if fire.generation != lp.generation {
            return;
        }
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
            self.plan_next(lp, &job, at.max(now));
            self.start_run(lp, job, RunTrigger::Schedule, at);
        }
        self.arm_soonest(lp).await;
        notify::send(&[notify::State::Status(&self.status_line(lp))]);
    }

    /// The wall clock stepped (`step`: forward when positive; a suspend counts as forward).
    /// The schedule follows the wall clock, as cron and systemd timers do: the timer is
    /// re-armed from the new time. Forward, the fires skipped over follow the catch-up
    /// rules (the latest one, within `catch_up`); back, the fires come round again, and
    /// each is run again only where its job has run past it since
    /// ([`crate::db::Database::claim_fire_again`]): nothing fires twice at one moment.
    async fn on_clock_step(&self, lp: &mut Loop, step: chrono::Duration) {
        let now = self.now();
        let by = crate::human::fmt_age(step.abs());
        if step < chrono::Duration::zero() {
            let was = now - step;
            lp.back_to = Some(lp.back_to.map_or(was, |t| t.max(was)));
            tracing::warn!(
                "the wall clock went back by {by}; the schedule follows it from {}",
                crate::human::fmt_time(now)
            );
        } else {
            tracing::warn!(
                "the wall clock went forward by {by} (a step or a suspend); fires missed meanwhile follow the catch-up rules"
            );
        }
        lp.generation += 1;
        self.timer.disarm_all().await;
        if step > chrono::Duration::zero() {
            self.catch_up(lp).await;
        }
        self.arm_all(lp).await;
        notify::send(&[notify::State::Status(&self.status_line(lp))]);
    }

    /// SIGHUP: a valid new configuration replaces the schedule; an invalid one is logged
    /// and the running one kept.
    async fn on_reload(&mut self, lp: &mut Loop, outside: &observability::Outside) {
        notify::send(&[notify::State::Reloading]);
        match (self.reload)() {
            Ok(services) => {
                let changes = self.services.settings.job_changes(&services.settings);
                let start_only = self
                    .services
                    .settings
                    .start_only_changes(&services.settings);
                if !start_only.is_empty() {
                    tracing::warn!(
                        "configuration reload: {} changed in the file but is read only at \
                         start: restart the agent (systemctl restart vps-snapshot-agent) to apply it; \
                         until then the old value stays in use",
                        start_only.join(" and ")
                    );
                }
                self.services = services;
                lp.generation += 1;
                self.timer.disarm_all().await;
                let max = self.services.settings.api.max_concurrent_jobs;
                lp.permits = Arc::new(Semaphore::new(max));
                self.arm_all(lp).await;
                self.services.settings.compact();
                self.register_channels(lp);
                self.settings_changed(outside, &lp.chores);
                let jobs = self.services.settings.jobs.len();
                tracing::info!(
                    jobs,
                    "configuration reloaded: {changes}; {}",
                    self.status_line(lp)
                );
            }
            Err(e) => tracing::error!(
                "reload failed, keeping the running configuration: {}",
                crate::errors::line(&e)
            ),
        }
        let status = self.status_line(lp);
        notify::send(&[notify::State::Ready, notify::State::Status(&status)]);
        release_freed_memory();
    }

    /// The periodic work: stale checks (every `stale_every`), resumption of runs dead
    /// processes left, and alert delivery, each started only when the last one ended.
    async fn on_check(&self, lp: &mut Loop) {
        // Stale limits are hours or days: a look every few minutes is plenty.
        let stale_due = lp
            .last_stale_check
            .is_none_or(|t| t.elapsed() >= self.db.timing().stale_every);
        if stale_due {
            lp.last_stale_check = Some(tokio::time::Instant::now());
            self.stale_check(lp).await;
        }
        if idle(&lp.resuming) {
            let jobs = self.services.settings.jobs.clone();
            lp.resuming = Some(lp.chores.spawn(self.services.executor.resume(jobs)));
        }
        self.deliver(lp);
    }

    /// Starts a delivery of what the outbox holds; if one is going, it goes round once
    /// more when it ends (what was queued meanwhile is not left for the next check).
    fn deliver(&self, lp: &mut Loop) {
        let Some(m) = &self.services.outbox else {
            return;
        };
        if !idle(&lp.delivery) {
            lp.again.store(true, std::sync::atomic::Ordering::Release);
            return;
        }
        let (m, again) = (m.clone(), lp.again.clone());
        lp.delivery = Some(lp.chores.spawn(async move {
            loop {
                m.deliver_due().await;
                if !again.swap(false, std::sync::atomic::Ordering::AcqRel) {
                    break;
                }
            }
        }));
    }

    /// The loop's state at start, nothing armed or running yet (runs capped as configured).
    fn new_loop(&self, fires_tx: UnboundedSender<Fire>, done_tx: UnboundedSender<String>) -> Loop {
        let max = self.services.settings.api.max_concurrent_jobs;
        Loop {
            fires_tx,
            done_tx,
            tracker: TaskTracker::new(),
            chores: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(max)),
            running: HashSet::new(),
            next: HashMap::new(),
            generation: 0,
            started: self.now(),
            resuming: None,
            delivery: None,
            again: Arc::default(),
            channels: None,
            last_stale_check: None,
            back_to: None,
        }
    }

    /// Runs until `control` says stop (or closes).
    pub async fn run(mut self, mut control: UnboundedReceiver<Control>) -> anyhow::Result<()> {
        let (fires_tx, mut fires) = mpsc::unbounded_channel();
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let mut lp = self.new_loop(fires_tx, done_tx);
        let presence = Presence::of_daemon(self.db.clone(), self.clock.clone());
        self.register_channels(&mut lp);
        let outside = self.watch_from_outside(&lp.chores).await?;
        let mut heartbeat_ping = self.heartbeat_ping_interval();
        // Watched from before the first arming: a step between the two would otherwise
        // leave the schedule armed from the time before it, unnoticed.
        let mut steps = crate::clock::StepWatch::new(&*self.clock);
        self.catch_up(&mut lp).await;
        self.arm_all(&mut lp).await;
        self.services.settings.compact();
        let status = self.status_line(&lp);
        let jobs = self.services.settings.jobs.len();
        tracing::info!(jobs, "scheduled; {status}");
        notify::send(&[notify::State::Ready, notify::State::Status(&status)]);
        release_freed_memory();
        let watchdog_every = notify::watchdog_every();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
        // The first tick is at once: resumption, delivery and a stale check at start.
        let mut checks = tokio::time::interval(self.db.timing().check_every);
        let mut step_tick = tokio::time::interval(self.db.timing().step_every);
        loop {
            outside.health.beat();
            let kick = self.services.kick.clone();
            tokio::select! {
                Some(fire) = fires.recv() => self.on_fire(&mut lp, fire).await,
                Some(name) = done.recv() => {
                    lp.running.remove(&name);
                    self.write_textfile(&lp.chores);
                }
                () = kick.notified() => self.deliver(&mut lp),
                () = observability::tick(&mut heartbeat_ping) => {
                    self.heartbeat_ping().await;
                    self.deliver(&mut lp);
                }
                c = control.recv() => match c {
                    Some(Control::Reload) => {
                        self.on_reload(&mut lp, &outside).await;
                        heartbeat_ping = self.heartbeat_ping_interval();
                    }
                    Some(Control::Check) => {
                        lp.last_stale_check = None;
                        self.on_check(&mut lp).await;
                    }
                    Some(Control::Stop) | None => break,
                },
                _ = watchdog.tick(), if watchdog_every.is_some() => {
                    notify::send(&[notify::State::Watchdog]);
                }
                _ = checks.tick() => self.on_check(&mut lp).await,
                _ = step_tick.tick(), if steps.is_some() => {
                    if let Some(step) = steps.as_mut().and_then(|w| w.look(&*self.clock)) {
                        self.on_clock_step(&mut lp, step).await;
                    }
                }
            }
        }
        self.drain(lp, &mut control).await;
        presence.leave().await;
        Ok(())
    }
}
