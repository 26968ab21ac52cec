-- no-transaction
-- A restore is recorded as 'started': the API only starts it and offers no way to see it
-- complete. It records the safety snapshot taken before it, and a note for the operator
-- (how to undo it). SQLite cannot change a CHECK constraint in place, so `runs` is rebuilt with the
-- documented procedure (foreign keys off so the journal's rows are not cascaded away,
-- everything in one transaction). Written to be run again safely: sqlx records a
-- no-transaction migration only after it ends, so a crash in between repeats it.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

DROP TABLE IF EXISTS runs_rebuilt;
CREATE TABLE runs_rebuilt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    server_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('snapshot', 'restore')),
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
INSERT INTO runs_rebuilt (id, job, server_id, kind, trigger, status, scheduled_for, started_at,
    finished_at, owner, step, snapshot_name, snapshot_id, snapshot_status, snapshot_created_at,
    snapshot_completed_at, error)
SELECT id, job, server_id, kind, trigger,
       CASE WHEN kind = 'restore' AND status = 'succeeded' THEN 'started' ELSE status END,
       scheduled_for, started_at, finished_at, owner, step, snapshot_name, snapshot_id,
       snapshot_status, snapshot_created_at, snapshot_completed_at, error
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_rebuilt RENAME TO runs;

CREATE INDEX runs_by_job ON runs (job, id DESC);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
CREATE INDEX runs_succeeded_by_job ON runs (job, id DESC) WHERE status = 'succeeded';

COMMIT;
PRAGMA foreign_keys = ON;
