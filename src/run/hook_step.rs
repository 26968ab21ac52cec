//! The job's hooks around its snapshot, kept in the journal like any effect. Before the
//! first `before` command starts, every `after` command is recorded as a pending entry
//! in the same transaction: from then on the run owes them. They are paid once the
//! create was accepted (or the snapshot completed, `thaw_after`), whatever happens in
//! between: a failed create, a failed or late snapshot, a stop signal. A process killed
//! in between leaves them pending, and the next start runs them first thing when it
//! claims the run ([`Runner::thaw_left`]), alerting that it had to.

use anyhow::anyhow;

use super::{Failure, RunState, Runner, fail_as};
use crate::alert::{Cause, text};
use crate::db::{Action, BEGUN, DbError, Entry, EntryId, Intent, Run, State, Step};
use crate::hooks::{self, BeforeFailure, Command, Phase, Ran};

/// What a hook is told about its run.
struct Facts<'a> {
    job: &'a str,
    server: String,
    run: String,
    trigger: &'a str,
    snapshot: Option<(String, String)>,
    error: Option<&'a str>,
}

impl Facts<'_> {
    fn env(&self, phase: Phase) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("VPS_SNAPSHOT_JOB", self.job.to_string()),
            ("VPS_SNAPSHOT_SERVER_ID", self.server.clone()),
            ("VPS_SNAPSHOT_RUN_ID", self.run.clone()),
            ("VPS_SNAPSHOT_TRIGGER", self.trigger.to_string()),
            ("VPS_SNAPSHOT_PHASE", phase.as_str().to_string()),
        ];
        if let Some((id, name)) = &self.snapshot {
            env.push(("VPS_SNAPSHOT_ID", id.clone()));
            env.push(("VPS_SNAPSHOT_NAME", name.clone()));
        }
        if let Some(e) = self.error {
            env.push(("VPS_SNAPSHOT_ERROR", e.to_string()));
        }
        env
    }
}

impl Runner {
    fn facts<'a>(&self, st: &'a RunState<'_>, error: Option<&'a str>) -> Facts<'a> {
        Facts {
            job: &st.job.name,
            server: st.job.server_id.to_string(),
            run: st.run_id.to_string(),
            trigger: st.trigger.as_str(),
            snapshot: st
                .snapshot
                .as_ref()
                .map(|s| (s.id.to_string(), s.name.clone())),
            error,
        }
    }

    /// Runs `command` of `entry` (already recorded) and records how it ended.
    async fn run_hook(
        &self,
        entry: EntryId,
        phase: Phase,
        command: &Command,
        facts: &Facts<'_>,
        timeout: std::time::Duration,
        note: Option<&str>,
    ) -> Result<Ran, DbError> {
        tracing::info!(hook = phase.as_str(), %command, "running hook");
        // A thaw runs even when the database cannot note that it began.
        if phase == Phase::After
            && let Err(e) = self.db.begun(entry, self.now()).await
        {
            tracing::warn!("{e:#}; running the after hook anyway");
        }
        let finished = hooks::run(command, &facts.env(phase), timeout).await;
        let state = if finished.ok() {
            State::Ok
        } else {
            tracing::warn!(hook = phase.as_str(), %command, "hook failed: {}", finished.status);
            State::Error
        };
        let report = match note {
            Some(n) => format!("{n}; {}", finished.report()),
            None => finished.report(),
        };
        self.db
            .resolve(entry, state, None, Some(&report), self.now())
            .await?;
        Ok(Ran {
            phase,
            command: command.clone(),
            finished,
        })
    }

    /// Records what the run owes (`after`) and runs `before`, in order, up to the first
    /// that fails. A failure fails the run (`before_failure = "skip"`) or is recorded,
    /// alerted, and the snapshot taken anyway (`"snapshot-anyway"`).
    pub(super) async fn before(&self, st: &mut RunState<'_>) -> Result<(), Failure> {
        let hooks = &st.job.hooks;
        if st.pre_restore || (hooks.before.is_empty() && hooks.after.is_empty()) {
            return Ok(());
        }
        st.step = Step::Before;
        let json: Vec<(Action, String)> = hooks
            .after
            .iter()
            .map(|c| (Action::After, c.to_json()))
            .chain(hooks.before.first().map(|c| (Action::Before, c.to_json())))
            .collect();
        let intents: Vec<Intent<'_>> = json
            .iter()
            .map(|(a, c)| Intent {
                detail: Some(c),
                ..st.intent(*a, None)
            })
            .collect();
        let mut ids = self
            .db
            .intend_all(&intents, &self.owner, self.now())
            .await?;
        let first_before = (!hooks.before.is_empty()).then(|| ids.pop()).flatten();
        st.owed = ids.into_iter().zip(hooks.after.iter().cloned()).collect();
        for (i, command) in hooks.before.iter().enumerate() {
            let entry = match (i, first_before) {
                (0, Some(e)) => e,
                _ => {
                    let c = command.to_json();
                    let intent = Intent {
                        detail: Some(&c),
                        ..st.intent(Action::Before, None)
                    };
                    self.db.intend(intent, &self.owner, self.now()).await?
                }
            };
            let facts = self.facts(st, None);
            let ran = self
                .run_hook(entry, Phase::Before, command, &facts, hooks.timeout, None)
                .await?;
            let ok = ran.finished.ok();
            let what = format!("before hook `{command}` failed: {}", ran.finished.status);
            st.hooks_ran.push(ran);
            if !ok {
                return self.before_failed(st, what).await;
            }
        }
        Ok(())
    }

    async fn before_failed(&self, st: &mut RunState<'_>, what: String) -> Result<(), Failure> {
        match st.job.hooks.before_failure {
            BeforeFailure::Skip => Err(fail_as(
                Step::Before,
                Cause::Hook,
                anyhow!("{what}; no snapshot taken (before_failure = \"skip\")"),
            )),
            BeforeFailure::SnapshotAnyway => {
                let note = format!(
                    "crash-consistent: {what}; the snapshot was taken anyway \
                     (before_failure = \"snapshot-anyway\")"
                );
                tracing::warn!("{note}");
                if self.alerts.is_some() {
                    let a = text::hook(
                        &st.job.name,
                        st.job.server_id,
                        st.run_id,
                        &note,
                        &st.hooks_ran,
                        self.now(),
                    );
                    self.db.queue_alert(&a).await?;
                }
                st.warnings.push(note);
                Ok(())
            }
        }
    }

    /// Runs every `after` the run still owes, each once, all of them even when one fails
    /// (each undoes something). A failure is kept for the run's end: the snapshot is
    /// fine, but the application may not be.
    pub(super) async fn thaw(&self, st: &mut RunState<'_>) -> Result<(), DbError> {
        if st.owed.is_empty() {
            return Ok(());
        }
        let step = std::mem::replace(&mut st.step, Step::After);
        let mut first_error = None;
        for (entry, command) in std::mem::take(&mut st.owed) {
            let facts = self.facts(st, None);
            match self
                .run_hook(
                    entry,
                    Phase::After,
                    &command,
                    &facts,
                    st.job.hooks.timeout,
                    None,
                )
                .await
            {
                Ok(ran) => {
                    if !ran.finished.ok() && st.after_failed.is_none() {
                        st.after_failed = Some(format!(
                            "after hook `{command}` failed: {}; what before did may not be undone",
                            ran.finished.status
                        ));
                    }
                    st.hooks_ran.push(ran);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        st.step = step;
        first_error.map_or(Ok(()), Err)
    }

    /// A failed `after`, as the run's failure (after the rest of the run is done).
    pub(super) fn after_failure(st: &mut RunState<'_>) -> Result<(), Failure> {
        match st.after_failed.take() {
            Some(e) => Err(fail_as(Step::After, Cause::Hook, anyhow!(e))),
            None => Ok(()),
        }
    }

    /// The run failed: its `on_failure` commands, each told the error.
    pub(super) async fn on_failure(
        &self,
        st: &mut RunState<'_>,
        error: &str,
    ) -> Result<(), DbError> {
        if st.pre_restore {
            return Ok(());
        }
        for command in st.job.hooks.on_failure.clone() {
            let c = command.to_json();
            let intent = Intent {
                detail: Some(&c),
                ..st.intent(Action::OnFailure, None)
            };
            let entry = self.db.intend(intent, &self.owner, self.now()).await?;
            let facts = self.facts(st, Some(error));
            let ran = self
                .run_hook(
                    entry,
                    Phase::OnFailure,
                    &command,
                    &facts,
                    st.job.hooks.timeout,
                    None,
                )
                .await?;
            st.hooks_ran.push(ran);
        }
        Ok(())
    }

    /// First thing on claiming `run`, whose process is gone: the `after` hooks it still
    /// owed, from the journal (the commands as they were when `before` ran), then an
    /// alert saying that they had to be run now.
    pub(super) async fn thaw_left(
        &self,
        run: &Run,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), DbError> {
        let entries = self.db.entries(run.id).await?;
        for e in &entries {
            if matches!(e.action, Action::Before | Action::OnFailure) && e.state == State::Pending {
                let why = "the agent stopped while it ran";
                self.db
                    .resolve(e.id, State::Unknown, None, Some(why), self.now())
                    .await?;
            }
        }
        let owed: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.action == Action::After && e.state == State::Pending)
            .collect();
        if owed.is_empty() {
            return Ok(());
        }
        tracing::warn!("the agent stopped before this run's after hooks ran; running them now");
        let snapshot = entries
            .iter()
            .find(|e| e.action == Action::Create)
            .and_then(|e| Some((e.snapshot()?.to_string(), e.snapshot_name.clone()?)));
        let facts = Facts {
            job: &run.job,
            server: run.server_id.to_string(),
            run: run.id.to_string(),
            trigger: run.trigger.as_str(),
            snapshot,
            error: None,
        };
        let mut ran = Vec::new();
        let mut again = false;
        for e in owed {
            let begun = e.outcome.as_deref().is_some_and(|o| o.starts_with(BEGUN));
            again |= begun;
            let note = if begun {
                "run at the next start, again: it had begun when the agent stopped"
            } else {
                "run at the next start: the agent stopped before it"
            };
            let Some(command) = e.detail.as_deref().and_then(Command::from_json) else {
                let why = "its command could not be read back from the journal";
                self.db
                    .resolve(e.id, State::Error, None, Some(why), self.now())
                    .await?;
                continue;
            };
            let t = timeout.unwrap_or(hooks::DEFAULT_TIMEOUT);
            let r = self.run_hook(e.id, Phase::After, &command, &facts, t, Some(note));
            ran.push(r.await?);
        }
        if self.alerts.is_some() {
            let what = if again {
                "the agent stopped while this run's after hooks ran; they were run again \
                 when the agent started again (they may have run twice)"
            } else {
                "the agent stopped after this run's before hooks ran and before its after \
                 hooks did; they were run when the agent started again"
            };
            let a = text::hook(&run.job, run.server_id, run.id, what, &ran, self.now());
            self.db.queue_alert(&a).await?;
        }
        Ok(())
    }
}
