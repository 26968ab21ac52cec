//! Shared set-up: a simulator on loopback, a virtual clock, temp dirs, config files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use secrecy::SecretString;
use vps_snapshot_agent::api::Client;
use vps_snapshot_agent::clock::VirtualClock;
use vps_snapshot_agent::config::{ApiSettings, validate_base_url};
pub use vps_snapshot_agent::domain::{RunId, ServerId, SnapshotId};
use vps_snapshot_agent::sim::{SimOptions, SimServer, Simulator};

pub const TOKEN: &str = "test-token-5f1c9a7e2b";

/// Tests that touch process-wide environment variables take this first.
pub fn env_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn clock() -> VirtualClock {
    VirtualClock::new(Utc.with_ymd_and_hms(2026, 11, 28, 2, 30, 0).unwrap())
}

pub struct World {
    pub clock: VirtualClock,
    pub server: SimServer,
    pub sim: Simulator,
}

pub async fn world(opts: SimOptions) -> World {
    let clock = clock();
    let opts = SimOptions {
        token: TOKEN.to_string(),
        ..opts
    };
    let server = Simulator::start(opts, Arc::new(clock.clone()))
        .await
        .unwrap();
    let sim = server.sim.clone();
    World { clock, server, sim }
}

impl World {
    pub fn api_settings(&self) -> ApiSettings {
        let mut s = ApiSettings::new(
            validate_base_url(&self.server.base_url()).unwrap(),
            SecretString::from(TOKEN),
        );
        s.request_timeout = Duration::from_secs(5);
        s.max_retries = 3;
        s
    }

    pub fn client_with(&self, settings: &ApiSettings, token: &str) -> Arc<Client> {
        Client::new(
            settings,
            &SecretString::from(token),
            Arc::new(self.clock.clone()),
        )
        .unwrap()
    }

    pub fn client(&self) -> Arc<Client> {
        self.client_with(&self.api_settings(), TOKEN)
    }
}

pub fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

use vps_snapshot_agent::alert::AlertPolicy;
use vps_snapshot_agent::config::{JobSettings, Trigger};
use vps_snapshot_agent::cron::CronSpec;
use vps_snapshot_agent::db::Database;
use vps_snapshot_agent::identity::Owner;
use vps_snapshot_agent::retention::RetentionPolicy;
use vps_snapshot_agent::run::Runner;

pub fn job(name: &str, server_id: u64, keep_last: u32) -> JobSettings {
    JobSettings {
        name: name.to_string(),
        server_id: ServerId::new(server_id),
        trigger: Trigger::Schedule(CronSpec::parse("0 30 2 * * *").unwrap()),
        timezone: chrono_tz::Tz::UTC,
        retention: RetentionPolicy {
            last: keep_last,
            ..RetentionPolicy::default()
        },
        poll_interval: Duration::from_secs(20),
        snapshot_timeout: Duration::from_secs(1800),
        catch_up: Some(Duration::from_secs(7200)),
        max_deletions_per_run: 3,
        stale_after: None,
        restore_safety_keep: Duration::from_secs(7 * 86_400),
        hooks: vps_snapshot_agent::hooks::Hooks::default(),
        ping_url: None,
        enabled: true,
    }
}

/// The agent's marker for [`TOKEN`]: what marks the snapshots an agent with that token made.
pub fn marker() -> vps_snapshot_agent::snapshot::mark::Marker {
    vps_snapshot_agent::snapshot::mark::Marker::new(TOKEN.as_bytes())
}

/// A process that is gone, as recorded in the database.
pub fn dead_owner() -> Owner {
    let host = gethostname_for_tests();
    format!("{host}/999999999/1/deadbeef")
        .parse::<Owner>()
        .expect("a well-formed owner")
}

fn gethostname_for_tests() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().replace('/', "_"))
        .unwrap_or_default()
}

impl World {
    pub async fn db(&self, dir: &tempfile::TempDir) -> Database {
        crate::store::open(&dir.path().join("history.db")).await
    }

    pub fn runner(&self, db: Database) -> Runner {
        Runner {
            db,
            client: self.client(),
            clock: Arc::new(self.clock.clone()),
            owner: Owner::current(),
            alerts: Some(AlertPolicy {
                repeat_after: Duration::from_secs(6 * 3600),
                notify_recovery: true,
            }),
            max_retries: 3,
            lock_wait: Duration::from_secs(60),
            settle: Duration::from_secs(5),
            stop: Default::default(),
            kick: Default::default(),
        }
    }

    /// A snapshot made `mins` minutes ago: by the agent for `job` (named and marked as it
    /// marks them), or by hand.
    pub fn put(
        &self,
        server: u64,
        job: Option<&str>,
        mins: i64,
        status: vps_snapshot_agent::api::SnapshotStatus,
    ) -> SnapshotId {
        let server = ServerId::new(server);
        use vps_snapshot_agent::clock::Clock;
        let at = self.clock.now() - chrono::Duration::minutes(mins);
        match job {
            Some(j) => {
                let name = vps_snapshot_agent::snapshot::naming::new_name(j, at);
                let description = marker().description(j, server, RunId::new(0), &name);
                self.sim
                    .put_described(server, &name, Some(&description), status, at)
            }
            None => self.sim.put(server, &format!("manual-{mins}"), status, at),
        }
    }

    pub fn deleted_ids(&self) -> Vec<SnapshotId> {
        self.sim
            .events()
            .into_iter()
            .filter_map(|e| match e {
                vps_snapshot_agent::sim::Event::Deleted {
                    id,
                    external: false,
                    ..
                } => Some(id),
                _ => None,
            })
            .collect()
    }

    pub fn created(&self) -> usize {
        self.sim
            .events()
            .iter()
            .filter(|e| matches!(e, vps_snapshot_agent::sim::Event::Created { .. }))
            .count()
    }
}

/// A real SMTP server on loopback (mailin-embedded, on its own threads) that keeps every
/// message it accepts.
#[derive(Clone, Default)]
pub struct Inbox {
    messages: Arc<Mutex<Vec<String>>>,
    current: Arc<Mutex<Vec<u8>>>,
    /// While set, the server answers every greeting 421 (service not available).
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl mailin_embedded::Handler for Inbox {
    fn helo(&mut self, _ip: std::net::IpAddr, _domain: &str) -> mailin_embedded::Response {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            mailin_embedded::response::NO_SERVICE
        } else {
            mailin_embedded::response::OK
        }
    }

    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> mailin_embedded::Response {
        self.current.lock().unwrap().clear();
        mailin_embedded::response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.lock().unwrap().extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        let msg = String::from_utf8_lossy(&self.current.lock().unwrap()).into_owned();
        self.messages.lock().unwrap().push(msg);
        mailin_embedded::response::OK
    }
}

impl Inbox {
    /// Starts a server on `port` (0: any free one); returns the inbox and the port.
    pub fn start(port: u16) -> (Inbox, u16) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let inbox = Inbox::default();
        let mut server = mailin_embedded::Server::new(inbox.clone());
        server
            .with_name("inbox.test")
            // As many sessions at once as a real server: two daemons' pooled idle
            // connections must not leave a run-once waiting for a greeting.
            .with_num_threads(8)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        (inbox, port)
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Takes the mail server down (every session refused) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A loopback port with nothing listening (an SMTP server that is down).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn email_settings(port: u16) -> vps_snapshot_agent::config::EmailSettings {
    vps_snapshot_agent::config::EmailSettings {
        smtp_host: "127.0.0.1".into(),
        smtp_port: port,
        security: vps_snapshot_agent::config::Security::None,
        username: None,
        password: None,
        from: "Snapshot Agent <agent@example.com>".parse().unwrap(),
        to: vec![
            "ops@example.com".parse().unwrap(),
            "oncall@example.com".parse().unwrap(),
        ],
        repeat_after: Duration::from_secs(6 * 3600),
        notify_recovery: true,
        timeout: Duration::from_secs(5),
    }
}

impl World {
    pub fn mailer(&self, db: &Database, port: u16) -> vps_snapshot_agent::alert::Outbox {
        vps_snapshot_agent::alert::Outbox::email(
            &email_settings(port),
            db.clone(),
            Arc::new(self.clock.clone()),
        )
        .unwrap()
    }
}

/// Set in a child process of this test binary started by [`with_env`].
const CHILD_ENV: &str = "AGENT_TEST_CHILD_ENV";

/// Tests never set the process's environment: the other tests' threads read it, and the
/// agents they spawn inherit it (and `set_var` in a threaded program is undefined
/// behaviour). A test whose subject is the environment calls this first. In the test
/// process it runs the same test again in a child process of this binary with `env`
/// added, checks that it passed, and returns `false` (the test is done); in that child it
/// returns `true`, and the test goes on with the environment in place.
pub fn with_env(env: &[(&str, &str)]) -> bool {
    if std::env::var_os(CHILD_ENV).is_some() {
        return true;
    }
    let test = std::thread::current().name().unwrap().to_string();
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test, "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, "1")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && out.contains("1 passed"),
        "{test}, run with {env:?}:\n{out}"
    );
    false
}
