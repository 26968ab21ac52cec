//! systemd's notification protocol: READY, RELOADING, STOPPING, STATUS and WATCHDOG. Nothing
//! happens without `NOTIFY_SOCKET`.

use std::time::Duration;

pub use sd_notify::NotifyState as State;

pub fn send(states: &[State<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// How often to ping the watchdog (half its timeout), if systemd runs one.
pub fn watchdog_every() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}
