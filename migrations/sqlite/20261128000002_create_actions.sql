-- Every API action of a run, written as it happens.
CREATE TABLE actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('lock', 'list', 'create', 'adopt', 'poll', 'delete', 'restore')),
    snapshot_id INTEGER,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'error', 'unknown', 'skipped')),
    detail TEXT
);

CREATE INDEX actions_by_run ON actions (run_id, action);
