ALTER TABLE cascade.dags
    DROP COLUMN last_fired_at,
    DROP COLUMN next_fire_at;
DROP INDEX cascade.jobs_owner;
DROP INDEX cascade.jobs_lease;
ALTER TABLE cascade.jobs
    DROP COLUMN lease_expires_at,
    DROP COLUMN owner;
