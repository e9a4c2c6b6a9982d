ALTER TABLE task_executions DROP COLUMN labels;
