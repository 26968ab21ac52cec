-- no-transaction
-- Hooks are journal entries too: a `before`, `after` or `on_failure` command is an intent
-- (its command, as the configuration wrote it, in `detail`) committed before it starts,
-- resolved with its exit status and the end of its output. The `after` entries are
-- written together with the first `before`, so that a crash between them leaves the
-- obligation to thaw in the journal. SQLite cannot change a CHECK constraint in place:
-- `journal` is rebuilt as `runs` was (foreign keys off, one transaction, safe to repeat).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

DROP TABLE IF EXISTS journal_rebuilt;
CREATE TABLE journal_rebuilt (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    server_id INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('lock', 'list', 'create', 'adopt', 'poll', 'delete', 'restore', 'vanished', 'finish', 'before', 'after', 'on_failure')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'ok', 'error', 'unknown')),
    snapshot_id INTEGER,
    snapshot_name TEXT,
    at INTEGER NOT NULL,
    resolved_at INTEGER,
    detail TEXT,
    outcome TEXT
);
INSERT INTO journal_rebuilt (id, run_id, server_id, action, state, snapshot_id, snapshot_name, at, resolved_at, detail, outcome)
SELECT id, run_id, server_id, action, state, snapshot_id, snapshot_name, at, resolved_at, detail, outcome
FROM journal;
DROP TABLE journal;
ALTER TABLE journal_rebuilt RENAME TO journal;

CREATE INDEX journal_by_run ON journal (run_id, action);
CREATE INDEX journal_by_snapshot ON journal (snapshot_id) WHERE snapshot_id IS NOT NULL;
CREATE INDEX journal_by_name ON journal (snapshot_name) WHERE snapshot_name IS NOT NULL;
CREATE INDEX journal_unresolved ON journal (server_id) WHERE state IN ('pending', 'unknown');

COMMIT;
PRAGMA foreign_keys = ON;
