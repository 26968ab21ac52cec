-- The drift check asks, per run, whether the agent deleted a snapshot itself; without
-- this index that is a scan of every action ever recorded.
CREATE INDEX actions_by_snapshot ON actions (snapshot_id, action) WHERE snapshot_id IS NOT NULL;
