ALTER TABLE cascade.jobs DROP COLUMN cancel_requested_at;
