-- Labels a worker must ALL have to claim the task: a JSON array of strings,
-- like `workers.labels`; `[]` (every existing row) means any worker.
-- `claim_tasks` casts the column to jsonb for its subset test, so a value
-- that is not a JSON array is refused here rather than failing every claim.
ALTER TABLE cascade.task_executions
    ADD COLUMN labels TEXT NOT NULL DEFAULT '[]'
        CONSTRAINT task_executions_labels_array CHECK (jsonb_typeof(labels::jsonb) = 'array');
