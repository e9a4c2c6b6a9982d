-- Ready tasks per queue, oldest retry first.
CREATE INDEX task_executions_ready ON cascade.task_executions (status, queue, next_attempt_at);
-- Job listings per DAG and status, newest first.
CREATE INDEX jobs_dag_status ON cascade.jobs (dag_id, status, id DESC);
CREATE INDEX jobs_status ON cascade.jobs (status, id DESC);

-- One row per finished attempt of a task execution (the retry history).
CREATE TABLE cascade.task_attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      BIGINT NOT NULL REFERENCES cascade.jobs (id) ON DELETE CASCADE,
    task_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    worker      TEXT,
    error       TEXT,
    output      TEXT,
    started_at  TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE INDEX task_attempts_task ON cascade.task_attempts (job_id, task_id, attempt);
