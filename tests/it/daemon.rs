//! The scheduler loop under tokio's paused clock: days of schedule in milliseconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::mpsc;
use vps_snapshot_agent::clock::{SharedClock, TokioClock, VirtualClock};
use vps_snapshot_agent::config::{JobSettings, Settings};
use vps_snapshot_agent::daemon::{
    BoxFuture, ClockTimer, Control, Daemon, Executor, Fire, Services, Timer,
};
use vps_snapshot_agent::db::{Database, Finish, NewRun, RunKind, RunStatus, RunTrigger};
use vps_snapshot_agent::domain::{AlertKind, ServerId};
use vps_snapshot_agent::identity::Owner;
use vps_snapshot_agent::timing::Timing;

/// One run started: job, trigger, the fire it belongs to, when it started.
type Entry = (String, RunTrigger, DateTime<Utc>, DateTime<Utc>);

#[derive(Clone)]
struct Recorder {
    clock: SharedClock,
    /// Records runs in the database too (only where time is not paused: sqlx's pool
    /// timers and tokio's auto-advance do not mix).
    db: Option<Database>,
    /// How long each run takes.
    takes: Duration,
    log: Arc<Mutex<Vec<Entry>>>,
    active: Arc<Mutex<(usize, usize)>>,
    /// Cancelled (and when noted) by the daemon's `stop_runs`: runs end early.
    stop: tokio_util::sync::CancellationToken,
    stopped: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// A resumption goes on until `stop_runs`, and notes that it ended.
    resume_until_stopped: bool,
    resume_ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Executor for Recorder {
    fn run(
        &self,
        job: JobSettings,
        trigger: RunTrigger,
        at: DateTime<Utc>,
        _again: bool,
    ) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move {
            me.log
                .lock()
                .unwrap()
                .push((job.name.clone(), trigger, at, me.clock.now()));
            {
                let mut a = me.active.lock().unwrap();
                a.0 += 1;
                a.1 = a.1.max(a.0);
            }
            if let Some(db) = &me.db {
                let run = NewRun {
                    job: &job.name,
                    server_id: job.server_id,
                    kind: RunKind::Snapshot,
                    trigger,
                    scheduled_for: Some(at),
                    started_at: me.clock.now(),
                };
                let owner = Owner::current();
                let id = db.start_run(run, &owner).await.unwrap();
                let end = Finish {
                    status: RunStatus::Succeeded,
                    error: None,
                    step: None,
                    at: me.clock.now(),
                    alerts: &[],
                    ping: None,
                };
                db.finish_run(id, &owner, end).await.unwrap();
            }
            tokio::select! {
                () = tokio::time::sleep(me.takes) => {}
                () = me.stop.cancelled() => {}
            }
            me.active.lock().unwrap().0 -= 1;
        })
    }

    fn resume(&self, _jobs: Vec<JobSettings>) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move {
            if me.resume_until_stopped {
                me.stop.cancelled().await;
                me.resume_ended
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
    }

    fn stop_runs(&self) {
        *self.stopped.lock().unwrap() = Some(tokio::time::Instant::now());
        self.stop.cancel();
    }
}

struct Harness {
    recorder: Recorder,
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn config_text(jobs: &str, max_concurrent: u32) -> String {
    format!(
        "[api]\nbase_url = \"http://127.0.0.1:9/\"\ntoken = \"t\"\nmax_concurrent_jobs = {max_concurrent}\n{jobs}"
    )
}

/// How a test daemon starts: `Start::at(t).jobs(..)...spawn().await`.
struct Start {
    at: DateTime<Utc>,
    jobs: String,
    max_concurrent: u32,
    takes: Duration,
    dir: Option<tempfile::TempDir>,
    paused: bool,
    resume_until_stopped: bool,
}

impl Start {
    /// A daemon whose clock begins at `at`, on real time with a real database.
    fn at(at: DateTime<Utc>, jobs: &str) -> Self {
        Self {
            at,
            jobs: jobs.to_string(),
            max_concurrent: 8,
            takes: Duration::ZERO,
            dir: None,
            paused: false,
            resume_until_stopped: false,
        }
    }

    fn max_concurrent(mut self, n: u32) -> Self {
        self.max_concurrent = n;
        self
    }

    /// How long each run takes.
    fn takes(mut self, d: Duration) -> Self {
        self.takes = d;
        self
    }

    /// Each resumption goes on until the daemon stops its runs.
    fn resume_until_stopped(mut self) -> Self {
        self.resume_until_stopped = true;
        self
    }

    /// Reuses the database (and config) directory of an earlier daemon.
    fn in_dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// tokio's clock is paused once the database is open (days pass in milliseconds);
    /// runs are not recorded and catch-up is off, since sqlx does not run on paused time.
    fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    async fn spawn(self) -> Harness {
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let config = dir.path().join("config.toml");
        let mut jobs = self.jobs;
        if self.paused {
            jobs.push_str("[defaults]\ncatch_up = \"off\"\n");
        }
        std::fs::write(&config, config_text(&jobs, self.max_concurrent)).unwrap();
        let db = crate::store::open(&dir.path().join("h.db")).await;
        if self.paused {
            tokio::time::pause();
        }
        let clock: SharedClock = Arc::new(TokioClock::starting_at(self.at));
        let recorder = Recorder {
            clock: clock.clone(),
            db: (!self.paused).then(|| db.clone()),
            takes: self.takes,
            log: Arc::default(),
            active: Arc::default(),
            stop: Default::default(),
            stopped: Arc::default(),
            resume_until_stopped: self.resume_until_stopped,
            resume_ended: Arc::default(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let reload_rec = recorder.clone();
        let reload_path = config.clone();
        let daemon = Daemon {
            services: Services {
                settings: Settings::load(&config).unwrap(),
                executor: Arc::new(recorder.clone()),
                outbox: None,
                kick: Default::default(),
            },
            db: db.with_timing(Timing {
                grace: Duration::from_secs(600),
                check_every: Duration::from_secs(86_400 * 365),
                stale_every: Duration::from_secs(86_400 * 365),
                step_every: Duration::from_secs(3600),
                ..Timing::default()
            }),
            clock: clock.clone(),
            timer: Arc::new(ClockTimer::new(clock)),
            reload: Box::new(move || {
                Ok(Services {
                    settings: Settings::load(&reload_path)?,
                    executor: Arc::new(reload_rec.clone()),
                    outbox: None,
                    kick: Default::default(),
                })
            }),
        };
        let task = tokio::spawn(daemon.run(rx));
        Harness {
            recorder,
            control: tx,
            task,
            dir,
            config,
        }
    }
}

impl Harness {
    /// Stops the daemon once it has dealt with everything sent before, and waits for
    /// its runs (start-up catch-up is decided before the loop reads its first message).
    /// Returns the runs started, the peak of runs at once, and the directory.
    async fn stop(self) -> (Vec<Entry>, usize, tempfile::TempDir) {
        self.control.send(Control::Stop).unwrap();
        self.task.await.unwrap().unwrap();
        let log = self.recorder.log.lock().unwrap().clone();
        let peak = self.recorder.active.lock().unwrap().1;
        (log, peak, self.dir)
    }
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

#[tokio::test]
async fn a_stop_stops_the_resumption_in_flight_and_waits_for_it() {
    let h = Start::at(
        utc(2026, 11, 28, 0, 0),
        "[[jobs]]\nname = \"yearly\"\nserver_id = 1\nschedule = \"0 0 4 1 1 *\"\n",
    )
    .resume_until_stopped()
    .spawn()
    .await;
    h.control.send(Control::Check).unwrap();
    let ended = h.recorder.resume_ended.clone();
    h.stop().await;
    assert!(
        ended.load(std::sync::atomic::Ordering::SeqCst),
        "the daemon returned with its resumption still going"
    );
}

#[tokio::test]
pub(crate) async fn a_stop_asks_runs_still_going_to_stop_a_fifth_before_the_grace_ends_and_waits_for_them()
 {
    let h = Start::at(
        utc(2026, 11, 28, 0, 0),
        "[[jobs]]\nname = \"slow\"\nserver_id = 1\nschedule = \"0 * * * * *\"\n",
    )
    .takes(Duration::from_secs(86_400))
    .paused()
    .spawn()
    .await;
    tokio::time::sleep(Duration::from_secs(90)).await;
    let recorder = h.recorder.clone();
    assert_eq!(recorder.active.lock().unwrap().0, 1, "a run is going");
    let asked = tokio::time::Instant::now();
    let (log, _, _) = h.stop().await;
    assert_eq!(log.len(), 1);
    let stopped = recorder
        .stopped
        .lock()
        .unwrap()
        .expect("runs were asked to stop");
    let after = stopped - asked;
    assert!(
        after >= Duration::from_secs(480) && after < Duration::from_secs(481),
        "four fifths of the 600 s grace: {after:?}"
    );
    assert_eq!(
        recorder.active.lock().unwrap().0,
        0,
        "the daemon waited for the run to stop (and run the hooks it owes)"
    );
}

const BERLIN_NIGHTLY: &str = "[[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"0 30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n";

#[tokio::test]
pub(crate) async fn jobs_fire_at_their_instants_across_a_dst_change() {
    let h = Start::at(utc(2027, 3, 26, 12, 0), BERLIN_NIGHTLY)
        .takes(Duration::from_secs(60))
        .paused()
        .spawn()
        .await;
    tokio::time::sleep(Duration::from_secs(4 * 86_400)).await;
    let (log, _, _) = h.stop().await;
    let at: Vec<_> = log.iter().map(|l| l.2).collect();
    // 02:30 CET, then the spring-forward night (02:30 does not exist: 03:00 CEST), then 02:30 CEST.
    assert_eq!(
        at,
        vec![
            utc(2027, 3, 27, 1, 30),
            utc(2027, 3, 28, 1, 0),
            utc(2027, 3, 29, 0, 30),
            utc(2027, 3, 30, 0, 30)
        ]
    );
    assert!(log.iter().all(|l| l.1 == RunTrigger::Schedule));
    // Each fired within a second of its instant on the paused clock (deterministic:
    // tokio's timer rounds up to the millisecond).
    assert!(
        log.iter()
            .all(|l| l.3 >= l.2 && l.3 - l.2 < chrono::Duration::seconds(1)),
        "{log:?}"
    );
}

#[tokio::test]
pub(crate) async fn a_fall_back_night_fires_once() {
    let h = Start::at(utc(2027, 10, 30, 12, 0), BERLIN_NIGHTLY)
        .takes(Duration::from_secs(60))
        .paused()
        .spawn()
        .await;
    tokio::time::sleep(Duration::from_secs(2 * 86_400)).await;
    let (log, _, _) = h.stop().await;
    let at: Vec<_> = log.iter().map(|l| l.2).collect();
    assert_eq!(at, vec![utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30)]);
}

#[tokio::test]
pub(crate) async fn a_job_still_running_is_not_started_twice() {
    let jobs = "[[jobs]]\nname = \"busy\"\nserver_id = 1\nschedule = \"0 * * * * *\"\n";
    let h = Start::at(utc(2026, 11, 28, 0, 0), jobs)
        .takes(Duration::from_secs(150))
        .paused()
        .spawn()
        .await;
    tokio::time::sleep(Duration::from_secs(6 * 60 + 30)).await;
    let (log, peak, _) = h.stop().await;
    let at: Vec<_> = log.iter().map(|l| l.2).collect();
    // Fires every minute; a run takes 2.5 minutes, so 00:02 and 00:03 are skipped.
    assert_eq!(at, vec![utc(2026, 11, 28, 0, 1), utc(2026, 11, 28, 0, 4)]);
    assert_eq!(peak, 1);
}

#[tokio::test]
pub(crate) async fn max_concurrent_jobs_holds_across_jobs() {
    let jobs: String = (1..=4)
        .map(|i| {
            format!("[[jobs]]\nname = \"j{i}\"\nserver_id = {i}\nschedule = \"0 0 * * * *\"\n")
        })
        .collect();
    let h = Start::at(utc(2026, 11, 28, 0, 30), &jobs)
        .max_concurrent(2)
        .takes(Duration::from_secs(600))
        .paused()
        .spawn()
        .await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let (log, peak, _) = h.stop().await;
    assert_eq!(log.len(), 4, "all four ran, two at a time");
    assert_eq!(peak, 2);
}

#[tokio::test]
pub(crate) async fn a_missed_fire_is_caught_up_exactly_once() {
    // Catch-up happens at start, so this test runs on real time (and a real database).
    let jobs =
        "[[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"0 30 2 * * *\"\ncatch_up = \"2h\"\n";
    let started = utc(2026, 11, 28, 3, 10);
    // A job that never ran has nothing to catch up.
    let h = Start::at(started, jobs).spawn().await;
    let (log, _, dir) = h.stop().await;
    assert!(log.is_empty(), "{log:?}");

    // It ran the day before; the agent was down at 02:30 and starts at 03:10.
    let db = crate::store::open(&dir.path().join("h.db")).await;
    let run = NewRun {
        job: "web",
        server_id: ServerId::new(1),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Schedule,
        scheduled_for: None,
        started_at: utc(2026, 11, 27, 2, 30),
    };
    db.start_run(run, &Owner::current()).await.unwrap();
    let h = Start::at(started, jobs).in_dir(dir).spawn().await;
    let (log, _, dir) = h.stop().await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].1, log[0].2),
        (RunTrigger::CatchUp, utc(2026, 11, 28, 2, 30))
    );

    // Restarting again does not catch up a second time.
    let h = Start::at(utc(2026, 11, 28, 3, 30), jobs)
        .in_dir(dir)
        .spawn()
        .await;
    let (log, _, dir) = h.stop().await;
    assert!(log.is_empty(), "{log:?}");

    // Nor beyond catch_up.
    let h = Start::at(utc(2026, 11, 28, 5, 0), jobs)
        .in_dir(dir)
        .spawn()
        .await;
    assert!(h.stop().await.0.is_empty());
}

#[tokio::test]
pub(crate) async fn a_disabled_job_never_fires_nor_catches_up() {
    let jobs = "[[jobs]]\nname = \"on\"\nserver_id = 1\nschedule = \"0 0 * * * *\"\n\
                [[jobs]]\nname = \"off\"\nserver_id = 2\nschedule = \"0 0 * * * *\"\nenabled = false\n";
    let h = Start::at(utc(2026, 11, 28, 0, 30), jobs)
        .paused()
        .spawn()
        .await;
    tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
    let (log, _, _) = h.stop().await;
    let names: Vec<&str> = log.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["on", "on", "on"], "{log:?}");
    // sqlx does not run on paused time.
    tokio::time::resume();

    // Nor is a missed fire of it caught up at start.
    let jobs = "[[jobs]]\nname = \"off\"\nserver_id = 1\nschedule = \"0 30 2 * * *\"\n\
                catch_up = \"2h\"\nenabled = false\n";
    let dir = with_earlier_run("off", utc(2026, 11, 27, 2, 30)).await;
    let h = Start::at(utc(2026, 11, 28, 3, 10), jobs)
        .in_dir(dir)
        .spawn()
        .await;
    assert!(h.stop().await.0.is_empty());
}

/// A database in a new temp dir holding one earlier run of `job` started at `at`.
async fn with_earlier_run(job: &str, at: DateTime<Utc>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::store::open(&dir.path().join("h.db")).await;
    let run = NewRun {
        job,
        server_id: ServerId::new(1),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Schedule,
        scheduled_for: None,
        started_at: at,
    };
    db.start_run(run, &Owner::current()).await.unwrap();
    db.close().await;
    dir
}

#[tokio::test]
pub(crate) async fn a_window_job_is_not_caught_up_once_its_window_opened() {
    let jobs = "[[jobs]]\nname = \"db\"\nserver_id = 1\nmaintenance_window = \"0 0 4 * * *\"\nlead = \"1h\"\n";
    // Fire was 03:00, window opens 04:00. At 03:40: catch up. At 04:10: too late.
    let dir = with_earlier_run("db", utc(2026, 11, 27, 3, 0)).await;
    let h = Start::at(utc(2026, 11, 28, 3, 40), jobs)
        .in_dir(dir)
        .spawn()
        .await;
    let (log, _, _) = h.stop().await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].1, log[0].2),
        (RunTrigger::CatchUp, utc(2026, 11, 28, 3, 0))
    );

    let dir = with_earlier_run("db", utc(2026, 11, 27, 3, 0)).await;
    let h = Start::at(utc(2026, 11, 28, 4, 10), jobs)
        .in_dir(dir)
        .spawn()
        .await;
    assert!(h.stop().await.0.is_empty());
}

#[tokio::test]
pub(crate) async fn sighup_with_a_broken_config_keeps_the_old_schedule_and_a_good_one_replaces_it()
{
    let jobs = "[[jobs]]\nname = \"a\"\nserver_id = 1\nschedule = \"0 0 * * * *\"\n";
    let h = Start::at(utc(2026, 11, 28, 0, 30), jobs)
        .takes(Duration::from_secs(1))
        .paused()
        .spawn()
        .await;
    std::fs::write(
        &h.config,
        config_text(
            "[[jobs]]\nname = \"a\"\nserver_id = 1\nschedule = \"not cron\"\n",
            8,
        ),
    )
    .unwrap();
    h.control.send(Control::Reload).unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await; // 01:30: "a" fired at 01:00
    std::fs::write(
        &h.config,
        config_text(
            "[[jobs]]\nname = \"b\"\nserver_id = 2\nschedule = \"0 45 * * * *\"\n",
            8,
        ),
    )
    .unwrap();
    h.control.send(Control::Reload).unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await; // 02:30: "b" at 01:45, "a" gone
    let (log, _, _) = h.stop().await;
    let fired: Vec<_> = log.iter().map(|l| (l.0.as_str(), l.2)).collect();
    assert_eq!(
        fired,
        vec![
            ("a", utc(2026, 11, 28, 1, 0)),
            ("b", utc(2026, 11, 28, 1, 45))
        ]
    );
}

/// A timer that never fires: the test steps the loop with [`Control::Check`].
struct NeverTimer;

impl Timer for NeverTimer {
    fn arm(&self, _: Fire, _: mpsc::UnboundedSender<Fire>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn disarm_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Starts a daemon on `dir`'s config and database with its clock at `at`, sends it
/// `checks` check requests and a stop, and waits for it to end: the loop handles its
/// messages in order, each check to its end before the next.
async fn check_at(dir: &std::path::Path, at: DateTime<Utc>, checks: usize) {
    let settings = Settings::load(&dir.join("config.toml")).unwrap();
    let db = crate::store::open(&dir.join("h.db")).await;
    let clock: SharedClock = Arc::new(VirtualClock::new(at));
    let outbox =
        vps_snapshot_agent::alert::Outbox::from_settings(&settings, db.clone(), clock.clone())
            .unwrap()
            .map(Arc::new);
    let recorder = Recorder {
        clock: clock.clone(),
        db: None,
        takes: Duration::ZERO,
        log: Arc::default(),
        active: Arc::default(),
        stop: Default::default(),
        stopped: Arc::default(),
        resume_until_stopped: false,
        resume_ended: Arc::default(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let daemon = Daemon {
        services: Services {
            settings,
            executor: Arc::new(recorder),
            outbox,
            kick: Default::default(),
        },
        db: db.clone().with_timing(Timing {
            grace: Duration::from_secs(5),
            check_every: Duration::from_secs(86_400 * 365),
            stale_every: Duration::from_secs(86_400 * 365),
            step_every: Duration::from_secs(3600),
            ..Timing::default()
        }),
        clock,
        timer: Arc::new(NeverTimer),
        reload: Box::new(|| anyhow::bail!("not reloaded here")),
    };
    let task = tokio::spawn(daemon.run(rx));
    for _ in 0..checks {
        tx.send(Control::Check).unwrap();
    }
    tx.send(Control::Stop).unwrap();
    task.await.unwrap().unwrap();
    db.close().await;
}

#[tokio::test]
pub(crate) async fn a_job_without_a_success_for_stale_after_raises_one_stale_alert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        config_text(
            "[[jobs]]\nname = \"quiet\"\nserver_id = 1\nschedule = \"0 0 4 1 1 *\"\nstale_after = \"1h\"\ncatch_up = \"off\"\n\
             [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 9\nsecurity = \"none\"\nfrom = \"a@b.c\"\nto = [\"o@b.c\"]\n",
            8,
        ),
    )
    .unwrap();
    // The last success ended at midnight.
    let db = crate::store::open(&dir.path().join("h.db")).await;
    let midnight = utc(2026, 11, 28, 0, 0);
    let run = NewRun {
        job: "quiet",
        server_id: ServerId::new(1),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Manual,
        scheduled_for: None,
        started_at: midnight,
    };
    let owner = Owner::current();
    let id = db.start_run(run, &owner).await.unwrap();
    let end = Finish {
        status: RunStatus::Succeeded,
        error: None,
        step: None,
        at: midnight,
        alerts: &[],
        ping: None,
    };
    db.finish_run(id, &owner, end).await.unwrap();
    db.close().await;
    let stale_alerts = async || -> Vec<_> {
        let db = crate::store::open(&dir.path().join("h.db")).await;
        let all = db.pending_alerts().await.unwrap();
        db.close().await;
        all.into_iter()
            .filter(|a| a.kind == AlertKind::Stale)
            .collect::<Vec<_>>()
    };
    // 00:59: not stale yet.
    check_at(dir.path(), utc(2026, 11, 28, 0, 59), 2).await;
    assert!(stale_alerts().await.is_empty());
    // 01:01: stale; one alert however many checks follow, and across a restart.
    check_at(dir.path(), utc(2026, 11, 28, 1, 1), 3).await;
    check_at(dir.path(), utc(2026, 11, 28, 1, 30), 2).await;
    let all = stale_alerts().await;
    assert_eq!(all.len(), 1, "one alert per stale spell: {all:?}");
    assert!(
        all[0].subject.contains("STALE quiet (server 1)"),
        "{}",
        all[0].subject
    );
}
