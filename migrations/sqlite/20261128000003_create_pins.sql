-- Pinned snapshots are never rotated out.
CREATE TABLE pins (
    snapshot_id INTEGER PRIMARY KEY,
    pinned_at INTEGER NOT NULL
);
