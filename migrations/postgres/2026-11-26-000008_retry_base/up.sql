-- The attempts a task had made before its latest re-run (`retry_job`): its
-- retry budget counts only the attempts above it, so a re-run gets the full
-- budget again on whichever node runs it, and keeps it across a restart.
ALTER TABLE cascade.task_executions ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;
