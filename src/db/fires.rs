//! Fire claims: each scheduled fire (job, scheduled time) is run once, by whichever agent
//! on the database records its start first.

use super::runs::insert_run;
use super::unit::Part;
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
        let claimed = if again {
            self.claim_again(&run, owner, at, &what).await?
        } else {
            // A fire another agent took is answered from a read, without the write lock:
            // several daemons each queue every fire behind their slots and most claims
            // lose; a losing write held a slot and a place in a write group for nothing.
            // A taken fire stays taken, so the read can only spare a write that would
            // change nothing; one it finds free is decided by the write.
            if let Some(taken) = self.taken_by(at, run.job, &what).await? {
                return Ok(Err(taken));
            }
            // The claim, the run's row and the claim's run id are one write: of several
            // agents firing at once, the first to commit has the row, and the others' claims
            // change nothing (and stop there).
            let did = self
                .write_all(
                    &what,
                    vec![
                        Part::new(
                            self.q("INSERT INTO fires (job, scheduled_for, run_id) VALUES ($1, $2, 0) \
                                    ON CONFLICT DO NOTHING")
                                .bind(run.job)
                                .bind(at),
                        )
                        .or_stop(),
                        Part::returning(insert_run(self.engine(), &run, owner)),
                        Part::new(
                            self.q(&format!(
                                "UPDATE fires SET run_id = {} WHERE job = $1 AND scheduled_for = $2",
                                self.engine().last_id()
                            ))
                            .bind(run.job)
                            .bind(at),
                        ),
                    ],
                )
                .await?;
            did.get(1)
                .and_then(|d| d.ids.first())
                .map(|&id| RunId::new(id))
        };
        match claimed {
            Some(id) => Ok(Ok(id)),
            None => match self.taken_by(at, run.job, &what).await? {
                Some(taken) => Ok(Err(taken)),
                None => Err(self.err(&what)(sqlx::Error::RowNotFound)),
            },
        }
    }

    /// A fire run already, claimed again if its clock came back to it (see
    /// [`Database::claim_fire_again`]): the run's id, or `None` when it stays taken.
    async fn claim_again(
        &self,
        run: &NewRun<'_>,
        owner: &Owner,
        at: i64,
        what: &str,
    ) -> DbResult<Option<RunId>> {
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
        .map_err(self.err(what))?
            == 1;
        let claimed = claimed
            || tx
                .q("UPDATE fires SET run_id = 0 WHERE job = $1 AND scheduled_for = $2 \
                    AND EXISTS (SELECT 1 FROM runs r WHERE r.id = fires.run_id AND r.status <> 'running') \
                    AND EXISTS (SELECT 1 FROM runs l WHERE l.job = fires.job AND l.id > fires.run_id \
                        AND l.scheduled_for > fires.scheduled_for AND l.started_at > $3)")
                .bind(run.job)
                .bind(at)
                .bind(ms(run.started_at))
                .execute(&mut tx)
                .await
                .map_err(self.err(what))?
                == 1;
        if !claimed {
            return Ok(None);
        }
        let id = insert_run(self.engine(), run, owner)
            .scalar(&mut tx)
            .await
            .map_err(self.err(what))?;
        tx.q("UPDATE fires SET run_id = $1 WHERE job = $2 AND scheduled_for = $3")
            .bind(id)
            .bind(run.job)
            .bind(at)
            .execute(&mut tx)
            .await
            .map_err(self.err(what))?;
        tx.commit().await.map_err(self.err(what))?;
        Ok(Some(id))
    }

    /// The run that has the fire of `job` at `at` and its agent's host, if it is taken.
    async fn taken_by(&self, at: i64, job: &str, what: &str) -> DbResult<Option<FireTaken>> {
        let row: Option<(RunId, Option<String>)> = self
            .q(
                "SELECT f.run_id, r.owner FROM fires f LEFT JOIN runs r ON r.id = f.run_id \
                 WHERE f.job = $1 AND f.scheduled_for = $2",
            )
            .bind(job)
            .bind(at)
            .fetch_optional(self)
            .await
            .map_err(self.err(what))?;
        Ok(row.map(|(run_id, owner)| FireTaken {
            run_id,
            host: owner
                .map(|o| crate::identity::host_of(&o))
                .unwrap_or_default(),
        }))
    }
}
