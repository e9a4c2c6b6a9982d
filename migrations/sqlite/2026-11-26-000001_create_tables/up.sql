-- Timestamps are naive UTC text ('YYYY-MM-DD HH:MM:SS.ffffff'); JSON is TEXT so
-- any sqlite3 shell can read it.
CREATE TABLE dags (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    version     INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    schedule    TEXT,
    paused      BOOLEAN NOT NULL DEFAULT 0,
    created_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE dag_versions (
    dag_id     INTEGER NOT NULL REFERENCES dags (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (dag_id, version)
);

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    dag_id          INTEGER NOT NULL REFERENCES dags (id) ON DELETE CASCADE,
    dag_version     INTEGER NOT NULL,
    status          TEXT NOT NULL,
    "trigger"       TEXT NOT NULL,
    params          TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT,
    error           TEXT,
    created_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    started_at      TIMESTAMP,
    completed_at    TIMESTAMP,
    updated_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Triggering twice with the same key returns the same job. NULL keys never conflict.
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (dag_id, idempotency_key);

CREATE TABLE task_executions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    task_id          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    fencing_token    BIGINT NOT NULL DEFAULT 0,
    worker           TEXT,
    queue            TEXT NOT NULL DEFAULT 'default',
    result           TEXT,
    error            TEXT,
    next_attempt_at  TIMESTAMP,
    lease_expires_at TIMESTAMP,
    started_at       TIMESTAMP,
    completed_at     TIMESTAMP,
    created_at       TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at       TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (job_id, task_id)
);
