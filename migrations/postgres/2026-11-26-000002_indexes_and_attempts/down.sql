DROP TABLE IF EXISTS cascade.task_attempts;
DROP INDEX IF EXISTS cascade.jobs_status;
DROP INDEX IF EXISTS cascade.jobs_dag_status;
DROP INDEX IF EXISTS cascade.task_executions_ready;
