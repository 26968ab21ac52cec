//! What lets the daemon be watched from outside: the outbox's channels recorded, the
//! metrics listener and textfile, the `[heartbeat]` ping.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use super::{Daemon, Loop};
use crate::config::Settings;
use crate::serve::listener::{self, Access, Health};
use crate::serve::metrics;

/// The daemon's side of the metrics: the settings the listener answers from, its
/// health, and the listener's lifetime.
pub(super) struct Outside {
    settings: Option<watch::Sender<Arc<Settings>>>,
    /// The listener's TLS and credentials, rebuilt from the files on SIGHUP.
    access: Option<watch::Sender<Arc<Access>>>,
    pub health: Health,
    _stop: DropGuard,
}

impl Daemon {
    /// Records the outbox's channels (alerts queued from now on are owed to each) when
    /// they differ from those recorded last, in the background: the loop never waits on
    /// it. Alerts queued before it lands are taken by the new channels then.
    pub(super) fn register_channels(&self, lp: &mut Loop) {
        let names: Vec<String> = self
            .services
            .outbox
            .iter()
            .flat_map(|o| o.channels().map(|c| c.name().to_string()))
            .collect();
        if lp.channels.as_ref() == Some(&names) {
            return;
        }
        lp.channels = Some(names);
        let (outbox, db) = (self.services.outbox.clone(), self.db.clone());
        lp.chores.spawn(async move {
            let registered = match outbox {
                Some(o) => o.register().await,
                None => db.set_channels(&[]).await,
            };
            if let Err(e) = registered {
                tracing::error!("{e}");
            }
        });
    }

    /// Starts the metrics listener if `[metrics] listen` is set, and writes the textfile.
    pub(super) async fn watch_from_outside(&self, chores: &TaskTracker) -> anyhow::Result<Outside> {
        // Healthy while the loop turns: it does at least every `check_every`.
        let health = Health::new(self.db.timing().check_every * 3);
        health.beat();
        let stop = CancellationToken::new();
        let settings = &self.services.settings;
        let (mut sender, mut access_sender) = (None, None);
        if let Some(m) = &settings.metrics
            && let Some(addr) = m.listen
        {
            let access = Access::load(m)?;
            for n in &access.notes {
                tracing::warn!("{n}");
            }
            let scheme = access.scheme();
            let (access_tx, access_rx) = watch::channel(Arc::new(access));
            let (tx, rx) = watch::channel(Arc::new(settings.clone()));
            let token = settings.api.token()?;
            let source = listener::Source {
                db: self.db.clone(),
                settings: rx,
                clock: self.clock.clone(),
                health: health.clone(),
                marker: Arc::new(crate::snapshot::mark::Marker::new(
                    secrecy::ExposeSecret::expose_secret(token).as_bytes(),
                )),
                access: access_rx,
            };
            let bound = listener::serve(addr, source, stop.clone()).await?;
            tracing::info!(
                "metrics on {scheme}://{bound}/metrics, status page on {scheme}://{bound}/{}",
                if m.basic_auth_users.is_empty() {
                    ""
                } else {
                    " (basic auth)"
                }
            );
            sender = Some(tx);
            access_sender = Some(access_tx);
        }
        let outside = Outside {
            settings: sender,
            access: access_sender,
            health,
            _stop: stop.drop_guard(),
        };
        self.write_textfile(chores);
        Ok(outside)
    }

    /// A new configuration: the listener answers from it (its address is read at start).
    pub(super) fn settings_changed(&self, outside: &Outside, chores: &TaskTracker) {
        if let Some(tx) = &outside.settings {
            tx.send_replace(Arc::new(self.services.settings.clone()));
        }
        // Renewed certificates and changed users apply to the next connection; files
        // that cannot be used leave the listener as it was, and say why.
        if let (Some(tx), Some(m)) = (&outside.access, &self.services.settings.metrics) {
            let (access, error) = Access::reload(m, &tx.borrow());
            if let Some(e) = error {
                tracing::error!(
                    "configuration reload: the metrics listener keeps its certificate and key: {e}"
                );
            }
            for n in &access.notes {
                tracing::warn!("{n}");
            }
            tx.send_replace(Arc::new(access));
        }
        self.write_textfile(chores);
    }

    /// Rewrites the textfile in the background, if one is configured.
    pub(super) fn write_textfile(&self, chores: &TaskTracker) {
        if self
            .services
            .settings
            .metrics
            .as_ref()
            .and_then(|m| m.textfile.as_ref())
            .is_none()
        {
            return;
        }
        let (db, settings, now) = (
            self.db.clone(),
            self.services.settings.clone(),
            self.clock.now(),
        );
        chores.spawn(async move { metrics::update_textfile(&db, &settings, now).await });
    }

    /// The heartbeat's rhythm, if `[heartbeat]` is set.
    pub(super) fn heartbeat_ping_interval(&self) -> Option<tokio::time::Interval> {
        let every: Duration = self.services.outbox.as_ref()?.heartbeat_ping_every()?;
        Some(tokio::time::interval(every))
    }

    /// Queues a heartbeat ping.
    pub(super) async fn heartbeat_ping(&self) {
        if let Some(o) = &self.services.outbox {
            o.heartbeat_ping().await;
        }
    }
}

/// The next tick of `i`; never, without one.
pub(super) async fn tick(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
