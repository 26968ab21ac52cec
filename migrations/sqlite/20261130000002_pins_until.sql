-- A pin may end: a pre-restore safety snapshot is pinned for `restore_safety_keep`, then
-- rotation may take it. NULL: pinned until unpinned.
ALTER TABLE pins ADD COLUMN until INTEGER;
