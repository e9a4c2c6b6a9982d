DROP INDEX IF EXISTS cascade.task_executions_worker;
DROP INDEX IF EXISTS cascade.task_executions_lease;
DROP INDEX IF EXISTS cascade.task_executions_claim;
ALTER TABLE cascade.task_executions
    DROP COLUMN lost_count,
    DROP COLUMN priority;
DROP TABLE IF EXISTS cascade.workers;
