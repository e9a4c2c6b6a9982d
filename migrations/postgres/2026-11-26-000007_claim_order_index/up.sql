-- Claiming reads queued tasks of one queue in exactly this order and stops
-- after LIMIT rows, so each claim costs about LIMIT index entries rather than
-- every queued row.
DROP INDEX cascade.task_executions_claim;
CREATE INDEX task_executions_claim ON cascade.task_executions (queue, priority DESC, updated_at, id)
    WHERE status = 'queued';
