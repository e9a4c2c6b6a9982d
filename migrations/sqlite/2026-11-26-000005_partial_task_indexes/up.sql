-- Every status change of a task execution is a non-HOT update (status is
-- indexed), so its new row version gets an entry in every index whose
-- predicate it satisfies. The status-led indexes serve one or two states
-- only; as partial indexes, a row leaves them when it leaves those states,
-- and finished rows (most of the table, and most transitions' new versions)
-- are in none of them. Queries must name the state as a literal
-- (`status = 'queued'`), not a bind parameter, for the planner to use them.

-- Ready tasks per queue, oldest retry first.
DROP INDEX task_executions_ready;
CREATE INDEX task_executions_ready ON task_executions (status, queue, next_attempt_at)
    WHERE status IN ('queued', 'up_for_retry');
-- Claiming: queued tasks of a queue, highest priority first, oldest first.
DROP INDEX task_executions_claim;
CREATE INDEX task_executions_claim ON task_executions (queue, priority DESC, updated_at)
    WHERE status = 'queued';
-- The reaper: running tasks whose lease lapsed.
DROP INDEX task_executions_lease;
CREATE INDEX task_executions_lease ON task_executions (lease_expires_at)
    WHERE status = 'running';
-- Heartbeats and listings: the running tasks of one worker.
DROP INDEX task_executions_worker;
CREATE INDEX task_executions_worker ON task_executions (worker)
    WHERE status = 'running' AND worker IS NOT NULL;
