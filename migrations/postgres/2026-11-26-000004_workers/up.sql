-- Distributed execution: worker processes register, heartbeat and claim
-- queued tasks with `FOR UPDATE SKIP LOCKED` under a lease.
CREATE TABLE cascade.workers (
    id             TEXT PRIMARY KEY,
    host           TEXT NOT NULL,
    pid            BIGINT NOT NULL,
    queues         TEXT NOT NULL DEFAULT '[]', -- JSON array of queue names
    labels         TEXT NOT NULL DEFAULT '[]', -- JSON array of labels
    capacity       INTEGER NOT NULL,
    version        TEXT NOT NULL,
    started_at     TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    last_heartbeat TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    state          TEXT NOT NULL DEFAULT 'active' -- active | stopped | lost
);
-- Stale-worker scans.
CREATE INDEX workers_state_heartbeat ON cascade.workers (state, last_heartbeat);

-- Higher runs first; losses of infrastructure (a worker died holding the
-- task) are counted apart from attempts.
ALTER TABLE cascade.task_executions
    ADD COLUMN priority   INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN lost_count INTEGER NOT NULL DEFAULT 0;
-- Claiming: queued tasks of a queue, highest priority first, oldest first.
CREATE INDEX task_executions_claim
    ON cascade.task_executions (status, queue, priority DESC, updated_at);
-- The reaper: running tasks whose lease lapsed.
CREATE INDEX task_executions_lease ON cascade.task_executions (status, lease_expires_at);
-- Heartbeats and listings: the running tasks of one worker.
CREATE INDEX task_executions_worker ON cascade.task_executions (worker) WHERE worker IS NOT NULL;
