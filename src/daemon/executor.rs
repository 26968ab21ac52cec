//! What the daemon hands a fire to: the real [`Runner`], or a recorder in the scheduler's
//! tests.

use chrono::{DateTime, Utc};

use super::BoxFuture;
use crate::config::JobSettings;
use crate::db::RunTrigger;
use crate::run::Runner;

/// What runs a job when it fires (the real [`Runner`], or a recorder in scheduler tests).
pub trait Executor: Send + Sync + 'static {
    /// Runs `job` for its fire at `scheduled_for`; `again` when the wall clock went back
    /// past that fire (see [`crate::db::Database::claim_fire_again`]).
    fn run(
        &self,
        job: JobSettings,
        trigger: RunTrigger,
        scheduled_for: DateTime<Utc>,
        again: bool,
    ) -> BoxFuture<'static, ()>;
    /// Finishes runs a dead process left `running` (see [`Runner::resume_interrupted`]).
    fn resume(&self, jobs: Vec<JobSettings>) -> BoxFuture<'static, ()>;
    /// The process is stopping: running jobs stop at their next safe point (after
    /// running the `after` hooks they owe).
    fn stop_runs(&self) {}
}

impl Executor for Runner {
    fn run(
        &self,
        job: JobSettings,
        trigger: RunTrigger,
        scheduled_for: DateTime<Utc>,
        again: bool,
    ) -> BoxFuture<'static, ()> {
        let runner = self.clone();
        Box::pin(async move {
            let ran = if again {
                runner.run_fire_again(&job, trigger, scheduled_for).await
            } else {
                runner.run_fire(&job, trigger, scheduled_for).await
            };
            if let Err(e) = ran {
                tracing::error!(job = %job.name, "{}", crate::errors::of(&e));
            }
        })
    }

    fn stop_runs(&self) {
        self.stop.cancel();
    }

    fn resume(&self, jobs: Vec<JobSettings>) -> BoxFuture<'static, ()> {
        let runner = self.clone();
        Box::pin(async move {
            match runner.resume_interrupted(&jobs).await {
                Ok(done) => {
                    for o in done {
                        tracing::info!(run = o.run_id.get(), job = %o.job, status = %o.status, "finished an interrupted run");
                    }
                }
                Err(e) => tracing::error!("{}", crate::errors::of(&e)),
            }
        })
    }
}
