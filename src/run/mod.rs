//! One job run, as SPEC's "One job run" says, written as a journal ahead of its effects:
//! lock the server; list; settle what earlier runs left open and look for drift; make
//! room if at the limit; create (adopting a snapshot whose answer was lost, never asking
//! twice); poll until done; rotate only after success; finish. Every create, delete and
//! restore is a journal entry committed before its request leaves and resolved after.
//!
//! A file per step: `lock`, `reconcile` (open effects, drift), `create`, `poll`,
//! `rotate` (and make-room), `finish`, `resume` (a claimed, interrupted run),
//! `restore`, `prune` (rotation alone); `dry_run` and `many` (several jobs at once) use
//! them.

mod batch;
mod create;
mod dry_run;
mod finish;
mod fire;
mod hook_step;
mod lock;
mod pings;
mod poll;
mod prune;
mod reconcile;
mod restore;
mod resume;
mod rotate;

pub use batch::run_many;
pub use dry_run::{DryRun, dry_run};
pub use pings::PING_EXPIRES;
pub use poll::learned_first_wait;
pub use restore::{RestoreRequest, job_for, undo_note};

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::alert::{AlertPolicy, Cause};
use crate::api::{ApiError, Client, Listing, Snapshot};
use crate::clock::SharedClock;
use crate::config::JobSettings;
use crate::db::{
    Action, Database, DbError, EntryId, Intent, NewRun, RunKind, RunStatus, RunTrigger, State, Step,
};
use crate::domain::{RunId, ServerId, SnapshotId};
use crate::hooks::{Command, Ran, ThawAfter};
use crate::identity::Owner;
use crate::retention::Candidate;
use crate::snapshot::{candidates, owners_and_pins};

/// Everything a run needs; one per process, shared by its runs.
#[derive(Clone)]
pub struct Runner {
    pub db: Database,
    pub client: Arc<Client>,
    pub clock: SharedClock,
    pub owner: Owner,
    pub alerts: Option<AlertPolicy>,
    pub max_retries: u32,
    /// How long to wait for a server locked by another run before failing.
    pub lock_wait: Duration,
    /// After a create whose outcome is unknown, how long apart the listings that look for
    /// it are (the API's request timeout: a slow create can land after we gave up on it).
    pub settle: Duration,
    /// Cancelled when the operator asks the process to stop (`run-once` on SIGINT or
    /// SIGTERM): no run starts after it, and a run waiting for a lock or for its snapshot
    /// stops there, left for the next start to finish.
    pub stop: CancellationToken,
    /// Woken when a ping or an alert is queued, so that the outbox sends it now rather
    /// than at its next round.
    pub kick: Arc<tokio::sync::Notify>,
}

/// How recently an interrupted run must have begun for its snapshot to stand in for a
/// manual run's (`run-once` after a kill): about the time one snapshot takes to make. An
/// older one is finished as its own run and a fresh snapshot is taken.
pub const STAND_IN: Duration = Duration::from_secs(10 * 60);

impl Outcome {
    /// Whether this finished interrupted run may count as a manual run of its job at
    /// `now`: it succeeded and began within [`STAND_IN`] (not in the future: a clock that
    /// went back proves nothing).
    pub fn stands_in(&self, now: DateTime<Utc>) -> bool {
        let age = now - self.started_at;
        self.status == RunStatus::Succeeded
            && age >= chrono::Duration::zero()
            && age.to_std().is_ok_and(|a| a <= STAND_IN)
    }
}

/// How a run ended, for summaries.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: RunId,
    pub job: String,
    pub server_id: ServerId,
    pub status: RunStatus,
    pub snapshot: Option<(SnapshotId, String)>,
    pub deleted: Vec<SnapshotId>,
    pub error: Option<String>,
    /// What kind of failure, when the run failed.
    pub cause: Option<Cause>,
    pub polls: u32,
    /// When the run began (for an interrupted run: when the process that died began it).
    pub started_at: DateTime<Utc>,
    pub elapsed: Duration,
    /// A restore: the safety snapshot taken first.
    pub safety: Option<SnapshotId>,
}

/// Why a run failed, at which step (`None`: recording it failed), and what that means
/// for the advice an alert gives.
struct Failure {
    step: Option<Step>,
    cause: Cause,
    error: anyhow::Error,
    /// Not a failure of the run: the process is stopping at a safe point.
    stopped: bool,
}

impl Failure {
    /// The process is stopping while the run waits at `step`.
    fn stopped(step: Step) -> Self {
        Failure {
            step: Some(step),
            cause: Cause::Other,
            error: anyhow::anyhow!("stopped by a signal"),
            stopped: true,
        }
    }
}

/// A failure at `step` whose cause is what `error` says: the API's error, if it is one.
fn fail(step: Step, error: impl Into<anyhow::Error>) -> Failure {
    let error = error.into();
    let cause = match error.chain().find_map(|e| e.downcast_ref::<ApiError>()) {
        Some(ApiError::Unauthorized) => Cause::Unauthorized,
        Some(e) if e.is_transient() => Cause::ApiDown,
        _ => Cause::Other,
    };
    fail_as(step, cause, error)
}

fn fail_as(step: Step, cause: Cause, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        step: Some(step),
        cause,
        error: error.into(),
        stopped: false,
    }
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        Failure {
            step: None,
            cause: Cause::Other,
            error: e.into(),
            stopped: false,
        }
    }
}

/// The state of one run in progress.
struct RunState<'a> {
    run_id: RunId,
    job: &'a JobSettings,
    started_at: DateTime<Utc>,
    scheduled_for: Option<DateTime<Utc>>,
    step: Step,
    snapshot: Option<Snapshot>,
    /// When the snapshot was asked for (our clock), for `snapshot_timeout`.
    requested_at: Option<DateTime<Utc>>,
    /// The server's snapshots as last listed (nothing is deleted on a listing with
    /// anomalies).
    listing: Listing,
    deleted: Vec<SnapshotId>,
    /// Deletes asked for that may have been carried out: what counts against
    /// `max_deletions_per_run` (a delete whose answer was lost counts).
    deletes_spent: u32,
    delete_errors: Vec<String>,
    /// The API rejected the token during rotation: nothing more is tried.
    token_rejected: bool,
    polls: u32,
    window_alerted: bool,
    /// The safety snapshot of a restore: named `…-prerestore` (and no hooks).
    pre_restore: bool,
    /// A snapshot never deleted in this run, as if pinned: the one a restore is about to
    /// go back to (making room for the safety snapshot must not take it).
    spare: Option<SnapshotId>,
    trigger: RunTrigger,
    /// The `after` hooks recorded and not yet run: the run owes them.
    owed: Vec<(EntryId, Command)>,
    /// The hooks run so far, for the alert.
    hooks_ran: Vec<Ran>,
    /// A failed `after`, failing the run once the rest of it is done.
    after_failed: Option<String>,
    /// What a successful run still reports (a crash-consistent fallback, failed deletes).
    warnings: Vec<String>,
}

impl<'a> RunState<'a> {
    fn new(
        run_id: RunId,
        job: &'a JobSettings,
        started_at: DateTime<Utc>,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            run_id,
            job,
            started_at,
            scheduled_for,
            step: Step::Lock,
            snapshot: None,
            requested_at: None,
            listing: Listing::default(),
            deleted: Vec::new(),
            deletes_spent: 0,
            delete_errors: Vec::new(),
            token_rejected: false,
            polls: 0,
            window_alerted: false,
            pre_restore: false,
            spare: None,
            trigger: RunTrigger::Manual,
            owed: Vec::new(),
            hooks_ran: Vec::new(),
            after_failed: None,
            warnings: Vec::new(),
        }
    }

    /// An entry of this run about `snapshot`.
    fn intent(&self, action: Action, snapshot: Option<SnapshotId>) -> Intent<'static> {
        Intent {
            run_id: self.run_id,
            server_id: self.job.server_id,
            action,
            snapshot_id: snapshot,
            snapshot_name: None,
            detail: None,
        }
    }
}

/// A snapshot run of `job` as it starts.
pub(super) fn new_run(
    job: &JobSettings,
    trigger: RunTrigger,
    started_at: DateTime<Utc>,
    scheduled_for: Option<DateTime<Utc>>,
) -> NewRun<'_> {
    NewRun {
        job: &job.name,
        server_id: job.server_id,
        kind: RunKind::Snapshot,
        trigger,
        scheduled_for,
        started_at,
    }
}

impl Runner {
    /// A runner for `settings`, owned by this process.
    pub fn from_settings(
        settings: &crate::config::Settings,
        db: Database,
        client: Arc<Client>,
        clock: SharedClock,
    ) -> Self {
        let longest = settings
            .jobs
            .iter()
            .map(|j| j.snapshot_timeout)
            .max()
            .unwrap_or(Duration::from_secs(1800));
        Self {
            db,
            client,
            clock,
            owner: Owner::current(),
            alerts: AlertPolicy::from_settings(settings),
            max_retries: settings.api.max_retries,
            // Long enough for another run on the server to finish its snapshot.
            lock_wait: longest + Duration::from_secs(300),
            settle: settings.api.request_timeout,
            stop: CancellationToken::new(),
            kick: Arc::default(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Records something the run saw, resolved at once.
    async fn observe(
        &self,
        st: &RunState<'_>,
        action: Action,
        snapshot: Option<SnapshotId>,
        state: State,
        detail: Option<&str>,
    ) -> Result<(), DbError> {
        let intent = Intent {
            detail,
            ..st.intent(action, snapshot)
        };
        self.db.observe(intent, state, self.now()).await
    }

    /// Runs `job` once, start to finish. `Err` only when the run cannot even be recorded.
    #[tracing::instrument(name = "run", skip_all, fields(job = %job.name, server = job.server_id.get(), run = tracing::field::Empty))]
    pub async fn run_job(
        &self,
        job: &JobSettings,
        trigger: RunTrigger,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> Result<Outcome, DbError> {
        let started_at = self.now();
        let new = new_run(job, trigger, started_at, scheduled_for);
        let run_id = self.db.start_run(new, &self.owner).await?;
        self.run_started(job, run_id, trigger, started_at, scheduled_for)
            .await
    }

    pub(super) async fn run_started(
        &self,
        job: &JobSettings,
        run_id: RunId,
        trigger: RunTrigger,
        started_at: DateTime<Utc>,
        scheduled_for: Option<DateTime<Utc>>,
    ) -> Result<Outcome, DbError> {
        tracing::Span::current().record("run", run_id.get());
        tracing::info!(%trigger, "run started");
        self.start_ping(job, run_id, scheduled_for).await;
        let mut st = RunState::new(run_id, job, started_at, scheduled_for);
        st.trigger = trigger;
        let _flight = self.owner.in_flight(run_id);
        let result = match self.lock(job.server_id, Some(run_id)).await {
            Ok(guard) => {
                // An orphan of this job on this server first (see `finish_orphans`); boxed,
                // so that this run's future does not carry the whole resumption inside it.
                let mut r = match Box::pin(self.finish_orphans(job, run_id)).await {
                    Ok(()) => self.execute(&mut st).await,
                    Err(e) => Err(e.into()),
                };
                // Whatever ended the run early, what `before` did is undone.
                if let Err(e) = self.thaw(&mut st).await {
                    r = r.and(Err(e.into()));
                }
                guard.release().await;
                r
            }
            Err(f) => Err(f),
        };
        match result {
            Err(f) if f.stopped => self.leave(st, &f).await,
            result => self.finish(st, result).await,
        }
    }

    async fn execute(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        self.observe(st, Action::Lock, None, State::Ok, None)
            .await?;
        st.step = Step::List;
        self.list(st).await?;
        self.reconcile(st).await?;
        if st.listing.held() >= crate::retention::LIMIT as usize {
            self.make_room(st).await?;
        }
        self.before(st).await?;
        // A stop that came while the hooks ran: no snapshot to wait for yet.
        if !st.hooks_ran.is_empty() && self.stop.is_cancelled() {
            return Err(Failure::stopped(Step::Before));
        }
        self.create(st).await?;
        if st.job.hooks.thaw_after == ThawAfter::Created {
            self.thaw(st).await?;
        }
        let first = self.first_wait(st.job).await;
        self.poll(st, first).await?;
        self.thaw(st).await?;
        self.rotate(st).await?;
        Self::after_failure(st)
    }

    /// Lists the server's snapshots into `st.listing`, recording the listing. The API's
    /// error is returned for the caller to judge; only a database error is fatal here.
    async fn relist(&self, st: &mut RunState<'_>) -> Result<Result<(), ApiError>, DbError> {
        match self.client.list(Some(st.job.server_id)).await {
            Ok(list) => {
                self.listed(st, list).await?;
                Ok(Ok(()))
            }
            Err(e) => {
                self.observe(st, Action::List, None, State::Error, Some(&e.to_string()))
                    .await?;
                Ok(Err(e))
            }
        }
    }

    /// Takes `list` as the listing in hand, recording it; what was odd about it is
    /// recorded too and reported with the run (once).
    async fn listed(&self, st: &mut RunState<'_>, list: Listing) -> Result<(), DbError> {
        let detail = if list.consistent() {
            crate::human::count(list.held(), "snapshot")
        } else {
            let odd = format!("the API's listing was inconsistent: {}", list.odd());
            if !st.warnings.contains(&odd) {
                st.warnings.push(odd.clone());
            }
            format!("{}; {odd}", crate::human::count(list.held(), "snapshot"))
        };
        self.observe(st, Action::List, None, State::Ok, Some(&detail))
            .await?;
        st.listing = list;
        Ok(())
    }

    async fn list(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        self.relist(st).await?.map_err(|e| fail(st.step, e))
    }

    /// The planner's view of the listing in hand, for this run's job.
    async fn candidates(&self, st: &RunState<'_>) -> Result<Vec<Candidate>, DbError> {
        let snapshots = &st.listing.snapshots;
        let (owners, mut pins) = owners_and_pins(
            Some(&self.db),
            self.client.marker(),
            st.job.server_id,
            snapshots,
            Some(self.now()),
        )
        .await?;
        pins.extend(st.spare);
        Ok(candidates(snapshots, &owners, st.job, &pins))
    }
}
