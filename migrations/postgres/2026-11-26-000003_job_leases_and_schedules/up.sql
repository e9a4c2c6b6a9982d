-- Job ownership: the engine running a job owns it until its lease lapses;
-- another engine may then take it over.
ALTER TABLE cascade.jobs
    ADD COLUMN owner            TEXT,
    ADD COLUMN lease_expires_at TIMESTAMP;
-- Unfinished jobs whose lease expired (takeover scans).
CREATE INDEX jobs_lease ON cascade.jobs (status, lease_expires_at);
-- The jobs of one owner (lease renewal, release on shutdown).
CREATE INDEX jobs_owner ON cascade.jobs (owner) WHERE owner IS NOT NULL;

-- Cron schedule state, advanced with a compare-and-set on next_fire_at.
ALTER TABLE cascade.dags
    ADD COLUMN next_fire_at  TIMESTAMP,
    ADD COLUMN last_fired_at TIMESTAMP;
