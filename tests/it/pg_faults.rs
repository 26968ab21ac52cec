//! PostgreSQL out of reach: when a job fires, in the middle of a run, and for one agent
//! while the others still reach it. Between an agent and the server sits a TCP proxy on
//! loopback that the test cuts (every connection closed, new ones refused) and heals.
//! PostgreSQL only: run from `on_postgres`.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use vps_snapshot_agent::clock::Clock;
use vps_snapshot_agent::db::{
    Action, Database, Intent, Location, Run, RunStatus, RunTrigger, Step,
};
use vps_snapshot_agent::sim::{Delay, SimOptions};

use crate::cli::{config, sim};
use crate::helpers::{Inbox, RunId, ServerId, SnapshotId, job, world};
use crate::newcomer::{FAST, signal, spawn_with};

/// A TCP proxy to `upstream` that can be cut and healed.
struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let watch = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue;
                }
                let mut cut = watch.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// `url` (the test's PostgreSQL) reached through this proxy.
    fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }
}

/// The schema for `path`, its URL, and a proxy in front of its server.
async fn behind_proxy(path: &std::path::Path) -> (Proxy, String) {
    let url = crate::store::postgres_url(path).await.unwrap();
    let u = url::Url::parse(&url).unwrap();
    let upstream = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5432));
    let proxy = Proxy::start(upstream).await;
    let through = proxy.url(&url);
    (proxy, through)
}

/// Writes the config `from` to `to` with its `database` set to `url`.
fn with_database(from: &std::path::Path, to: &std::path::Path, url: &str) {
    let text = std::fs::read_to_string(from).unwrap();
    let line = text.lines().find(|l| l.starts_with("database = ")).unwrap();
    std::fs::write(to, text.replace(line, &format!("database = \"{url}\""))).unwrap();
}

async fn open_url(url: &str) -> Database {
    let (url, password) = vps_snapshot_agent::db::split_password(url).unwrap();
    Database::open_at(&Location::Postgres { url, password })
        .await
        .unwrap()
}

fn in_runtime(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// The database is out of reach when the job fires: the claim is tried again until it
/// is back, and the fire runs then, once.
pub(crate) fn a_fire_waits_out_an_unreachable_database_and_runs_once() {
    in_runtime(async {
        let w = world(SimOptions::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg");
        let direct = crate::store::open(&path).await;
        let (proxy, url) = behind_proxy(&path).await;
        let runner = w.runner(open_url(&url).await);
        proxy.set_cut(true);
        let (j, at) = (job("web", 5, 2), w.clock.now());
        let fired =
            tokio::spawn(async move { runner.run_fire(&j, RunTrigger::Schedule, at).await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!fired.is_finished(), "the fire waits for the database");
        assert!(direct.history(None, 10).await.unwrap().is_empty());
        proxy.set_cut(false);
        let o = fired
            .await
            .unwrap()
            .expect("the claim is tried again, not given up")
            .expect("the fire was not taken");
        assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
        assert_eq!(direct.history(None, 10).await.unwrap().len(), 1);
        assert_eq!(w.created(), 1);
    });
}

/// The first run waiting for its snapshot that `which` picks, within 60 s.
async fn polling(db: &Database, which: impl Fn(&Run) -> bool) -> Option<Run> {
    for _ in 0..1200 {
        let found = db
            .running()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.step == Step::Poll && which(r));
        if found.is_some() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Run `id` once it has ended, within 150 s.
async fn ended(db: &Database, id: RunId) -> Option<Run> {
    for _ in 0..3000 {
        let run = db.run(id).await.unwrap().unwrap();
        if run.status != RunStatus::Running {
            return Some(run);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A cross-host test could not run here ([`crate::needs`]).
fn skipped_without_unshare() {
    crate::needs::missing(crate::needs::Need::Unshare);
}

/// The database is lost while a daemon waits for its snapshot, and comes back: the run
/// is settled, with no second snapshot, and the next fires run.
pub(crate) fn a_run_that_loses_its_database_is_settled_when_it_returns() {
    in_runtime(async {
        let s = sim().await;
        s.sim
            .set_delay(ServerId::new(1), Delay::Fixed(Duration::from_secs(3)));
        let (_inbox, smtp) = Inbox::start(0);
        let dir = tempfile::tempdir().unwrap();
        let jobs = format!(
            "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp}\nsecurity = \"none\"\n\
             from = \"agent@example.com\"\nto = [\"ops@example.com\"]\n\
             [[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"*/10 * * * * *\"\nkeep_last = 3\n"
        );
        let cfg = config(dir.path(), &s.base_url(), &jobs);
        let path = dir.path().join("pg");
        let direct = crate::store::configure(&cfg, &path).await;
        let (proxy, url) = behind_proxy(&path).await;
        with_database(&cfg, &cfg, &url);
        let mut daemon = spawn_with(&cfg, &["run"], &dir.path().join("log"), &[FAST]);
        let pid = format!("/{}/", daemon.id());
        let victim = polling(&direct, |r| r.owner.contains(&pid))
            .await
            .expect("the daemon polls a snapshot within 60 s")
            .id;
        proxy.set_cut(true);
        tokio::time::sleep(Duration::from_secs(8)).await;
        proxy.set_cut(false);
        // Resumed at the daemon's next check (every second here) once the database is back.
        let mut settled = None;
        for _ in 0..2400 {
            let run = direct.run(victim).await.unwrap().unwrap();
            let later = direct
                .history(Some("web"), 100)
                .await
                .unwrap()
                .into_iter()
                .any(|r| r.id > victim && r.status == RunStatus::Succeeded);
            if run.status != RunStatus::Running && later {
                settled = Some(run);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal(&daemon, libc::SIGTERM);
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(daemon.wait().unwrap().success(), "{log}");
        let run = settled.unwrap_or_else(|| panic!("run {victim} was not settled:\n{log}"));
        // Its snapshot completed while the database was away: the daemon resumed the run
        // once it was back, and finished it.
        assert_eq!(run.status, RunStatus::Succeeded, "{:?}\n{log}", run.error);
        crate::agents::one_snapshot_per_run(&s, &direct).await;
        direct.close().await;
    });
}

/// `agent` with `args`, as if on another host: in a UTS namespace of its own named
/// `host` (`unshare -u`, which needs root). `None` where that is not allowed.
fn spawn_on_host(
    host: &str,
    cfg: &std::path::Path,
    args: &[&str],
    log: &std::path::Path,
) -> Option<std::process::Child> {
    let allowed = std::process::Command::new("unshare")
        .args(["-u", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !allowed {
        return None;
    }
    let child = std::process::Command::new("unshare")
        .args([
            "-u",
            "sh",
            "-c",
            &format!("hostname {host} && exec \"$0\" \"$@\""),
        ])
        .arg(crate::cli::BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("AGENT_API__TOKEN", crate::helpers::TOKEN)
        .env(FAST.0, FAST.1)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Some(child)
}

/// One agent, on another host, loses the database while the other keeps it: once its
/// heartbeat lapses the other finishes its run (no second snapshot) and runs the fires,
/// each once, and mails AGENT GONE once; the cut-off agent records, and so sends,
/// nothing more for the run it lost, and rejoins when the database is back.
pub(crate) fn an_agent_cut_off_from_the_others_is_replaced_and_sends_nothing_more() {
    in_runtime(async {
        let s = sim().await;
        for i in 1..=2 {
            s.sim
                .set_delay(ServerId::new(i), Delay::Fixed(Duration::from_secs(3)));
        }
        let (inbox, smtp) = Inbox::start(0);
        let dir = tempfile::tempdir().unwrap();
        let jobs = format!(
            "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp}\nsecurity = \"none\"\n\
             from = \"agent@example.com\"\nto = [\"ops@example.com\"]\n\
             [[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"*/4 * * * * *\"\nkeep_last = 4\n\
             [[jobs]]\nname = \"db\"\nserver_id = 2\nschedule = \"*/4 * * * * *\"\nkeep_last = 4\n"
        );
        let cfg = config(dir.path(), &s.base_url(), &jobs);
        let path = dir.path().join("pg");
        let direct = crate::store::configure(&cfg, &path).await;
        // The cut-off agent reaches the database through the proxy.
        let (proxy, url) = behind_proxy(&path).await;
        let cfg_a = dir.path().join("a.toml");
        with_database(&cfg, &cfg_a, &url);
        let Some(mut a) =
            spawn_on_host("cut-off-host", &cfg_a, &["run"], &dir.path().join("log-a"))
        else {
            skipped_without_unshare();
            return;
        };
        let mut b = spawn_with(&cfg, &["run"], &dir.path().join("log-b"), &[FAST]);
        // Cut while the agent on the other host waits for a snapshot.
        let victim = polling(&direct, |r| r.host == "cut-off-host")
            .await
            .expect("the agent on cut-off-host polls a snapshot within 60 s");
        proxy.set_cut(true);
        let cut_at = chrono::Utc::now();
        let run = ended(&direct, victim.id)
            .await
            .expect("the other agent finished the run within 150 s");
        eprintln!(
            "cut off: run {} finished by {} {} ms after the cut",
            run.id,
            run.host,
            (run.finished_at.unwrap() - cut_at).num_milliseconds()
        );
        assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
        assert_ne!(run.host, "cut-off-host");
        // Cut off until the other has said so: the run can be taken over a moment after
        // the lapse, before the other's next presence beat looks for lapsed agents, and a
        // rejoin then would leave nothing to say.
        let gone_mailed = || {
            inbox
                .messages()
                .iter()
                .any(|m| m.contains("AGENT GONE") && m.contains("cut-off-host"))
        };
        for _ in 0..300 {
            if gone_mailed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Back: it rejoins and takes its share again.
        proxy.set_cut(false);
        tokio::time::sleep(Duration::from_secs(8)).await;
        for d in [&a, &b] {
            signal(d, libc::SIGTERM);
        }
        let log_a = std::fs::read_to_string(dir.path().join("log-a")).unwrap();
        assert!(a.wait().unwrap().success(), "{log_a}");
        assert!(b.wait().unwrap().success());
        crate::agents::one_snapshot_per_run(&s, &direct).await;
        let by_fire = crate::agents::runs_by_fire(&direct).await;
        let twice: Vec<_> = by_fire.iter().filter(|(_, o)| o.len() > 1).collect();
        assert!(twice.is_empty(), "fires run twice: {twice:?}");
        let gone = inbox
            .messages()
            .iter()
            .filter(|m| m.contains("AGENT GONE") && m.contains("cut-off-host"))
            .count();
        assert_eq!(gone, 1, "{:?}", inbox.messages());
        direct.close().await;
    });
}

/// `sslmode` is honoured, over rustls: `require` encrypts (the test server has Debian's
/// self-signed certificate), `verify-full` refuses a certificate it cannot trust, saying
/// so, and `disable` talks plain.
pub(crate) fn sslmode_is_honoured() {
    in_runtime(async {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::store::postgres_url(&dir.path().join("pg"))
            .await
            .unwrap();
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        let ssl: String = sqlx::query_scalar("SHOW ssl")
            .fetch_one(&admin)
            .await
            .unwrap();
        admin.close().await;
        if ssl != "on" {
            crate::needs::missing(crate::needs::Need::PostgresTls);
            return;
        }
        for (mode, works) in [("disable", true), ("require", true), ("verify-full", false)] {
            let (url, password) =
                vps_snapshot_agent::db::split_password(&format!("{url}&sslmode={mode}")).unwrap();
            let opened = Database::open_at(&Location::Postgres { url, password }).await;
            match (opened, works) {
                (Ok(db), true) => db.close().await,
                (Err(e), false) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("cannot connect") && e.contains("certificate"),
                        "{e}"
                    );
                }
                (Ok(_), false) => panic!("sslmode={mode} accepted an untrusted certificate"),
                (Err(e), true) => panic!("sslmode={mode}: {e}"),
            }
        }
    });
}

/// An agent on another host is SIGKILLed while it waits for a snapshot: `/proc` cannot
/// see it, so the other agent finishes its run once its heartbeat is a lease old, with
/// no second snapshot, and mails AGENT GONE once.
pub(crate) fn a_killed_agent_on_another_host_is_finished_by_the_other_after_its_lease() {
    in_runtime(async {
        let s = sim().await;
        s.sim
            .set_delay(ServerId::new(1), Delay::Fixed(Duration::from_secs(6)));
        let (inbox, smtp) = Inbox::start(0);
        let dir = tempfile::tempdir().unwrap();
        let jobs = format!(
            "[email]\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp}\nsecurity = \"none\"\n\
             from = \"agent@example.com\"\nto = [\"ops@example.com\"]\n\
             [[jobs]]\nname = \"web\"\nserver_id = 1\nschedule = \"*/10 * * * * *\"\nkeep_last = 4\n"
        );
        let cfg = config(dir.path(), &s.base_url(), &jobs);
        let direct = crate::store::configure(&cfg, &dir.path().join("pg")).await;
        let Some(mut a) = spawn_on_host("killed-host", &cfg, &["run"], &dir.path().join("log-a"))
        else {
            skipped_without_unshare();
            return;
        };
        let victim = polling(&direct, |r| r.host == "killed-host")
            .await
            .expect("the agent on killed-host polls a snapshot within 60 s");
        // The other agent starts only now, so that the first fire was the victim's.
        let mut b = spawn_with(&cfg, &["run"], &dir.path().join("log-b"), &[FAST]);
        signal(&a, libc::SIGKILL);
        let killed_at = chrono::Utc::now();
        a.wait().unwrap();
        let run = ended(&direct, victim.id)
            .await
            .expect("the other agent finished the run within 150 s");
        let after = (run.finished_at.unwrap() - killed_at).num_milliseconds();
        eprintln!(
            "killed on another host: run {} finished by {} {after} ms later",
            run.id, run.host
        );
        assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
        assert_ne!(run.host, "killed-host");
        // Not before its lease ran out (the last heartbeat came up to a beat before the
        // kill): /proc on this host cannot see a process of another host.
        assert!(after >= 3_500, "not before the lease (4 s): {after} ms");
        // Its alert goes out once, then the other agent stops.
        for _ in 0..600 {
            if inbox.messages().iter().any(|m| m.contains("AGENT GONE")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal(&b, libc::SIGTERM);
        assert!(b.wait().unwrap().success());
        crate::agents::one_snapshot_per_run(&s, &direct).await;
        let gone = inbox
            .messages()
            .iter()
            .filter(|m| m.contains("AGENT GONE") && m.contains("killed-host"))
            .count();
        assert_eq!(gone, 1, "{:?}", inbox.messages());
        direct.close().await;
    });
}

/// Another agent takes a run over at the very moment the run's own agent records an
/// intent (a delete): the intent waits for the takeover's write lock and is then
/// refused. Under READ COMMITTED a fenced insert outside that lock would still read the
/// run's owner from before the takeover, and be recorded beside it.
pub(crate) fn an_intent_racing_a_takeover_waits_for_it_and_is_refused() {
    in_runtime(async {
        let w = world(SimOptions::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(&dir.path().join("pg")).await;
        let owner = w.runner(db.clone()).owner;
        let t0 = w.clock.now();
        let run = db
            .claim_fire(crate::agents::fire("web", 5, t0), &owner)
            .await
            .unwrap()
            .unwrap();
        let pool = db.postgres_pool().unwrap().clone();
        let mut takeover = crate::store::hold_postgres_writes(&pool).await;
        sqlx::query("UPDATE runs SET owner = $1 WHERE id = $2")
            .bind(crate::agents::remote("b").as_str())
            .bind(run.get())
            .execute(&mut *takeover)
            .await
            .unwrap();
        let delete = Intent {
            run_id: run,
            server_id: ServerId::new(5),
            action: Action::Delete,
            snapshot_id: Some(SnapshotId::new(9)),
            snapshot_name: None,
            detail: None,
        };
        let intending = {
            let (db, owner) = (db.clone(), owner.clone());
            tokio::spawn(async move { db.intend(delete, &owner, t0).await.map(|_| ()) })
        };
        // Until the intent waits for the lock (or, wrongly, is made without it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 || intending.is_finished() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the intent neither waited nor ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        takeover.commit().await.unwrap();
        let e = intending
            .await
            .unwrap()
            .expect_err("an intent recorded beside the takeover");
        assert!(e.to_string().contains("no longer this agent's"), "{e}");
        assert!(
            db.entries(run).await.unwrap().is_empty(),
            "nothing recorded"
        );
    });
}
