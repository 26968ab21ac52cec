-- One alert, several channels: email and each [[notify]] entry is delivered (and
-- retried, with its own backoff) on its own. `channels` holds the channels the running
-- configuration has (the agent writes it at start and on reload); a trigger gives every
-- new alert one delivery row per channel in the transaction that queues it.
CREATE TABLE channels (
    name TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;

CREATE TABLE deliveries (
    alert_id INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    sent_at INTEGER,
    last_error TEXT,
    -- A process sending it holds it until then: two processes on one database (the
    -- daemon and a run-once) never send the same alert twice on a channel.
    claimed_until INTEGER,
    PRIMARY KEY (alert_id, channel)
);

CREATE INDEX deliveries_pending ON deliveries (channel, next_attempt_at) WHERE sent_at IS NULL;

-- Every alert so far went to email.
INSERT INTO deliveries (alert_id, channel, attempts, next_attempt_at, sent_at, last_error)
SELECT id, 'email', attempts, next_attempt_at, sent_at, last_error FROM alerts;

DROP INDEX alerts_pending;
ALTER TABLE alerts DROP COLUMN attempts;
ALTER TABLE alerts DROP COLUMN next_attempt_at;
ALTER TABLE alerts DROP COLUMN sent_at;
ALTER TABLE alerts DROP COLUMN last_error;

CREATE TRIGGER alerts_fan_out AFTER INSERT ON alerts
BEGIN
    INSERT INTO deliveries (alert_id, channel, next_attempt_at)
    SELECT NEW.id, name, NEW.created_at FROM channels;
END;

-- Dead-man pings (the Healthchecks protocol), queued like alerts and sent by the same
-- outbox. The URL is not stored: it is the job's `ping_url` (or `[heartbeat] url`) when
-- the ping goes out. A ping not sent by `expires_at` is dropped, never sent late: a late
-- "success" would tell the watcher the agent is well now.
CREATE TABLE pings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT,
    run_id INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    kind TEXT NOT NULL CHECK (kind IN ('start', 'success', 'fail', 'heartbeat')),
    body TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    sent_at INTEGER,
    dropped_at INTEGER,
    last_error TEXT,
    claimed_until INTEGER
);

CREATE INDEX pings_pending ON pings (next_attempt_at) WHERE sent_at IS NULL AND dropped_at IS NULL;
