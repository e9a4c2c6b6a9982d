DROP TABLE IF EXISTS task_attempts;
DROP INDEX IF EXISTS jobs_status;
DROP INDEX IF EXISTS jobs_dag_status;
DROP INDEX IF EXISTS task_executions_ready;
