-- Ready tasks per queue, oldest retry first.
CREATE INDEX task_executions_ready ON task_executions (status, queue, next_attempt_at);
-- Job listings per DAG and status, newest first.
CREATE INDEX jobs_dag_status ON jobs (dag_id, status, id DESC);
CREATE INDEX jobs_status ON jobs (status, id DESC);

-- One row per finished attempt of a task execution (the retry history).
CREATE TABLE task_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    task_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    worker      TEXT,
    error       TEXT,
    output      TEXT,
    started_at  TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE INDEX task_attempts_task ON task_attempts (job_id, task_id, attempt);
