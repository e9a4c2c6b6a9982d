DROP TABLE IF EXISTS cascade.task_executions;
DROP TABLE IF EXISTS cascade.jobs;
DROP TABLE IF EXISTS cascade.dag_versions;
DROP TABLE IF EXISTS cascade.dags;
