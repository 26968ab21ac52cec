//! How the daemon is woken for its next fire: a one-shot on tokio-cron-scheduler in
//! production, or on a [`crate::clock::Clock`] in tests (tokio's paused time covers days of
//! schedule in milliseconds).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::clock::SharedClock;

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
