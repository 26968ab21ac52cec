//! What the daemon looks at besides its fires: runs missed while it was down (caught up
//! once), and jobs without a success for `stale_after` (the dead-man check).

use super::{Daemon, Loop};
use crate::alert::text;
use crate::db::RunTrigger;
use crate::schedule;

impl Daemon {
    /// Runs each job whose latest fire was missed while the agent was down, once: only
    /// within `catch_up`, only if no run of the job started since that fire, only for a
    /// job that has run before, and for a maintenance-window job only before the window.
    pub(super) async fn catch_up(&self, lp: &mut Loop) {
        let now = self.now();
        for job in self.services.settings.jobs.clone() {
            let Some(limit) = job.catch_up.filter(|_| job.enabled) else {
                continue;
            };
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

    /// Alerts for jobs without a success for `stale_after` (once per stale spell, however
    /// many agents check).
    pub(super) async fn stale_check(&self, lp: &Loop) {
        if crate::alert::AlertPolicy::from_settings(&self.services.settings).is_none() {
            return;
        }
        let now = self.now();
        for job in self.services.settings.jobs.iter().filter(|j| j.enabled) {
            let last = match self.db.last_success(&job.name).await {
                Ok(r) => r.and_then(|r| r.finished_at),
                Err(e) => {
                    tracing::error!("{e}");
                    continue;
                }
            };
            let since = last.unwrap_or(lp.started);
            if (now - since).to_std().unwrap_or_default() <= schedule::stale_after(job, now) {
                continue;
            }
            let a = text::stale(&job.name, job.server_id, since, last, now);
            match self.db.queue_alert_unless_since(&a, since).await {
                Ok(true) => {
                    tracing::warn!(job = %job.name, "stale: no success for {}", crate::human::fmt_age(now - since));
                }
                Ok(false) => {}
                Err(e) => tracing::error!("{e}"),
            }
        }
    }
}
