//! How `agent run` stops: its runs get most of the grace, then are told to stop at a
//! safe point; its own background work is stopped too and given a few seconds.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{Control, Daemon, Loop, notify};

/// How long a stop waits for the daemon's background work, after its runs.
const CHORES_GRACE: Duration = Duration::from_secs(5);

/// Resolves on the next [`Control::Stop`]; never, if nobody can send one any more.
async fn second_stop(control: &mut mpsc::UnboundedReceiver<Control>) {
    while let Some(c) = control.recv().await {
        if c == Control::Stop {
            return;
        }
    }
    std::future::pending::<()>().await;
}

impl Daemon {
    /// SIGTERM: no new runs; running ones get four fifths of the `grace` (of the database's
    /// [`crate::timing::Timing`]) to finish, then are
    /// told to stop where they are (running the `after` hooks they owe) and get the last
    /// fifth for it; what is still running is left recorded as running, for the next
    /// start to resume. A second stop tells them to stop at once.
    pub(super) async fn drain(&self, lp: Loop, control: &mut mpsc::UnboundedReceiver<Control>) {
        notify::send(&[notify::State::Stopping]);
        self.timer.disarm_all().await;
        lp.tracker.close();
        let left = lp.running.len();
        if left > 0 {
            let grace = crate::human::Secs(self.db.timing().grace);
            tracing::info!(
                "stopping: waiting up to {grace} for {left} running job(s); a second signal stops at once"
            );
        }
        let grace = self.db.timing().grace;
        let reserve = grace / 5;
        let finished = tokio::select! {
            r = tokio::time::timeout(grace - reserve, lp.tracker.wait()) => r.is_ok(),
            () = second_stop(control) => false,
        };
        if !finished {
            self.services.executor.stop_runs();
        }
        let cut_short = !finished
            && tokio::time::timeout(reserve, lp.tracker.wait())
                .await
                .is_err();
        if cut_short {
            tracing::warn!(
                "stopping with {} job(s) still running; they stay recorded as running and are resumed at the next start",
                lp.running.len()
            );
        }
        // The daemon's own background work stops like runs do (a resumption at its next
        // safe point; a delivery, registration or textfile write ends on its own) and is
        // given a few seconds; what it leaves is in the database for the next start.
        lp.chores.close();
        if !lp.chores.is_empty() {
            self.services.executor.stop_runs();
        }
        if tokio::time::timeout(CHORES_GRACE, lp.chores.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "stopping with background work still going (resumption or delivery); the next start picks it up"
            );
        }
    }
}
