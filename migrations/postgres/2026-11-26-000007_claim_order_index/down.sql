DROP INDEX cascade.task_executions_claim;
CREATE INDEX task_executions_claim ON cascade.task_executions (queue, priority DESC, updated_at)
    WHERE status = 'queued';
