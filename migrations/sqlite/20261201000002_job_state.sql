-- Each job's newest snapshot run and the end of its last success, kept by triggers as
-- runs start and succeed, so that `status` reads one row per job instead of searching
-- a long history twice per job.
CREATE TABLE job_state (
    job TEXT PRIMARY KEY NOT NULL,
    last_run_id INTEGER,
    last_success_at INTEGER
) WITHOUT ROWID;

INSERT INTO job_state (job, last_run_id, last_success_at)
SELECT r.job, max(r.id),
       (SELECT s.finished_at FROM runs s
         WHERE s.job = r.job AND s.kind = 'snapshot' AND s.status = 'succeeded'
         ORDER BY s.id DESC LIMIT 1)
FROM runs r WHERE r.kind = 'snapshot' GROUP BY r.job;

CREATE TRIGGER job_state_run_started AFTER INSERT ON runs WHEN NEW.kind = 'snapshot'
BEGIN
    INSERT OR IGNORE INTO job_state (job) VALUES (NEW.job);
    UPDATE job_state SET last_run_id = max(coalesce(last_run_id, 0), NEW.id) WHERE job = NEW.job;
END;

CREATE TRIGGER job_state_run_succeeded AFTER UPDATE OF status ON runs
WHEN NEW.kind = 'snapshot' AND NEW.status = 'succeeded' AND OLD.status <> 'succeeded'
BEGIN
    INSERT OR IGNORE INTO job_state (job) VALUES (NEW.job);
    UPDATE job_state SET last_success_at = max(coalesce(last_success_at, 0), NEW.finished_at)
    WHERE job = NEW.job;
END;
