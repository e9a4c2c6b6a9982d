-- Worker processes (distributed mode runs on PostgreSQL only; the tables
-- exist on SQLite too so both schemas stay alike).
CREATE TABLE workers (
    id             TEXT PRIMARY KEY NOT NULL,
    host           TEXT NOT NULL,
    pid            BIGINT NOT NULL,
    queues         TEXT NOT NULL DEFAULT '[]', -- JSON array of queue names
    labels         TEXT NOT NULL DEFAULT '[]', -- JSON array of labels
    capacity       INTEGER NOT NULL,
    version        TEXT NOT NULL,
    started_at     TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_heartbeat TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    state          TEXT NOT NULL DEFAULT 'active' -- active | stopped | lost
);
CREATE INDEX workers_state_heartbeat ON workers (state, last_heartbeat);

ALTER TABLE task_executions ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_executions ADD COLUMN lost_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX task_executions_claim ON task_executions (status, queue, priority DESC, updated_at);
CREATE INDEX task_executions_lease ON task_executions (status, lease_expires_at);
CREATE INDEX task_executions_worker ON task_executions (worker) WHERE worker IS NOT NULL;
