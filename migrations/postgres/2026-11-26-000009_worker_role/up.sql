-- What a registered process is: `worker` (claims tasks from queues) or `all`
-- (an all-in-one engine that schedules its jobs and runs their tasks itself).
-- Rows registered before this column existed were workers.
ALTER TABLE cascade.workers
    ADD COLUMN role TEXT NOT NULL DEFAULT 'worker'
        CONSTRAINT workers_role_known CHECK (role IN ('worker', 'all'));
