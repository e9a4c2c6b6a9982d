-- Labels a worker must ALL have to claim the task: a JSON array of strings,
-- like `workers.labels`; `[]` (every existing row) means any worker.
-- (Claiming runs on PostgreSQL only; the column exists here so both schemas
-- stay alike.)
ALTER TABLE task_executions ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
