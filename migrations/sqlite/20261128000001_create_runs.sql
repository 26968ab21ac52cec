-- One row per job run (snapshot or restore). Times are Unix milliseconds, UTC.
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    server_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('snapshot', 'restore')),
    trigger TEXT NOT NULL CHECK (trigger IN ('schedule', 'manual', 'catch_up')),
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    -- The fire time a scheduled or caught-up run belongs to.
    scheduled_for INTEGER,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    -- The process running it: host/pid/start time, to tell a live run from a dead one.
    owner TEXT NOT NULL,
    -- The last step reached: lock, list, make_room, create, poll, rotate, done.
    step TEXT NOT NULL DEFAULT 'start',
    -- Written before the create request is sent, so a crash can find the snapshot by name.
    snapshot_name TEXT,
    snapshot_id INTEGER,
    snapshot_status TEXT,
    snapshot_created_at INTEGER,
    snapshot_completed_at INTEGER,
    error TEXT
);

CREATE INDEX runs_by_job ON runs (job, id DESC);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
CREATE INDEX runs_succeeded_by_job ON runs (job, id DESC) WHERE status = 'succeeded';
