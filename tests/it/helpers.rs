//! Shared set-up: a simulator on loopback, a virtual clock, temp dirs, config files.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use secrecy::SecretString;
use vps_snapshot_agent::api::Client;
use vps_snapshot_agent::clock::VirtualClock;
use vps_snapshot_agent::config::{ApiSettings, validate_base_url};
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
