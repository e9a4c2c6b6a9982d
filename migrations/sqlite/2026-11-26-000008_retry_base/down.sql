ALTER TABLE task_executions DROP COLUMN retry_base;
