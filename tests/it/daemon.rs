//! The scheduler loop under tokio's paused clock: days of schedule in milliseconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::mpsc;
use vps_snapshot_agent::clock::{SharedClock, TokioClock};
use vps_snapshot_agent::config::{JobSettings, Settings};
use vps_snapshot_agent::daemon::{BoxFuture, ClockTimer, Control, Daemon, Executor, Services};
use vps_snapshot_agent::db::{Database, Finish, NewRun, Owner, RunKind, RunStatus, RunTrigger};
use vps_snapshot_agent::domain::{AlertKind, ServerId};

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
}

impl Executor for Recorder {
    fn run(
        &self,
        job: JobSettings,
        trigger: RunTrigger,
        at: DateTime<Utc>,
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
                };
                db.finish_run(id, &owner, end).await.unwrap();
            }
            tokio::time::sleep(me.takes).await;
            me.active.lock().unwrap().0 -= 1;
        })
    }

    fn resume(&self, _jobs: Vec<JobSettings>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

struct Harness {
    recorder: Recorder,
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn config_text(jobs: &str, max_concurrent: u32) -> String {
    format!(
        "[api]\nbase_url = \"http://127.0.0.1:9/\"\ntoken = \"t\"\nmax_concurrent_jobs = {max_concurrent}\n{jobs}"
    )
}

/// Starts a daemon whose clock begins at `start_at`. With `paused`, tokio's clock is
/// paused once the database is open, and the database is not used again.
async fn start(
    start_at: DateTime<Utc>,
    jobs: &str,
    max_concurrent: u32,
    takes: Duration,
    db_dir: Option<tempfile::TempDir>,
    paused: bool,
) -> Harness {
    let dir = db_dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let config = dir.path().join("config.toml");
    let jobs = if paused {
        format!("{jobs}[defaults]\ncatch_up = \"off\"\n")
    } else {
        jobs.to_string()
    };
    std::fs::write(&config, config_text(&jobs, max_concurrent)).unwrap();
    let db = Database::open(&dir.path().join("h.db")).await.unwrap();
    if paused {
        tokio::time::pause();
    }
    let clock: SharedClock = Arc::new(TokioClock::starting_at(start_at));
    let recorder = Recorder {
        clock: clock.clone(),
        db: (!paused).then(|| db.clone()),
        takes,
        log: Arc::default(),
        active: Arc::default(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let reload_rec = recorder.clone();
    let reload_path = config.clone();
    let daemon = Daemon {
        services: Services {
            settings: Settings::load(&config).unwrap(),
            executor: Arc::new(recorder.clone()),
            mailer: None,
        },
        db,
        clock: clock.clone(),
        timer: Arc::new(ClockTimer::new(clock)),
        grace: Duration::from_secs(600),
        check_every: Duration::from_secs(86_400 * 365),
        stale_every: Duration::from_secs(86_400 * 365),
        reload: Box::new(move || {
            Ok(Services {
                settings: Settings::load(&reload_path)?,
                executor: Arc::new(reload_rec.clone()),
                mailer: None,
            })
        }),
    };
    let task = tokio::spawn(daemon.run(rx));
    Harness {
        recorder,
        control: tx,
        task,
        _dir: dir,
        config,
    }
}

impl Harness {
    async fn stop(
        self,
    ) -> (
        Vec<(String, RunTrigger, DateTime<Utc>, DateTime<Utc>)>,
        usize,
        tempfile::TempDir,
    ) {
        self.control.send(Control::Stop).unwrap();
        self.task.await.unwrap().unwrap();
        let log = self.recorder.log.lock().unwrap().clone();
        let peak = self.recorder.active.lock().unwrap().1;
        (log, peak, self._dir)
    }
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

const BERLIN_NIGHTLY: &str = "[[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"0 30 2 * * *\"\ntimezone = \"Europe/Berlin\"\n";

#[tokio::test]
async fn jobs_fire_at_their_instants_across_a_dst_change() {
    let h = start(
        utc(2027, 3, 26, 12, 0),
        BERLIN_NIGHTLY,
        8,
        Duration::from_secs(60),
        None,
        true,
    )
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
async fn a_fall_back_night_fires_once() {
    let h = start(
        utc(2027, 10, 30, 12, 0),
        BERLIN_NIGHTLY,
        8,
        Duration::from_secs(60),
        None,
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2 * 86_400)).await;
    let (log, _, _) = h.stop().await;
    let at: Vec<_> = log.iter().map(|l| l.2).collect();
    assert_eq!(at, vec![utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30)]);
}

#[tokio::test]
async fn a_job_still_running_is_not_started_twice() {
    let jobs = "[[jobs]]\nname = \"busy\"\nserver_id = 1\nschedule = \"0 * * * * *\"\n";
    let h = start(
        utc(2026, 11, 28, 0, 0),
        jobs,
        8,
        Duration::from_secs(150),
        None,
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6 * 60 + 30)).await;
    let (log, peak, _) = h.stop().await;
    let at: Vec<_> = log.iter().map(|l| l.2).collect();
    // Fires every minute; a run takes 2.5 minutes, so 00:02 and 00:03 are skipped.
    assert_eq!(at, vec![utc(2026, 11, 28, 0, 1), utc(2026, 11, 28, 0, 4)]);
    assert_eq!(peak, 1);
}

#[tokio::test]
async fn max_concurrent_jobs_holds_across_jobs() {
    let jobs: String = (1..=4)
        .map(|i| {
            format!("[[jobs]]\nname = \"j{i}\"\nserver_id = {i}\nschedule = \"0 0 * * * *\"\n")
        })
        .collect();
    let h = start(
        utc(2026, 11, 28, 0, 30),
        &jobs,
        2,
        Duration::from_secs(600),
        None,
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let (log, peak, _) = h.stop().await;
    assert_eq!(log.len(), 4, "all four ran, two at a time");
    assert_eq!(peak, 2);
}

/// Waits (real time, bounded) until the recorder has `n` entries.
async fn wait_for(h: &Harness, n: usize) {
    for _ in 0..500 {
        if h.recorder.log.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_missed_fire_is_caught_up_exactly_once() {
    // Catch-up happens at start, so this test runs on real time (and a real database).
    let jobs =
        "[[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"0 30 2 * * *\"\ncatch_up = \"2h\"\n";
    let started = utc(2026, 11, 28, 3, 10);
    // A job that never ran has nothing to catch up.
    let h = start(started, jobs, 8, Duration::ZERO, None, false).await;
    let (log, _, dir) = h.stop().await;
    assert!(log.is_empty(), "{log:?}");

    // It ran the day before; the agent was down at 02:30 and starts at 03:10.
    let db = Database::open(&dir.path().join("h.db")).await.unwrap();
    let run = NewRun {
        job: "web",
        server_id: ServerId::new(1),
        kind: RunKind::Snapshot,
        trigger: RunTrigger::Schedule,
        scheduled_for: None,
        started_at: utc(2026, 11, 27, 2, 30),
    };
    db.start_run(run, &Owner::current()).await.unwrap();
    let h = start(started, jobs, 8, Duration::ZERO, Some(dir), false).await;
    wait_for(&h, 1).await;
    let (log, _, dir) = h.stop().await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (log[0].1, log[0].2),
        (RunTrigger::CatchUp, utc(2026, 11, 28, 2, 30))
    );

    // Restarting again does not catch up a second time.
    let h = start(
        utc(2026, 11, 28, 3, 30),
        jobs,
        8,
        Duration::ZERO,
        Some(dir),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (log, _, dir) = h.stop().await;
    assert!(log.is_empty(), "{log:?}");

    // Nor beyond catch_up.
    let h = start(
        utc(2026, 11, 28, 5, 0),
        jobs,
        8,
        Duration::ZERO,
        Some(dir),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.stop().await.0.is_empty());
}

/// A database in a new temp dir holding one earlier run of `job` started at `at`.
async fn with_earlier_run(job: &str, at: DateTime<Utc>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(&dir.path().join("h.db")).await.unwrap();
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
async fn a_window_job_is_not_caught_up_once_its_window_opened() {
    let jobs = "[[jobs]]\nname = \"db\"\nserver_id = 1\nmaintenance_window = \"0 0 4 * * *\"\nlead = \"1h\"\n";
    // Fire was 03:00, window opens 04:00. At 03:40: catch up. At 04:10: too late.
    let dir = with_earlier_run("db", utc(2026, 11, 27, 3, 0)).await;
    let h = start(
        utc(2026, 11, 28, 3, 40),
        jobs,
        8,
        Duration::ZERO,
        Some(dir),
        false,
    )
    .await;
    wait_for(&h, 1).await;
    let (log, _, _) = h.stop().await;
    assert_eq!(log.len(), 1);

    let dir = with_earlier_run("db", utc(2026, 11, 27, 3, 0)).await;
    let h = start(
        utc(2026, 11, 28, 4, 10),
        jobs,
        8,
        Duration::ZERO,
        Some(dir),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.stop().await.0.is_empty());
}

#[tokio::test]
async fn sighup_with_a_broken_config_keeps_the_old_schedule_and_a_good_one_replaces_it() {
    let jobs = "[[jobs]]\nname = \"a\"\nserver_id = 1\nschedule = \"0 0 * * * *\"\n";
    let h = start(
        utc(2026, 11, 28, 0, 30),
        jobs,
        8,
        Duration::from_secs(1),
        None,
        true,
    )
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

#[tokio::test]
async fn a_job_without_a_success_for_stale_after_raises_one_stale_alert() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(
            "[[jobs]]\nname = \"quiet\"\nserver_id = 1\nschedule = \"0 0 4 1 1 *\"\nstale_after = \"1s\"\ncatch_up = \"off\"\n\
             [email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = 9\nsecurity = \"none\"\nfrom = \"a@b.c\"\nto = [\"o@b.c\"]\n",
            8,
        ),
    )
    .unwrap();
    let settings = Settings::load(&config).unwrap();
    let db = Database::open(&dir.path().join("h.db")).await.unwrap();
    let clock = vps_snapshot_agent::clock::system();
    let mailer = vps_snapshot_agent::alert::Mailer::from_settings(
        settings.email.as_ref(),
        db.clone(),
        clock.clone(),
    )
    .unwrap()
    .map(Arc::new);
    let recorder = Recorder {
        clock: clock.clone(),
        db: None,
        takes: Duration::ZERO,
        log: Arc::default(),
        active: Arc::default(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let daemon = Daemon {
        services: Services {
            settings,
            executor: Arc::new(recorder),
            mailer,
        },
        db: db.clone(),
        clock: clock.clone(),
        timer: Arc::new(ClockTimer::new(clock)),
        grace: Duration::from_secs(5),
        check_every: Duration::from_millis(50),
        stale_every: Duration::from_millis(50),
        reload: Box::new(|| anyhow::bail!("not reloaded here")),
    };
    let task = tokio::spawn(daemon.run(rx));
    let mut stale = Vec::new();
    for _ in 0..100 {
        stale = db
            .pending_alerts()
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.kind == AlertKind::Stale)
            .collect();
        if !stale.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several more checks pass; still one alert for this stale spell.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(Control::Stop).unwrap();
    task.await.unwrap().unwrap();
    let all: Vec<_> = db
        .pending_alerts()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == AlertKind::Stale)
        .collect();
    assert_eq!(stale.len(), 1, "no stale alert");
    assert_eq!(all.len(), 1, "one alert per stale spell");
    assert!(
        all[0].subject.contains("STALE quiet (server 1)"),
        "{}",
        all[0].subject
    );
}
