DROP INDEX cascade.task_executions_worker;
CREATE INDEX task_executions_worker ON cascade.task_executions (worker) WHERE worker IS NOT NULL;
DROP INDEX cascade.task_executions_lease;
CREATE INDEX task_executions_lease ON cascade.task_executions (status, lease_expires_at);
DROP INDEX cascade.task_executions_claim;
CREATE INDEX task_executions_claim
    ON cascade.task_executions (status, queue, priority DESC, updated_at);
DROP INDEX cascade.task_executions_ready;
CREATE INDEX task_executions_ready ON cascade.task_executions (status, queue, next_attempt_at);
