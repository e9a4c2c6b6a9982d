ALTER TABLE dags DROP COLUMN last_fired_at;
ALTER TABLE dags DROP COLUMN next_fire_at;
DROP INDEX jobs_owner;
DROP INDEX jobs_lease;
ALTER TABLE jobs DROP COLUMN lease_expires_at;
ALTER TABLE jobs DROP COLUMN owner;
