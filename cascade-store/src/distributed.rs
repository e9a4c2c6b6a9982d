//! Distributed execution on PostgreSQL: worker registry and heartbeats,
//! claiming queued tasks with `FOR UPDATE SKIP LOCKED`, reaping lapsed
//! leases, LISTEN/NOTIFY and leader election with an advisory lock.
//!
//! A child module of `store`, so it shares the backend macros and the
//! store's private state.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Text, Timestamp};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, instrument, warn};

use super::{Backend, Pools, SqliteConn, Store};
use crate::clock::DbTime;
use crate::error::{Result, StoreError};
use crate::ids::JobId;
use crate::json::{JsonDoc, JsonValue};
use crate::model::{
    ClaimRequest, ClaimedTask, Notification, TaskExecution, WorkerInfo, WorkerRecord, WorkerRole, WorkerState,
};
use crate::rows::{self, TaskRow, naive, utc};
use crate::schema::{task_executions, workers};

// ----- rows -------------------------------------------------------------------

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = workers)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
struct WorkerRow {
    id: String,
    host: String,
    pid: i64,
    queues: String,
    labels: String,
    capacity: i32,
    version: String,
    started_at: NaiveDateTime,
    last_heartbeat: NaiveDateTime,
    state: String,
    role: String,
}

impl TryFrom<WorkerRow> for WorkerRecord {
    type Error = StoreError;

    fn try_from(row: WorkerRow) -> Result<Self> {
        let list = |column: &'static str, text: String| -> Result<Vec<String>> {
            serde_json::from_str(&text).map_err(|_| StoreError::Corrupt { column, value: text })
        };
        let state = match row.state.as_str() {
            "active" => WorkerState::Active,
            "stopped" => WorkerState::Stopped,
            "lost" => WorkerState::Lost,
            _ => {
                return Err(StoreError::Corrupt {
                    column: "workers.state",
                    value: row.state,
                });
            }
        };
        let role = match row.role.as_str() {
            "worker" => WorkerRole::Worker,
            "all" => WorkerRole::All,
            _ => {
                return Err(StoreError::Corrupt {
                    column: "workers.role",
                    value: row.role,
                });
            }
        };
        Ok(WorkerRecord {
            queues: list("workers.queues", row.queues)?,
            labels: list("workers.labels", row.labels)?,
            id: row.id,
            host: row.host,
            pid: row.pid,
            capacity: row.capacity,
            version: row.version,
            started_at: utc(row.started_at),
            last_heartbeat: utc(row.last_heartbeat),
            state,
            role,
        })
    }
}

#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = workers)]
#[diesel(treat_none_as_default_value = false)]
struct NewWorkerRow<'a> {
    id: &'a str,
    host: &'a str,
    pid: i64,
    queues: String,
    labels: String,
    capacity: i32,
    version: &'a str,
    started_at: NaiveDateTime,
    last_heartbeat: NaiveDateTime,
    state: &'static str,
    role: &'static str,
}

/// A claimed task joined with its job, from [`PG_CLAIM`].
#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(embed)]
    task: TaskRow,
    #[diesel(sql_type = BigInt)]
    claim_dag_id: i64,
    #[diesel(sql_type = Integer)]
    claim_dag_version: i32,
    #[diesel(sql_type = JsonDoc)]
    claim_params: JsonValue,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

// ----- SQL --------------------------------------------------------------------

/// Claims in one statement: the `picked` CTE locks up to `$4` due, queued
/// tasks per requested queue (an ordered scan of the partial claim index that
/// stops after `$4` rows, so a claim costs about `$4` rows however many are
/// queued), keeps the best `$4` overall, of the requested DAGs (jobs with a
/// stored cancel request are never claimed from, nor jobs owned by an
/// all-in-one engine, which runs its queued tasks itself) and with labels that are a subset of the
/// worker's (`$7`; `'[]'` is tested as text first, so unlabelled tasks, the
/// common case, need no JSON parse), skipping rows other claimers hold
/// (so concurrent claimers never wait on nor double-claim a row); `claimed`
/// moves them to `running` under the worker's lease with a new fencing
/// token; the final `SELECT` joins each with its job, in claiming order.
const PG_CLAIM: &str = "\
WITH picked AS (
    SELECT c.id, c.updated_at AS queued_at
    FROM unnest($1::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.updated_at
        FROM task_executions AS t
        WHERE t.status = 'queued'
          AND t.queue = q.name
          AND (t.next_attempt_at IS NULL OR t.next_attempt_at <= $3)
          AND (t.labels = '[]' OR t.labels::jsonb <@ to_jsonb($7::text[]))
          AND EXISTS (
              SELECT 1 FROM jobs AS j
              WHERE j.id = t.job_id AND j.dag_id = ANY($2) AND j.status IN ('pending', 'running')
                AND j.cancel_requested_at IS NULL
                AND NOT EXISTS (
                    SELECT 1 FROM workers AS w WHERE w.id = j.owner AND w.role = 'all'))
        ORDER BY t.priority DESC, t.updated_at, t.id
        LIMIT $4
        FOR UPDATE OF t SKIP LOCKED
    ) AS c
    ORDER BY c.priority DESC, c.updated_at, c.id
    LIMIT $4
), claimed AS (
    UPDATE task_executions AS t SET
        status = 'running',
        worker = $5,
        fencing_token = t.fencing_token + 1,
        lease_expires_at = ((now() AT TIME ZONE 'UTC') + $6::int8 * interval '1 microsecond'),
        started_at = $3,
        updated_at = $3
    FROM picked
    WHERE t.id = picked.id
    RETURNING t.*, picked.queued_at
)
SELECT c.*, j.dag_id AS claim_dag_id, j.dag_version AS claim_dag_version, j.params AS claim_params
FROM claimed AS c
JOIN jobs AS j ON j.id = c.job_id
ORDER BY c.priority DESC, c.queued_at, c.id";

/// Takes back running tasks whose lease lapsed before `$1`, at most `$2`, in
/// one statement; rows another reaper holds are skipped. Each becomes
/// `queued` again, or `failed` once it has been lost more than `$3` times
/// (`max_lost`), or `cancelled` if its job finished meanwhile (nothing would
/// run it). Every such lost attempt is recorded in `task_attempts` with
/// status `lost`, the worker that held it and when it started. All CTEs see
/// the rows as they were before the update, so `expired` still has the lost
/// attempt's worker and start.
const PG_REAP_EXPIRED: &str = "\
WITH expired AS (
    SELECT e.id, e.job_id, e.task_id, e.attempt, e.worker, e.started_at,
           j.status IN ('success', 'failed', 'cancelled') AS job_done,
           e.lost_count + 1 > $3 AS too_often
    FROM task_executions AS e
    JOIN jobs AS j ON j.id = e.job_id
    WHERE e.status = 'running'
      AND e.lease_expires_at < ((now() AT TIME ZONE 'UTC') + $4::int8 * interval '1 microsecond')
    ORDER BY e.lease_expires_at, e.id
    LIMIT $2
    FOR UPDATE OF e SKIP LOCKED
), reaped AS (
    UPDATE task_executions AS t SET
        status = CASE WHEN x.job_done THEN 'cancelled' WHEN x.too_often THEN 'failed' ELSE 'queued' END,
        lost_count = t.lost_count + 1,
        fencing_token = t.fencing_token + 1,
        worker = NULL,
        lease_expires_at = NULL,
        started_at = NULL,
        completed_at = CASE WHEN x.job_done OR x.too_often THEN $1 ELSE t.completed_at END,
        error = CASE
            WHEN x.job_done THEN 'cancelled: its job finished while its worker was lost'
            WHEN x.too_often THEN format('lost %s times (max_lost %s)', t.lost_count + 1, $3)
            ELSE t.error END,
        updated_at = $1
    FROM expired AS x
    WHERE t.id = x.id
    RETURNING t.*
), recorded AS (
    INSERT INTO task_attempts (job_id, task_id, attempt, status, worker, error, started_at, finished_at)
    SELECT x.job_id, x.task_id, x.attempt, 'lost', x.worker,
           format('lost: worker %s stopped renewing the lease', coalesce(x.worker, '(none)')),
           x.started_at, $1
    FROM expired AS x
    JOIN reaped AS r ON r.id = x.id
    ORDER BY x.id
)
SELECT * FROM reaped";

/// `status = 'running'` as a literal rather than a bind parameter, so that
/// the planner can prove it matches the partial `task_executions_worker`
/// index (a generic plan of `status = $n` could not use it).
fn is_running() -> diesel::expression::SqlLiteral<Bool> {
    diesel::dsl::sql("task_executions.status = 'running'")
}

/// Quotes a channel name as a PostgreSQL identifier; `pg_notify` takes the
/// name verbatim, so quoting keeps both sides case-sensitive and exact.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn closed(what: &str) -> DieselError {
    DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new(what.to_owned()))
}

// ----- the verbs --------------------------------------------------------------

impl Store {
    fn unsupported(&self, operation: &'static str) -> StoreError {
        StoreError::Unsupported {
            operation,
            backend: self.backend(),
        }
    }

    /// A new PostgreSQL connection outside the pool (for LISTEN and advisory
    /// locks, which belong to one session). One attempt, bounded by
    /// [`StoreOptions::connect_timeout`](crate::StoreOptions::connect_timeout).
    async fn dedicated_pg(&self) -> Result<AsyncPgConnection> {
        let timeout = self.inner.options.connect_timeout;
        let unavailable = |source: crate::error::BoxError| StoreError::Unavailable {
            url: self.inner.url.clone(),
            attempts: 1,
            source,
        };
        let setup = crate::connect::pg_session_setup(&self.inner.options);
        let connect = async {
            let mut conn = AsyncPgConnection::establish(&self.inner.raw_url).await?;
            conn.batch_execute(&setup)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok::<_, diesel::ConnectionError>(conn)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(unavailable(Box::new(error))),
            Err(_) => Err(unavailable(
                format!("connecting timed out after {timeout:?}").into(),
            )),
        }
    }

    // ----- workers ----------------------------------------------------------

    /// Registers a worker process, or re-registers one with the same id:
    /// its description is replaced, `started_at` and `last_heartbeat` become
    /// now and its state `active`. Works on both backends.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store) -> cascade_store::Result<()> {
    /// use cascade_store::{WorkerInfo, WorkerRole};
    ///
    /// let worker = store
    ///     .register_worker(&WorkerInfo {
    ///         id: "host-a:4242:1".into(),
    ///         host: "host-a".into(),
    ///         pid: 4242,
    ///         queues: vec!["default".into()],
    ///         labels: vec!["gpu".into()],
    ///         capacity: 8,
    ///         version: "0.1.0".into(),
    ///         role: WorkerRole::Worker,
    ///     })
    ///     .await?;
    /// # let _ = worker;
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip_all, fields(worker = %info.id), err)]
    pub async fn register_worker(&self, info: &WorkerInfo) -> Result<WorkerRecord> {
        let at = naive(rows::now());
        let encode = |list: &Vec<String>| serde_json::to_string(list).expect("a list of strings serialises");
        let row = NewWorkerRow {
            id: &info.id,
            host: &info.host,
            pid: info.pid,
            queues: encode(&info.queues),
            labels: encode(&info.labels),
            capacity: info.capacity,
            version: &info.version,
            started_at: at,
            last_heartbeat: at,
            state: WorkerState::Active.as_str(),
            role: info.role.as_str(),
        };
        let row: WorkerRow = write_one!(self, |c| {
            diesel::insert_into(workers::table)
                .values(&row)
                .on_conflict(workers::id)
                .do_update()
                .set(&row)
                .returning(WorkerRow::as_returning())
                .get_result(c)
                .await
        })
        .map_err(|e| e.during("register_worker"))?;
        debug!("worker registered");
        row.try_into()
    }

    /// Records a heartbeat of `worker_id` at `now` (its state becomes
    /// `active` again if it had been marked lost) and, in the same
    /// transaction, extends to `task_lease_until` the lease of every task
    /// that is `running` on this worker. Returns how many tasks were extended.
    ///
    /// [`StoreError::WorkerNotFound`] (kind `NotFound`) if the worker row is
    /// gone: the worker should register again.
    #[instrument(skip(self), err)]
    pub async fn heartbeat_worker(
        &self,
        worker_id: &str,
        now: DateTime<Utc>,
        task_lease_until: DateTime<Utc>,
    ) -> Result<u64> {
        self.heartbeat(worker_id, now, task_lease_until, None).await
    }

    /// Like [`Store::heartbeat_worker`], but extends only the leases of the
    /// given task executions (by [`TaskExecution::id`]) — the attempts the
    /// worker is actually running. A row the worker claimed but is no longer
    /// running (its outcome could not be committed, its claim's answer was
    /// lost) then lapses and the reaper returns it to the queue.
    pub async fn heartbeat_worker_tasks(
        &self,
        worker_id: &str,
        now: DateTime<Utc>,
        task_lease_until: DateTime<Utc>,
        task_ids: &[i64],
    ) -> Result<u64> {
        self.heartbeat(worker_id, now, task_lease_until, Some(task_ids))
            .await
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        now: DateTime<Utc>,
        task_lease_until: DateTime<Utc>,
        only: Option<&[i64]>,
    ) -> Result<u64> {
        let (now, until) = (DbTime::at(now), DbTime::at(task_lease_until));
        let extended: Option<usize> = write_tx!(self, |c| {
            let found = diesel::update(workers::table.find(worker_id))
                .set((
                    workers::last_heartbeat.eq(now),
                    workers::state.eq(WorkerState::Active.as_str()),
                ))
                .execute(c)
                .await?;
            if found == 0 {
                return Ok(None);
            }
            let n = match only {
                None => {
                    diesel::update(task_executions::table)
                        .filter(task_executions::worker.eq(worker_id))
                        .filter(is_running())
                        .set(task_executions::lease_expires_at.eq(until.nullable()))
                        .execute(c)
                        .await?
                }
                Some([]) => 0,
                Some(ids) => {
                    diesel::update(task_executions::table)
                        .filter(task_executions::worker.eq(worker_id))
                        .filter(is_running())
                        .filter(task_executions::id.eq_any(ids))
                        .set(task_executions::lease_expires_at.eq(until.nullable()))
                        .execute(c)
                        .await?
                }
            };
            Ok(Some(n))
        })
        .map_err(|e| e.during("heartbeat_worker"))?;
        match extended {
            Some(n) => Ok(n as u64),
            None => Err(StoreError::WorkerNotFound {
                worker_id: worker_id.to_owned(),
            }),
        }
    }

    /// Marks a worker `stopped` (a graceful shutdown). Its running tasks are
    /// left alone: finish or hand them back first, or let their leases lapse.
    /// [`StoreError::WorkerNotFound`] if there is no such worker.
    #[instrument(skip(self), err)]
    pub async fn deregister_worker(&self, worker_id: &str) -> Result<()> {
        let n = write_one!(self, |c| {
            diesel::update(workers::table.find(worker_id))
                .set(workers::state.eq(WorkerState::Stopped.as_str()))
                .execute(c)
                .await
        })
        .map_err(|e| e.during("deregister_worker"))?;
        if n == 0 {
            return Err(StoreError::WorkerNotFound {
                worker_id: worker_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Every registered worker (whatever its state), by id.
    #[instrument(skip_all, err)]
    pub async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows: Vec<WorkerRow> = read!(self, |c| {
            workers::table
                .order(workers::id.asc())
                .select(WorkerRow::as_select())
                .load(c)
                .await
        })
        .map_err(|e| e.during("list_workers"))?;
        rows.into_iter().map(WorkerRecord::try_from).collect()
    }

    /// Marks `lost` every `active` worker whose last heartbeat is older than
    /// `stale_before`, and returns them (as updated). Their tasks are not
    /// touched: [`Store::requeue_expired_tasks`] takes them back once their
    /// leases lapse.
    #[instrument(skip(self), err)]
    pub async fn mark_lost_workers(&self, stale_before: DateTime<Utc>) -> Result<Vec<WorkerRecord>> {
        let stale_before = DbTime::at(stale_before);
        let rows: Vec<WorkerRow> = write_one!(self, |c| {
            diesel::update(workers::table)
                .filter(workers::state.eq(WorkerState::Active.as_str()))
                .filter(workers::last_heartbeat.lt(stale_before))
                .set(workers::state.eq(WorkerState::Lost.as_str()))
                .returning(WorkerRow::as_returning())
                .load(c)
                .await
        })
        .map_err(|e| e.during("mark_lost_workers"))?;
        if !rows.is_empty() {
            warn!(n = rows.len(), "workers stopped heartbeating and are marked lost");
        }
        rows.into_iter().map(WorkerRecord::try_from).collect()
    }

    // ----- claiming -----------------------------------------------------------

    /// Claims up to `request.limit` queued tasks for `request.worker`, in ONE
    /// statement (`UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)`), so any
    /// number of workers on any machines may claim concurrently and each
    /// task goes to exactly one of them.
    ///
    /// Eligible: `queued` tasks on one of `request.queues`, of unfinished
    /// (`pending` or `running`) jobs of one of `request.dag_ids`, whose
    /// `next_attempt_at` is NULL or not after
    /// `request.now`, and whose `labels` are all among `request.labels` (a
    /// task without labels goes to any worker); highest `priority` first,
    /// then the longest queued
    /// (oldest `updated_at`). Each claimed task becomes `running` on the
    /// worker with `fencing_token + 1`, `lease_expires_at = lease_until` and
    /// `started_at = updated_at = now`; `attempt` is unchanged (whoever queues
    /// the task sets it). Returned in claiming order, with the job's DAG,
    /// version and parameters.
    ///
    /// PostgreSQL only: [`StoreError::Unsupported`] on SQLite.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store, dag: cascade_store::DagId) -> cascade_store::Result<()> {
    /// use cascade_store::ClaimRequest;
    /// use chrono::{Duration, Utc};
    ///
    /// let now = Utc::now();
    /// let claimed = store
    ///     .claim_tasks(&ClaimRequest {
    ///         worker: "host-a:4242:1".into(),
    ///         queues: vec!["default".into()],
    ///         dag_ids: vec![dag],
    ///         limit: 8,
    ///         now,
    ///         lease_until: now + Duration::seconds(30),
    ///         labels: vec!["gpu".into()],
    ///     })
    ///     .await?;
    /// for task in claimed {
    ///     // run it, then transition it from `running` with task.execution.fencing_token
    /// #   let _ = task;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip_all, fields(worker = %request.worker, limit = request.limit), err)]
    pub async fn claim_tasks(&self, request: &ClaimRequest) -> Result<Vec<ClaimedTask>> {
        let Pools::Pg(pool) = &self.inner.pools else {
            return Err(self.unsupported("claim_tasks"));
        };
        if request.limit <= 0 || request.queues.is_empty() || request.dag_ids.is_empty() {
            return Ok(Vec::new());
        }
        let dag_ids: Vec<i64> = request.dag_ids.iter().map(|id| id.0).collect();
        let query = diesel::sql_query(PG_CLAIM)
            .bind::<Array<Text>, _>(&request.queues)
            .bind::<Array<BigInt>, _>(dag_ids)
            .bind::<Timestamp, _>(naive(request.now))
            .bind::<BigInt, _>(request.limit)
            .bind::<Text, _>(&request.worker)
            .bind::<BigInt, _>(DbTime::at(request.lease_until).offset_micros())
            .bind::<Array<Text>, _>(&request.labels);
        let rows: Vec<ClaimedRow> = self
            .bounded(1, async {
                let mut conn = self.checkout_pg(pool).await?;
                Ok(query.load(&mut *conn).await?)
            })
            .await
            .map_err(|e| e.during("claim_tasks"))?;
        if !rows.is_empty() {
            debug!(n = rows.len(), "tasks claimed");
        }
        rows.into_iter()
            .map(|row| {
                Ok(ClaimedTask {
                    execution: TaskExecution::try_from(row.task)?,
                    dag_id: crate::DagId(row.claim_dag_id),
                    dag_version: row.claim_dag_version,
                    params: row.claim_params.0,
                })
            })
            .collect()
    }

    /// The results of the given tasks of a job (typically a claimed task's
    /// upstream dependencies), as `(task_id, result)` in task creation order.
    /// A task without a result (not succeeded, or it returned nothing) has
    /// `None`; task ids the job does not have are left out. Works on both
    /// backends.
    #[instrument(skip(self), fields(n = task_ids.len()), err)]
    pub async fn upstream_results(
        &self,
        job_id: JobId,
        task_ids: &[String],
    ) -> Result<Vec<(String, Option<serde_json::Value>)>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Option<JsonValue>)> = read!(self, |c| {
            task_executions::table
                .filter(task_executions::job_id.eq(job_id.0))
                .filter(task_executions::task_id.eq_any(task_ids))
                .order(task_executions::id.asc())
                .select((task_executions::task_id, task_executions::result))
                .load(c)
                .await
        })
        .map_err(|e| e.during("upstream_results"))?;
        Ok(rows
            .into_iter()
            .map(|(task_id, result)| (task_id, result.map(|json| json.0)))
            .collect())
    }

    // ----- reaping ------------------------------------------------------------

    /// Takes back up to `limit` tasks whose worker stopped renewing them:
    /// every `running` task whose `lease_expires_at` is before `now` becomes
    /// `queued` again, in one statement (`FOR UPDATE SKIP LOCKED`, so several
    /// reapers on several nodes may run at once). Returns the updated rows.
    /// Like [`Store::reap_expired_tasks`] without `max_lost`: a task is
    /// re-queued however often it was lost.
    ///
    /// PostgreSQL only: [`StoreError::Unsupported`] on SQLite.
    #[instrument(skip(self), err)]
    pub async fn requeue_expired_tasks(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<TaskExecution>> {
        if self.backend() != Backend::Postgres {
            return Err(self.unsupported("requeue_expired_tasks"));
        }
        self.reap_expired_tasks(now, limit, u32::MAX).await
    }

    /// Takes back up to `limit` tasks whose worker stopped renewing them,
    /// failing those lost too often: every `running` task whose
    /// `lease_expires_at` is before `now` is reaped, in one statement
    /// (`FOR UPDATE SKIP LOCKED`, so several reapers on several nodes may run
    /// at once). Returns the updated rows.
    ///
    /// Each reaped task gets `lost_count + 1` and `fencing_token + 1` (so a
    /// late completion from the lost worker loses its compare-and-set);
    /// `worker`, `lease_expires_at` and `started_at` become NULL (the next
    /// claim sets `started_at` again); `attempt` is unchanged: an
    /// infrastructure loss does not use up a retry. The lost attempt is
    /// recorded in the attempt history with status
    /// [`TaskStatus::Lost`](crate::TaskStatus::Lost), the worker that held it,
    /// its start and `now` as its end. Then the task becomes:
    ///
    /// - `failed`, with `completed_at` and the error `lost N times (max_lost
    ///   M)`, once its `lost_count` exceeds `max_lost`: a task whose attempts
    ///   keep killing their worker stops being handed to the next one. Its
    ///   job's scheduler settles the job like after any failed task;
    /// - `cancelled` (with `completed_at` and an error saying why) if its job
    ///   has already finished, since no scheduler would settle it and
    ///   [`Store::claim_tasks`] skips finished jobs;
    /// - `queued` again otherwise.
    ///
    /// Running tasks without a lease (`lease_expires_at` NULL) are never
    /// reaped.
    ///
    /// PostgreSQL only: [`StoreError::Unsupported`] on SQLite.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store) -> cascade_store::Result<()> {
    /// use cascade_store::TaskStatus;
    ///
    /// for task in store.reap_expired_tasks(chrono::Utc::now(), 500, 3).await? {
    ///     if task.status == TaskStatus::Failed {
    ///         eprintln!("{} failed: {:?}", task.task_id, task.error); // "lost 4 times (max_lost 3)"
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), err)]
    pub async fn reap_expired_tasks(
        &self,
        now: DateTime<Utc>,
        limit: i64,
        max_lost: u32,
    ) -> Result<Vec<TaskExecution>> {
        let Pools::Pg(pool) = &self.inner.pools else {
            return Err(self.unsupported("reap_expired_tasks"));
        };
        if limit <= 0 {
            return Ok(Vec::new());
        }
        let query = diesel::sql_query(PG_REAP_EXPIRED)
            .bind::<Timestamp, _>(naive(now))
            .bind::<BigInt, _>(limit)
            .bind::<Integer, _>(i32::try_from(max_lost).unwrap_or(i32::MAX))
            .bind::<BigInt, _>(DbTime::at(now).offset_micros());
        let rows: Vec<TaskRow> = self
            .bounded(1, async {
                let mut conn = self.checkout_pg(pool).await?;
                Ok(query.load(&mut *conn).await?)
            })
            .await
            .map_err(|e| e.during("reap_expired_tasks"))?;
        if !rows.is_empty() {
            let failed = rows.iter().filter(|r| r.status == "failed").count();
            warn!(n = rows.len(), failed, "tasks with lapsed leases reaped");
        }
        rows.into_iter().map(TaskExecution::try_from).collect()
    }

    /// The `running` tasks of one worker, by row id. Works on both backends.
    #[instrument(skip(self), err)]
    pub async fn list_running_tasks_of_worker(&self, worker_id: &str) -> Result<Vec<TaskExecution>> {
        let rows: Vec<TaskRow> = read!(self, |c| {
            task_executions::table
                .filter(task_executions::worker.eq(worker_id))
                .filter(is_running())
                .order(task_executions::id.asc())
                .select(TaskRow::as_select())
                .load(c)
                .await
        })
        .map_err(|e| e.during("list_running_tasks_of_worker"))?;
        rows.into_iter().map(TaskExecution::try_from).collect()
    }

    // ----- LISTEN / NOTIFY --------------------------------------------------

    /// Sends one notification now (`SELECT pg_notify(channel, payload)` on a
    /// pooled connection, outside any transaction). To notify only if some
    /// transitions commit, put it in [`TransitionBatch::notifications`](crate::TransitionBatch::notifications)
    /// instead.
    ///
    /// PostgreSQL only: [`StoreError::Unsupported`] on SQLite.
    #[instrument(skip(self, payload), err)]
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        let Pools::Pg(pool) = &self.inner.pools else {
            return Err(self.unsupported("notify"));
        };
        self.bounded(1, async {
            let mut conn = self.checkout_pg(pool).await?;
            diesel::sql_query("SELECT pg_notify($1, $2)")
                .bind::<Text, _>(channel)
                .bind::<Text, _>(payload)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
        .map_err(|e| e.during("notify"))
    }

    /// Listens on `channels` and streams the notifications sent to them.
    ///
    /// Uses a DEDICATED connection (not from the pool), kept open by the
    /// returned stream; dropping the stream closes it. Channel names are
    /// exact and case-sensitive, as [`Store::notify`] sends them.
    ///
    /// Notifications are wake-up hints, not a queue: when the connection
    /// fails, the stream yields one error (kind `Unavailable` when the
    /// connection closed) and ends. Call `listen` again to reconnect;
    /// notifications sent while no listener was connected are lost, so
    /// callers also poll (e.g. [`Store::claim_tasks`]) every few seconds.
    /// The buffer is unbounded: consume the stream.
    ///
    /// PostgreSQL only: [`StoreError::Unsupported`] on SQLite.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store) -> cascade_store::Result<()> {
    /// use futures_util::StreamExt;
    ///
    /// let mut wakeups = store.listen(&["cascade_tasks"]).await?;
    /// while let Some(notification) = wakeups.next().await {
    ///     let notification = notification?; // on error: reconnect, and keep polling meanwhile
    ///     println!("{}: {}", notification.channel, notification.payload);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), err)]
    pub async fn listen(&self, channels: &[&str]) -> Result<NotificationStream> {
        if self.backend() != Backend::Postgres {
            return Err(self.unsupported("listen"));
        }
        let conn = self
            .bounded(1, async {
                let mut conn = self.dedicated_pg().await?;
                if !channels.is_empty() {
                    let statements: String = channels
                        .iter()
                        .map(|channel| format!("LISTEN {};", quote_ident(channel)))
                        .collect();
                    conn.batch_execute(&statements).await?;
                }
                Ok(conn)
            })
            .await
            .map_err(|e| e.during("listen"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut conn = conn;
            let mut stream = std::pin::pin!(conn.notifications_stream());
            loop {
                tokio::select! {
                    item = stream.next() => {
                        let item = match item {
                            Some(Ok(n)) => Ok(Notification::new(n.channel, n.payload)),
                            Some(Err(source)) => Err(source),
                            None => Err(closed("the listening connection closed")),
                        };
                        let failed = item.is_err();
                        let item = item.map_err(|source| StoreError::Database { operation: "listen", source });
                        if tx.send(item).is_err() || failed {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                }
            }
        });
        debug!("listening");
        Ok(NotificationStream { rx, task })
    }

    // ----- leader election ----------------------------------------------------

    /// Tries to become the leader for `lock_key`: takes the session-level
    /// advisory lock `pg_try_advisory_lock(lock_key)` on a DEDICATED
    /// connection, without waiting. `Some` if this process now leads (until
    /// the returned [`Leadership`] is dropped or its connection fails),
    /// `None` if another session holds the lock.
    ///
    /// PostgreSQL only: [`StoreError::Unsupported`] on SQLite.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store) -> cascade_store::Result<()> {
    /// const SCHEDULER_LOCK: i64 = 0x6361_7363_6164_6501;
    /// if let Some(mut leadership) = store.try_lead(SCHEDULER_LOCK).await? {
    ///     while leadership.is_held().await {
    ///         // fire cron ticks, then sleep a little
    /// #       break;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), err)]
    pub async fn try_lead(&self, lock_key: i64) -> Result<Option<Leadership>> {
        if self.backend() != Backend::Postgres {
            return Err(self.unsupported("try_lead"));
        }
        let (conn, Locked { locked }) = self
            .bounded(1, async {
                let mut conn = self.dedicated_pg().await?;
                let locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
                    .bind::<BigInt, _>(lock_key)
                    .get_result(&mut conn)
                    .await?;
                Ok((conn, locked))
            })
            .await
            .map_err(|e| e.during("try_lead"))?;
        if !locked {
            return Ok(None);
        }
        debug!(lock_key, "leadership taken");
        Ok(Some(Leadership {
            conn,
            key: lock_key,
            check_timeout: self.inner.options.connect_timeout,
        }))
    }
}

/// Notifications received by [`Store::listen`]: a
/// [`Stream`](futures_util::Stream) of `Result<Notification, StoreError>`.
///
/// Owns the dedicated listening connection (closed on drop). After an error
/// the stream ends; listen again to reconnect.
pub struct NotificationStream {
    rx: mpsc::UnboundedReceiver<Result<Notification>>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for NotificationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationStream")
            .field("buffered", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl futures_util::Stream for NotificationStream {
    type Item = Result<Notification>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for NotificationStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Leadership won with [`Store::try_lead`]: holds the advisory lock's
/// dedicated connection. Dropping it closes the connection, which releases
/// the lock (PostgreSQL frees it when the session ends).
pub struct Leadership {
    conn: AsyncPgConnection,
    key: i64,
    check_timeout: std::time::Duration,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The advisory lock key.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// Whether the lock is still held: its connection answers a cheap
    /// `SELECT 1` within the store's connect timeout. When this returns
    /// `false`, stop acting as leader at once and drop this value (the lock
    /// is or will be released with the session); then `try_lead` again.
    pub async fn is_held(&mut self) -> bool {
        let probe = diesel::sql_query("SELECT 1").execute(&mut self.conn);
        matches!(tokio::time::timeout(self.check_timeout, probe).await, Ok(Ok(_)))
    }

    /// Gives up leadership explicitly (`pg_advisory_unlock`), then closes the
    /// connection. Dropping the value has the same effect, a moment later.
    ///
    /// Bounded by the store's connect timeout: [`StoreError::Timeout`] when
    /// the server does not answer (the lock then goes with the connection,
    /// closed here).
    pub async fn release(mut self) -> Result<()> {
        let unlock = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(self.key)
            .execute(&mut self.conn);
        match tokio::time::timeout(self.check_timeout, unlock).await {
            Ok(outcome) => outcome
                .map(drop)
                .map_err(|e| StoreError::from(e).during("release_leadership")),
            Err(_) => Err(StoreError::Timeout {
                operation: "release_leadership",
                after: self.check_timeout,
            }),
        }
    }
}
