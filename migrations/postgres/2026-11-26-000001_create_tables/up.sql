-- Cascade keeps everything in its own schema. The store creates the schema
-- and sets `search_path` before running migrations, so diesel's bookkeeping
-- table lands there too.
CREATE SCHEMA IF NOT EXISTS cascade;

CREATE TABLE cascade.dags (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    version     INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    schedule    TEXT,
    paused      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at  TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

-- Every version of every DAG definition (the IR JSON exactly as registered).
CREATE TABLE cascade.dag_versions (
    dag_id     BIGINT NOT NULL REFERENCES cascade.dags (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    PRIMARY KEY (dag_id, version)
);

CREATE TABLE cascade.jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dag_id          BIGINT NOT NULL REFERENCES cascade.dags (id) ON DELETE CASCADE,
    dag_version     INTEGER NOT NULL,
    status          TEXT NOT NULL,
    trigger         TEXT NOT NULL,
    params          JSONB NOT NULL DEFAULT '{}',
    idempotency_key TEXT,
    error           TEXT,
    created_at      TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    started_at      TIMESTAMP,
    completed_at    TIMESTAMP,
    updated_at      TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

-- Triggering twice with the same key returns the same job. NULL keys never conflict.
CREATE UNIQUE INDEX jobs_idempotency_key ON cascade.jobs (dag_id, idempotency_key);

CREATE TABLE cascade.task_executions (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id           BIGINT NOT NULL REFERENCES cascade.jobs (id) ON DELETE CASCADE,
    task_id          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    fencing_token    BIGINT NOT NULL DEFAULT 0,
    worker           TEXT,
    queue            TEXT NOT NULL DEFAULT 'default',
    result           JSONB,
    error            TEXT,
    next_attempt_at  TIMESTAMP,
    lease_expires_at TIMESTAMP,
    started_at       TIMESTAMP,
    completed_at     TIMESTAMP,
    created_at       TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at       TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    UNIQUE (job_id, task_id)
);
