-- The alert outbox: written in the transaction that records the failure, then mailed.
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT,
    server_id INTEGER,
    run_id INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    sent_at INTEGER,
    last_error TEXT
);

CREATE INDEX alerts_pending ON alerts (next_attempt_at) WHERE sent_at IS NULL;
CREATE INDEX alerts_by_job ON alerts (job, kind, id DESC);
