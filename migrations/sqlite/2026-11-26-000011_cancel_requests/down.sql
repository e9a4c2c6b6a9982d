ALTER TABLE jobs DROP COLUMN cancel_requested_at;
