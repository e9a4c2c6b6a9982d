-- Job ownership: the engine running a job owns it until its lease lapses;
-- another engine may then take it over.
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at TIMESTAMP;
-- Unfinished jobs whose lease expired (takeover scans).
CREATE INDEX jobs_lease ON jobs (status, lease_expires_at);
-- The jobs of one owner (lease renewal, release on shutdown).
CREATE INDEX jobs_owner ON jobs (owner) WHERE owner IS NOT NULL;

-- Cron schedule state, advanced with a compare-and-set on next_fire_at.
ALTER TABLE dags ADD COLUMN next_fire_at TIMESTAMP;
ALTER TABLE dags ADD COLUMN last_fired_at TIMESTAMP;
