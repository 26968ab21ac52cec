-- `agent prune` records its runs as kind 'prune'.
ALTER TABLE runs DROP CONSTRAINT runs_kind_check;
ALTER TABLE runs ADD CONSTRAINT runs_kind_check CHECK (kind IN ('snapshot', 'restore', 'prune'));
