//! The safety invariants, checked after a scenario from the simulator's log of what
//! happened (the API's side) and the agent's history and journal (the agent's side).
//! Every violation is reported, not just the first.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use vps_snapshot_agent::api::SnapshotStatus;
use vps_snapshot_agent::db::{Action, Database, Engine, RunKind, RunStatus, RunTrigger, State};
use vps_snapshot_agent::domain::{RunId, SnapshotId};
use vps_snapshot_agent::sim::{Event, Simulator};
use vps_snapshot_agent::snapshot::mark::Marker;
use vps_snapshot_agent::snapshot::naming;

use crate::store::raw;

pub struct Expect {
    /// Alerts are configured, so every failure must have one queued or delivered.
    pub alerts: bool,
    pub repeat_after: Duration,
    /// The API token, which must appear nowhere.
    pub token: String,
    /// The most deletes any run may carry out.
    pub max_deletions_per_run: usize,
    /// From this journal entry on, the config allows a different cap: a run with deletes
    /// journaled after it (one resumed under the new config) may use that one.
    pub raised: Option<(i64, usize)>,
    /// The last run recorded before each step back of the wall clock. After one, the fires
    /// come round again, and one already run is run again only where a later fire of its
    /// job ran in between (the daemon's documented rule).
    pub clock_back: Vec<RunId>,
}

/// Checks every invariant; panics listing all that fail.
pub async fn check(sim: &Simulator, db: &Database, expect: &Expect) {
    let bad = violations(sim, db, expect).await;
    assert!(
        bad.is_empty(),
        "invariants violated:\n  {}",
        bad.join("\n  ")
    );
}

/// Every invariant that does not hold.
pub async fn violations(sim: &Simulator, db: &Database, expect: &Expect) -> Vec<String> {
    let mut bad = Vec::new();
    let events = sim.events();
    let runs = db.history(None, u32::MAX).await.unwrap();
    let journal: Vec<Row> = raw!(
        db,
        sqlx::query_as(
            "SELECT id, run_id, action, state, snapshot_id, detail, at FROM journal ORDER BY id"
        ),
        fetch_all
    )
    .unwrap();
    deletions(&events, &runs, &journal, db, expect, &mut bad).await;
    creations(&events, &runs, &mut bad);
    fires_once(&runs, &expect.clock_back, &mut bad);
    endings(&runs, &journal, &mut bad);
    thaws(&runs, &journal, &mut bad);
    no_delete_on_an_odd_listing(&journal, &mut bad);
    refused_restores_touched_nothing(&runs, &journal, &mut bad);
    drift_alerts(&events, &runs, &journal, &mut bad);
    if expect.alerts {
        failures_alerted(&runs, db, expect, &mut bad).await;
    }
    no_token_in_rows(db, &expect.token, &mut bad).await;
    bad
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    run_id: RunId,
    action: Action,
    state: State,
    snapshot_id: Option<SnapshotId>,
    detail: Option<String>,
    /// When it was recorded.
    at: vps_snapshot_agent::db::StoredTime,
}

/// The API's deletes on the agent's behalf: only its own (made through the API, or carrying
/// a mark that verifies), never pinned, in progress or the newest completed of its job;
/// each with an intent in the journal; at most `max_deletions_per_run` per run; none after
/// a snapshot that did not complete, except to make room.
async fn deletions(
    events: &[Event],
    runs: &[vps_snapshot_agent::db::Run],
    journal: &[Row],
    db: &Database,
    expect: &Expect,
    bad: &mut Vec<String>,
) {
    let marker = Marker::new(expect.token.as_bytes());
    let created: HashSet<SnapshotId> = events
        .iter()
        .filter_map(|e| match e {
            Event::Created { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let mut per_run: HashMap<RunId, Vec<String>> = HashMap::new();
    for e in events {
        let Event::Deleted {
            id,
            server_id,
            name,
            description,
            status,
            external: false,
            newer_completed_sibling,
        } = e
        else {
            continue;
        };
        let ours = naming::parse(name).is_some()
            && (created.contains(id) || marker.verifies(*server_id, name, description.as_deref()));
        if !ours {
            bad.push(format!("deleted snapshot {id} ({name}), not the agent's"));
        }
        if *status == SnapshotStatus::InProgress {
            bad.push(format!("deleted snapshot {id} while in progress"));
        }
        if *status == SnapshotStatus::Completed && !newer_completed_sibling {
            bad.push(format!(
                "deleted snapshot {id} ({name}), the newest completed one of its job"
            ));
        }
        let intents: Vec<&Row> = journal
            .iter()
            .filter(|r| r.action == Action::Delete && r.snapshot_id == Some(*id))
            .collect();
        // The request the API carried out: the intent not refused (an earlier run's
        // refused attempt is not it), the last if several.
        let sent = intents
            .iter()
            .rev()
            .find(|r| r.state != State::Error)
            .or(intents.last());
        match sent {
            None => bad.push(format!(
                "deleted snapshot {id} with no intent in the journal"
            )),
            Some(r) => {
                // Pinned as of the delete's intent: a pin that had run out by then (a
                // restore's safety pin) did not protect it, one still running did.
                let then = r.at.0;
                if db.pins(then).await.unwrap().contains(id) {
                    bad.push(format!("deleted snapshot {id}, pinned at that moment"));
                }
                per_run.entry(r.run_id).or_default().push(format!(
                    "{id} ({} {})",
                    r.state,
                    r.detail.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    for (run, deleted) in per_run {
        let cap = match expect.raised {
            Some((from, cap))
                if journal
                    .iter()
                    .any(|r| r.run_id == run && r.action == Action::Delete && r.id >= from) =>
            {
                cap
            }
            _ => expect.max_deletions_per_run,
        };
        if deleted.len() > cap {
            bad.push(format!(
                "run {run} deleted {} snapshots (max_deletions_per_run {cap}): {}",
                deleted.len(),
                deleted.join(", ")
            ));
        }
    }
    for r in journal
        .iter()
        .filter(|r| r.action == Action::Delete && r.state == State::Ok)
    {
        let Some(run) = runs.iter().find(|x| x.id == r.run_id) else {
            continue;
        };
        let completed =
            run.snapshot.as_ref().and_then(|s| s.status.as_deref()) == Some("completed");
        if !completed && r.detail.as_deref() != Some("make room") {
            bad.push(format!(
                "run {} ({:?}) deleted after its snapshot did not complete: {:?}",
                r.run_id, run.status, r.detail
            ));
        }
    }
}

/// No delete was decided on a listing with anomalies: the listing a run had in hand
/// when it asked for each delete (the last one it recorded before) was consistent.
fn no_delete_on_an_odd_listing(journal: &[Row], bad: &mut Vec<String>) {
    for d in journal.iter().filter(|r| r.action == Action::Delete) {
        let listed = journal
            .iter()
            .rfind(|r| r.run_id == d.run_id && r.action == Action::List && r.id < d.id);
        if let Some(l) = listed
            && l.detail
                .as_deref()
                .is_some_and(|t| t.contains("inconsistent"))
        {
            bad.push(format!(
                "run {} deleted {:?} on a listing it knew was inconsistent: {:?}",
                d.run_id, d.snapshot_id, l.detail
            ));
        }
    }
}

/// A restore refused for its target ("nothing was changed") asked for nothing: no
/// create, delete or restore of its run is in the journal.
fn refused_restores_touched_nothing(
    runs: &[vps_snapshot_agent::db::Run],
    journal: &[Row],
    bad: &mut Vec<String>,
) {
    let refused = runs.iter().filter(|r| {
        r.kind == vps_snapshot_agent::db::RunKind::Restore
            && r.error
                .as_deref()
                .is_some_and(|e| e.contains("nothing was changed"))
    });
    for r in refused {
        let touched: Vec<String> = journal
            .iter()
            .filter(|j| {
                j.run_id == r.id
                    && matches!(j.action, Action::Create | Action::Delete | Action::Restore)
            })
            .map(|j| format!("{} {:?}", j.action, j.snapshot_id))
            .collect();
        if !touched.is_empty() {
            bad.push(format!(
                "restore run {} was refused for its target yet asked for {touched:?}",
                r.id
            ));
        }
    }
}

/// Every `before` has its `after`: a run no longer running owes no `after` (each one
/// recorded with the first `before` was run, or run at the next start).
fn thaws(runs: &[vps_snapshot_agent::db::Run], journal: &[Row], bad: &mut Vec<String>) {
    for r in journal
        .iter()
        .filter(|r| r.action == Action::After && r.state == State::Pending)
    {
        let running = runs
            .iter()
            .any(|x| x.id == r.run_id && x.status == RunStatus::Running);
        if !running {
            bad.push(format!(
                "run {} ended owing its after hook {:?}",
                r.run_id, r.detail
            ));
        }
    }
}

/// No name created twice, and every snapshot created in the agent's pattern has a run.
fn creations(events: &[Event], runs: &[vps_snapshot_agent::db::Run], bad: &mut Vec<String>) {
    let mut created: HashMap<&str, usize> = HashMap::new();
    for e in events {
        if let Event::Created { name, .. } = e {
            *created.entry(name.as_str()).or_default() += 1;
        }
    }
    for (name, n) in &created {
        if *n > 1 {
            bad.push(format!("snapshot name {name} created {n} times"));
        }
        let recorded = match naming::parse(name) {
            None => true,
            // A restore's safety snapshot: the restore run of that job made it.
            Some(p) if p.pre_restore => runs
                .iter()
                .any(|r| r.kind == RunKind::Restore && r.job == p.job),
            Some(_) => runs
                .iter()
                .any(|r| r.snapshot.as_ref().is_some_and(|s| s.name == *name)),
        };
        if !recorded {
            bad.push(format!("snapshot {name} created but no run records it"));
        }
    }
    // A snapshot run makes at most one; so does a restore (its safety snapshot).
    let snapshot_runs = runs.len();
    if created.len() > snapshot_runs {
        bad.push(format!(
            "{} snapshots created by {snapshot_runs} runs",
            created.len()
        ));
    }
}

/// A scheduled fire (or its catch-up) is run once, however many agents fired it; again
/// only after the wall clock went back past it, where a later fire of its job ran between
/// the two (`clock_back`: the last run before each step back).
fn fires_once(runs: &[vps_snapshot_agent::db::Run], clock_back: &[RunId], bad: &mut Vec<String>) {
    let fired = |r: &vps_snapshot_agent::db::Run| {
        matches!(r.trigger, RunTrigger::Schedule | RunTrigger::CatchUp)
            .then_some(r.scheduled_for)
            .flatten()
    };
    let mut fires: HashMap<(&str, i64), Vec<&vps_snapshot_agent::db::Run>> = HashMap::new();
    for r in runs {
        if let Some(at) = fired(r) {
            fires
                .entry((r.job.as_str(), at.timestamp_millis()))
                .or_default()
                .push(r);
        }
    }
    for ((job, at), mut again) in fires {
        again.sort_by_key(|r| r.id);
        for pair in again.windows(2) {
            let (a, b) = (pair[0].id, pair[1].id);
            let stepped_back = clock_back.iter().any(|m| a <= *m && *m < b);
            let later_ran = runs.iter().any(|c| {
                c.job == job
                    && a < c.id
                    && c.id < b
                    && fired(c).is_some_and(|t| t.timestamp_millis() > at)
            });
            if !(stepped_back && later_ran) {
                bad.push(format!(
                    "the fire of {job} at {at} ms was run again (runs {a} and {b}){}",
                    if stepped_back {
                        " after the clock went back, though no later fire of the job ran between"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
}

/// No run left running, none finished twice.
fn endings(runs: &[vps_snapshot_agent::db::Run], journal: &[Row], bad: &mut Vec<String>) {
    for r in runs.iter().filter(|r| r.status == RunStatus::Running) {
        bad.push(format!(
            "run {} of {} left running (step {}, owner {})",
            r.id, r.job, r.step, r.owner
        ));
    }
    let mut finished: HashMap<RunId, usize> = HashMap::new();
    for r in journal.iter().filter(|r| r.action == Action::Finish) {
        *finished.entry(r.run_id).or_default() += 1;
    }
    for (run, n) in finished {
        if n > 1 {
            bad.push(format!("run {run} finished {n} times"));
        }
    }
}

/// Every snapshot reported vanished was made by that run's job on that run's server
/// through the API, and deleted by someone else.
fn drift_alerts(
    events: &[Event],
    runs: &[vps_snapshot_agent::db::Run],
    journal: &[Row],
    bad: &mut Vec<String>,
) {
    for r in journal.iter().filter(|r| r.action == Action::Vanished) {
        let Some(id) = r.snapshot_id else {
            bad.push(format!(
                "run {} reported a vanished snapshot without an id",
                r.run_id
            ));
            continue;
        };
        let run = runs.iter().find(|x| x.id == r.run_id);
        let made = events.iter().any(|e| {
            matches!(e, Event::Created { id: i, server_id, name }
                if *i == id
                    && run.is_some_and(|run| *server_id == run.server_id
                        && naming::parse(name).is_some_and(|p| p.job == run.job)))
        });
        let taken = events
            .iter()
            .any(|e| matches!(e, Event::Deleted { id: i, external: true, .. } if *i == id));
        if !made {
            bad.push(format!(
                "run {} reported snapshot {id} vanished, but its job never made it on its server",
                r.run_id
            ));
        }
        if !taken {
            bad.push(format!(
                "run {} reported snapshot {id} vanished, but nobody else deleted it",
                r.run_id
            ));
        }
    }
}

/// Every failure has an alert queued or delivered (or one for the same job within
/// repeat_after, which it repeats).
async fn failures_alerted(
    runs: &[vps_snapshot_agent::db::Run],
    db: &Database,
    expect: &Expect,
    bad: &mut Vec<String>,
) {
    let alerts: Vec<(Option<String>, i64)> = raw!(
        db,
        sqlx::query_as("SELECT job, created_at FROM alerts WHERE kind IN ('failed', 'no_room')"),
        fetch_all
    )
    .unwrap();
    let window = expect.repeat_after.as_millis() as i64;
    for r in runs
        .iter()
        .filter(|r| r.status == RunStatus::Failed && r.kind == RunKind::Snapshot)
    {
        let done = r.finished_at.unwrap().timestamp_millis();
        let covered = alerts.iter().any(|(job, at)| {
            job.as_deref() == Some(r.job.as_str()) && *at <= done && done - *at <= window
        });
        if !covered {
            bad.push(format!("failed run {} of {} has no alert", r.id, r.job));
        }
    }
}

/// No text column of any table holds the token.
async fn no_token_in_rows(db: &Database, token: &str, bad: &mut Vec<String>) {
    let columns: Vec<(String, String)> = match db.engine() {
        Engine::Sqlite => raw!(
            db,
            sqlx::query_as(
                "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type = 'table' AND p.type = 'TEXT'"
            ),
            fetch_all
        ),
        Engine::Postgres => raw!(
            db,
            sqlx::query_as(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND data_type = 'text'"
            ),
            fetch_all
        ),
    }
    .unwrap();
    let find = match db.engine() {
        Engine::Sqlite => "instr",
        Engine::Postgres => "strpos",
    };
    for (table, column) in columns {
        let sql = format!("SELECT count(*) FROM \"{table}\" WHERE {find}(\"{column}\", $1) > 0");
        let (n,): (i64,) = raw!(
            db,
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(token),
            fetch_one
        )
        .unwrap();
        if n > 0 {
            bad.push(format!("the token is in {table}.{column} ({n} rows)"));
        }
    }
}

/// Every row of every table of `db`, as text: what a scan for secrets reads where the
/// database is no file of its own (PostgreSQL).
pub async fn all_rows(db: &Database) -> Vec<(String, String)> {
    let Some(pool) = db.postgres_pool() else {
        return Vec::new();
    };
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for (table,) in tables {
        let sql = format!("SELECT t::text FROM \"{table}\" t");
        let texts: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.extend(texts.into_iter().map(|(t,)| (table.clone(), t)));
    }
    rows
}

/// Every 8-character piece of `secret`: what the agent must keep out of everything it
/// writes, as much as the whole.
pub fn pieces(secret: &str) -> impl Iterator<Item = &str> {
    (0..=secret.len().saturating_sub(8)).filter_map(|i| secret.get(i..i + 8))
}

/// No file under `dir` (the database, its WAL, logs, configs) holds the token.
pub fn no_token_in_files(dir: &std::path::Path, token: &str) {
    let found = files_with_token(dir, token);
    assert!(found.is_empty(), "the token is in {found:?}");
}

/// The files under `dir` that hold `token`.
pub fn files_with_token(dir: &std::path::Path, token: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_with_token(&path, token));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        if memchr::memmem::find(&bytes, token.as_bytes()).is_some() {
            found.push(path.display().to_string());
        }
    }
    found
}
