ALTER TABLE cascade.task_executions DROP COLUMN retry_base;
