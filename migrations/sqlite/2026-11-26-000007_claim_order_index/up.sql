-- Same index shape as on PostgreSQL: queued tasks of a queue in claim order.
DROP INDEX task_executions_claim;
CREATE INDEX task_executions_claim ON task_executions (queue, priority DESC, updated_at, id)
    WHERE status = 'queued';
