-- A cancel is a stored request: any node sees it in the job's row (a worker at
-- its next heartbeat, a scheduler when woken or when it resumes the job), and
-- a notification alone never cancels anything.
ALTER TABLE jobs ADD COLUMN cancel_requested_at TIMESTAMP;
