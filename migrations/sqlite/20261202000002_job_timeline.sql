-- Each job's last 30 finished snapshot runs as one mark each, oldest first (s succeeded,
-- f failed, i interrupted), kept by a trigger as runs end: `status` draws a timeline per
-- job from one row instead of reading 30 runs of each job.
ALTER TABLE job_state ADD COLUMN timeline TEXT NOT NULL DEFAULT '';

UPDATE job_state SET timeline = coalesce((
    SELECT group_concat(mark, '') FROM (
        SELECT CASE status WHEN 'succeeded' THEN 's' WHEN 'failed' THEN 'f' ELSE 'i' END AS mark
        FROM (SELECT id, status FROM runs
              WHERE runs.job = job_state.job AND kind = 'snapshot'
                AND status IN ('succeeded', 'failed', 'interrupted')
              ORDER BY id DESC LIMIT 30)
        ORDER BY id)
), '');

CREATE TRIGGER job_state_run_ended AFTER UPDATE OF status ON runs
WHEN NEW.kind = 'snapshot' AND OLD.status = 'running'
     AND NEW.status IN ('succeeded', 'failed', 'interrupted')
BEGIN
    INSERT OR IGNORE INTO job_state (job) VALUES (NEW.job);
    UPDATE job_state
    SET timeline = substr(timeline || CASE NEW.status WHEN 'succeeded' THEN 's'
                                                      WHEN 'failed' THEN 'f' ELSE 'i' END, -30)
    WHERE job = NEW.job;
END;
