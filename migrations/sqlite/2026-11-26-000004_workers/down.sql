DROP INDEX IF EXISTS task_executions_worker;
DROP INDEX IF EXISTS task_executions_lease;
DROP INDEX IF EXISTS task_executions_claim;
ALTER TABLE task_executions DROP COLUMN lost_count;
ALTER TABLE task_executions DROP COLUMN priority;
DROP TABLE IF EXISTS workers;
