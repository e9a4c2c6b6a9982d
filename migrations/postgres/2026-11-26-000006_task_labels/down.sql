ALTER TABLE cascade.task_executions DROP COLUMN labels;
