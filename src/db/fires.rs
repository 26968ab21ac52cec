//! Fire claims: each scheduled fire (job, scheduled time) is run once, by whichever agent
//! on the database records its start first.

use super::runs::insert_run;
use super::sql::On;
use super::{Database, DbResult, NewRun, ms};
use crate::domain::RunId;
use crate::identity::Owner;

/// A fire another run has claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireTaken {
    pub run_id: RunId,
    /// The host of the agent running it (or that ran it).
    pub host: String,
}

impl Database {
    /// Starts the run of a scheduled fire (`run.scheduled_for`) unless a run of that fire
    /// was started already, by this agent or another on the database: the claim and the
    /// run's row are one transaction, so of several agents firing at once exactly one
    /// runs it. `Err` is the run that has it.
    pub async fn claim_fire(
        &self,
        run: NewRun<'_>,
        owner: &Owner,
    ) -> DbResult<Result<RunId, FireTaken>> {
        self.claim(run, owner, false).await
    }

    /// [`Database::claim_fire`] for a fire the wall clock came back to (it went back past
    /// it: NTP, a hand-set clock): a fire already run is run again when its run has ended
    /// and a run of the job for a later fire was started since, at a wall time the clock
    /// has not reached again — the clock had moved on past it before it went back, and
    /// this is a new moment. (A fire merely delivered late, or to a second daemon, after
    /// the later one ran, finds that run in its past and is not run again.) One that is still running, or the latest fire
    /// the job ran (a step back of less than a period), is not run again; of several
    /// agents taking it at once, one does.
    pub async fn claim_fire_again(
        &self,
        run: NewRun<'_>,
        owner: &Owner,
    ) -> DbResult<Result<RunId, FireTaken>> {
        self.claim(run, owner, true).await
    }

    async fn claim(
        &self,
        run: NewRun<'_>,
        owner: &Owner,
        again: bool,
    ) -> DbResult<Result<RunId, FireTaken>> {
        let what = format!("cannot claim the fire of {}", run.job);
        let at = run.scheduled_for.map_or(ms(run.started_at), ms);
        // The transaction holds the write lock from its start, so a second agent's claim
        // waits for the first's commit and then finds the row.
        let mut tx = self.begin().await?;
        let claimed = tx.q(
            "INSERT INTO fires (job, scheduled_for, run_id) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        )
        .bind(run.job)
        .bind(at)
        .execute(&mut tx)
        .await
        .map_err(self.err(what.clone()))?
            == 1;
        let claimed = claimed
            || again
                && tx
                    .q("UPDATE fires SET run_id = 0 WHERE job = $1 AND scheduled_for = $2 \
                        AND EXISTS (SELECT 1 FROM runs r WHERE r.id = fires.run_id AND r.status <> 'running') \
                        AND EXISTS (SELECT 1 FROM runs l WHERE l.job = fires.job AND l.id > fires.run_id \
                            AND l.scheduled_for > fires.scheduled_for AND l.started_at > $3)")
                    .bind(run.job)
                    .bind(at)
                    .bind(ms(run.started_at))
                    .execute(&mut tx)
                    .await
                    .map_err(self.err(what.clone()))?
                    == 1;
        if !claimed {
            let (run_id, owner): (RunId, Option<String>) = tx
                .q(
                    "SELECT f.run_id, r.owner FROM fires f LEFT JOIN runs r ON r.id = f.run_id \
                 WHERE f.job = $1 AND f.scheduled_for = $2",
                )
                .bind(run.job)
                .bind(at)
                .fetch_one(&mut tx)
                .await
                .map_err(self.err(what))?;
            return Ok(Err(FireTaken {
                run_id,
                host: owner
                    .map(|o| crate::identity::host_of(&o))
                    .unwrap_or_default(),
            }));
        }
        let id = insert_run(On::Tx(&mut tx), &run, owner)
            .await
            .map_err(self.err(what.clone()))?;
        tx.q("UPDATE fires SET run_id = $1 WHERE job = $2 AND scheduled_for = $3")
            .bind(id)
            .bind(run.job)
            .bind(at)
            .execute(&mut tx)
            .await
            .map_err(self.err(what.clone()))?;
        tx.commit().await.map_err(self.err(what))?;
        Ok(Ok(id))
    }
}
