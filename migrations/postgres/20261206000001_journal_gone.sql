-- Drift detection reads the snapshots the agent made and never deleted nor saw vanish.
-- Finding them meant testing every create of a job's history, a cost that grew with
-- each run. `gone` marks a create or adopt whose snapshot a delete or vanished entry
-- names, set by a trigger as that entry is written; `journal_made` indexes the rest. The
-- read still tests for such an entry: the mark only spares it the ones long gone.
ALTER TABLE journal ADD COLUMN gone BIGINT NOT NULL DEFAULT 0;

UPDATE journal SET gone = 1
WHERE action IN ('create', 'adopt') AND snapshot_id IS NOT NULL
  AND EXISTS (SELECT 1 FROM journal d WHERE d.snapshot_id = journal.snapshot_id
              AND d.action IN ('vanished', 'delete'));

CREATE FUNCTION journal_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE journal SET gone = 1
    WHERE snapshot_id = NEW.snapshot_id AND action IN ('create', 'adopt') AND gone = 0;
    RETURN NULL;
END $$;
CREATE TRIGGER journal_gone AFTER INSERT OR UPDATE OF snapshot_id ON journal
FOR EACH ROW WHEN (NEW.action IN ('vanished', 'delete') AND NEW.snapshot_id IS NOT NULL)
EXECUTE FUNCTION journal_gone();

CREATE INDEX journal_made ON journal (server_id)
WHERE action IN ('create', 'adopt') AND state = 'ok' AND snapshot_id IS NOT NULL AND gone = 0;
