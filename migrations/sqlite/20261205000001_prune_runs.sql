-- no-transaction
-- `agent prune` records its runs as kind 'prune'. SQLite cannot change a CHECK
-- constraint in place, so `runs` is rebuilt as 20261130000001 did it (foreign keys off so
-- that the journal's rows are not cascaded away, all in one transaction, safe to run
-- again). Dropping the old table drops its indexes and triggers: they are made again,
-- unchanged.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

DROP TABLE IF EXISTS runs_rebuilt;
CREATE TABLE runs_rebuilt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    server_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('snapshot', 'restore', 'prune')),
    trigger TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catch_up')),
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'started')),
    scheduled_for INTEGER,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    owner TEXT NOT NULL,
    step TEXT NOT NULL DEFAULT 'start',
    snapshot_name TEXT,
    snapshot_id INTEGER,
    snapshot_status TEXT,
    snapshot_created_at INTEGER,
    snapshot_completed_at INTEGER,
    error TEXT,
    safety_snapshot_id INTEGER,
    note TEXT,
    CHECK (status <> 'started' OR kind = 'restore')
);
INSERT INTO runs_rebuilt SELECT id, job, server_id, kind, trigger, status, scheduled_for,
    started_at, finished_at, owner, step, snapshot_name, snapshot_id, snapshot_status,
    snapshot_created_at, snapshot_completed_at, error, safety_snapshot_id, note
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_rebuilt RENAME TO runs;

CREATE INDEX runs_by_job ON runs (job, id DESC);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
CREATE INDEX runs_succeeded_by_job ON runs (job, id DESC) WHERE status = 'succeeded';

CREATE TRIGGER job_state_run_started AFTER INSERT ON runs WHEN NEW.kind = 'snapshot'
BEGIN
    INSERT OR IGNORE INTO job_state (job) VALUES (NEW.job);
    UPDATE job_state SET last_run_id = max(coalesce(last_run_id, 0), NEW.id) WHERE job = NEW.job;
END;

CREATE TRIGGER job_state_run_succeeded AFTER UPDATE OF status ON runs
WHEN NEW.kind = 'snapshot' AND NEW.status = 'succeeded' AND OLD.status <> 'succeeded'
BEGIN
    INSERT OR IGNORE INTO job_state (job) VALUES (NEW.job);
    UPDATE job_state SET last_success_at = max(coalesce(last_success_at, 0), NEW.finished_at)
    WHERE job = NEW.job;
END;

CREATE TRIGGER job_state_run_ended AFTER UPDATE OF status ON runs
WHEN NEW.kind = 'snapshot' AND OLD.status = 'running'
     AND NEW.status IN ('succeeded', 'failed', 'interrupted')
BEGIN
    INSERT OR IGNORE INTO job_state (job) VALUES (NEW.job);
    UPDATE job_state
    SET timeline = substr(timeline || CASE NEW.status WHEN 'succeeded' THEN 's'
                                                      WHEN 'failed' THEN 'f' ELSE 'i' END, -30)
    WHERE job = NEW.job;
END;

COMMIT;
PRAGMA foreign_keys = ON;
