-- Several agents on one database (two daemons on one file, or several hosts).

-- Each scheduled fire (job, scheduled time) runs once: the agent whose run inserts this
-- row first runs it; the others see it taken and skip the fire. Catch-up runs claim
-- the fire they make up for the same way.
CREATE TABLE fires (
    job TEXT NOT NULL,
    scheduled_for INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    PRIMARY KEY (job, scheduled_for)
) WITHOUT ROWID;

INSERT OR IGNORE INTO fires (job, scheduled_for, run_id)
SELECT job, scheduled_for, min(id) FROM runs
WHERE kind = 'snapshot' AND trigger IN ('schedule', 'catch_up') AND scheduled_for IS NOT NULL
GROUP BY job, scheduled_for;

-- The agent processes using this database (`host/pid/process start`), each writing
-- `seen_at` every few seconds while it lives. Another host's process is alive while its
-- heartbeat is recent; its runs are resumed, and its locks taken, only once it lapses.
CREATE TABLE agents (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    -- 'daemon' (`agent run`) or 'run-once'.
    role TEXT NOT NULL CHECK (role IN ('daemon', 'run-once')),
    version TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at INTEGER NOT NULL,
    -- Stopped cleanly (or found dead and replaced on its host): not alerted on.
    stopped_at INTEGER,
    -- When the alert that this daemon stopped heartbeating was queued (once).
    gone_alerted_at INTEGER
) WITHOUT ROWID;
