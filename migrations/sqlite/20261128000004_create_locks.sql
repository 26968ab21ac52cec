-- Per-server locks shared by every agent process using this database.
CREATE TABLE locks (
    server_id INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,
    run_id INTEGER,
    acquired_at INTEGER NOT NULL,
    -- Renewed while held; a holder on another host is dead once this passes.
    expires_at INTEGER NOT NULL
);
