-- The run journal, written ahead of every effect. A create, delete or restore is a row in
-- state 'pending', committed before the request is sent, and resolved with what happened:
-- 'ok', 'error' (refused: not carried out) or 'unknown' (the answer was lost: it may have
-- been carried out). Observations (lock, list, poll, adopt, vanished) and the run's end
-- (finish) are rows resolved at once. Resume, drift detection and history read this
-- table; it replaces `actions`, whose rows it takes over.
CREATE TABLE journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    -- The server the entry is about (a job's server can change between runs).
    server_id INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('lock', 'list', 'create', 'adopt', 'poll', 'delete', 'restore', 'vanished', 'finish')),
    state TEXT NOT NULL CHECK (state IN ('pending', 'ok', 'error', 'unknown')),
    snapshot_id INTEGER,
    -- For a create: the name chosen before the request, the only handle on a lost answer.
    snapshot_name TEXT,
    at INTEGER NOT NULL,
    resolved_at INTEGER,
    -- Why (an effect's reason, an observation's content).
    detail TEXT,
    -- What became of an effect, in the API's or the settling run's words.
    outcome TEXT
);

INSERT INTO journal (id, run_id, server_id, action, state, snapshot_id, snapshot_name, at, resolved_at, detail)
SELECT a.id, a.run_id, r.server_id,
       CASE WHEN a.action = 'delete' AND a.outcome = 'skipped' THEN 'vanished' ELSE a.action END,
       CASE a.outcome WHEN 'skipped' THEN 'ok' ELSE a.outcome END,
       a.snapshot_id,
       CASE WHEN a.action IN ('create', 'adopt') THEN r.snapshot_name END,
       a.at, a.at, a.detail
FROM actions a JOIN runs r ON r.id = a.run_id;

-- A run that recorded its snapshot's name but no create: the process died with the
-- request possibly sent. Keep that intent.
INSERT INTO journal (run_id, server_id, action, state, snapshot_name, at, detail)
SELECT r.id, r.server_id, 'create', CASE r.status WHEN 'running' THEN 'pending' ELSE 'unknown' END,
       r.snapshot_name, r.started_at, 'recorded before the journal existed'
FROM runs r
WHERE r.kind = 'snapshot' AND r.snapshot_name IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.run_id = r.id AND j.action IN ('create', 'adopt'));

DROP TABLE actions;

CREATE INDEX journal_by_run ON journal (run_id, action);
CREATE INDEX journal_by_snapshot ON journal (snapshot_id) WHERE snapshot_id IS NOT NULL;
CREATE INDEX journal_by_name ON journal (snapshot_name) WHERE snapshot_name IS NOT NULL;
CREATE INDEX journal_unresolved ON journal (server_id) WHERE state IN ('pending', 'unknown');
