//! The `Store`: domain verbs over PostgreSQL or SQLite.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tracing::{debug, instrument};

use crate::clock::DbTime;
use crate::connect::{self, Pools, SqliteConn};
use crate::error::{Result, StoreError};
use crate::ids::{DagId, JobId, JobStatus, TaskStatus};
use crate::json::JsonValue;
use crate::model::{
    AttemptSummary, BatchOutcome, CreatedJob, DagRecord, DagVersion, Job, JobDetails, JobFilter,
    JobTransition, NewDag, NewJob, TaskAttempt, TaskExecution, TaskTransition, TransitionBatch,
};
use crate::options::StoreOptions;
use crate::rows::{
    self, AttemptRow, DagRow, DagVersionRow, JobCas, JobRow, NewDagRow, NewJobRow, NewTaskRow, TaskCas,
    TaskRow, naive,
};
use crate::schema::{dag_versions, dags, jobs, task_attempts, task_executions};
use crate::url::{self, Target};

/// Rows per multi-row `INSERT` of task executions: 11 binds a row stays far
/// below PostgreSQL's 65,535 and SQLite's 32,766 bind limits.
const TASK_INSERT_CHUNK: usize = 1000;

/// The job states in which a job can be owned and claimed.
const UNFINISHED_JOB: [&str; 2] = [JobStatus::Pending.as_str(), JobStatus::Running.as_str()];

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// PostgreSQL (`postgres://…`).
    Postgres,
    /// SQLite (`sqlite://…`, `sqlite::memory:` or no URL).
    Sqlite,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        })
    }
}

/// Handle to Cascade's database: DAGs, jobs, task executions.
///
/// Cloning is cheap (the pools are shared). Every write is one transaction;
/// task and job transitions are compare-and-set operations that report
/// whether they won.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The URL with its password masked.
    pub(crate) url: String,
    /// The URL as given, for dedicated connections (LISTEN, leader election).
    /// Never logged or printed.
    pub(crate) raw_url: String,
    pub(crate) options: StoreOptions,
    pub(crate) pools: Pools,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// Runs `$body` with `$c` bound to a read connection of either backend, under
/// the call's deadline, again after a transient failure ([`ReadRetry`]).
/// `$body` evaluates to a `Result` whose error converts into [`StoreError`];
/// the macro evaluates to `Result<_, StoreError>`.
macro_rules! read {
    ($self:ident, |$c:ident| $body:expr) => {
        $self
            .bounded(1, async {
                let mut retry = crate::store::ReadRetry::default();
                loop {
                    let outcome: Result<_> = async {
                        match &$self.inner.pools {
                            Pools::Pg(pool) => {
                                let mut conn = $self.checkout_pg(pool).await?;
                                let $c: &mut AsyncPgConnection = &mut conn;
                                Ok($body?)
                            }
                            Pools::Sqlite(pools) => {
                                let mut conn = $self.checkout_sqlite(pools.reader()).await?;
                                let $c: &mut SqliteConn = &mut conn;
                                Ok($body?)
                            }
                        }
                    }
                    .await;
                    match outcome {
                        Err(error) if retry.again_after(&error).await => continue,
                        outcome => break outcome,
                    }
                }
            })
            .await
    };
}

/// Runs `$body` in a write transaction (`BEGIN IMMEDIATE` on the single
/// SQLite writer), under the call's deadline for `$units` thousand rows
/// (one by default). Never retried.
macro_rules! write_tx {
    ($self:ident, |$c:ident| $body:expr) => {
        write_tx!($self, units = 1, |$c| $body)
    };
    ($self:ident, units = $units:expr, |$c:ident| $body:expr) => {
        $self
            .bounded($units, async {
                match &$self.inner.pools {
                    Pools::Pg(pool) => {
                        let mut conn = $self.checkout_pg(pool).await?;
                        let conn: &mut AsyncPgConnection = &mut conn;
                        conn.transaction(async |$c: &mut AsyncPgConnection| -> Result<_> { $body })
                            .await
                    }
                    Pools::Sqlite(pools) => {
                        let mut conn = $self.checkout_sqlite(&pools.writer).await?;
                        let conn: &mut SqliteConn = &mut conn;
                        conn.immediate_transaction(async |$c: &mut SqliteConn| -> Result<_> { $body })
                            .await
                    }
                }
            })
            .await
    };
}

/// Runs `$body` on the writer without an explicit transaction (single
/// statements), under the call's deadline. Never retried.
macro_rules! write_one {
    ($self:ident, |$c:ident| $body:expr) => {
        $self
            .bounded(1, async {
                match &$self.inner.pools {
                    Pools::Pg(pool) => {
                        let mut conn = $self.checkout_pg(pool).await?;
                        let $c: &mut AsyncPgConnection = &mut conn;
                        Ok($body?)
                    }
                    Pools::Sqlite(pools) => {
                        let mut conn = $self.checkout_sqlite(&pools.writer).await?;
                        let $c: &mut SqliteConn = &mut conn;
                        Ok($body?)
                    }
                }
            })
            .await
    };
}

/// Rows of work per unit of a call's deadline (see [`StoreOptions::statement_timeout`]).
const ROWS_PER_UNIT: usize = 1000;

/// Whether a failed read is tried again: after a transient statement failure
/// (a connection lost to a server restart, a serialization failure, SQLite
/// busy), a few times, with a short backoff, all within the call's one
/// deadline. Failures to connect are not retried here: the checkout retried
/// them already.
#[derive(Debug)]
pub(crate) struct ReadRetry {
    attempt: u32,
    delay: Duration,
}

impl Default for ReadRetry {
    fn default() -> Self {
        ReadRetry {
            attempt: 1,
            delay: READ_RETRY_DELAY,
        }
    }
}

impl ReadRetry {
    /// `true` (after the pause) if the read that failed with `error` should
    /// run again.
    pub(crate) async fn again_after(&mut self, error: &StoreError) -> bool {
        if !matches!(error, StoreError::Database { .. })
            || !error.is_transient()
            || self.attempt >= READ_ATTEMPTS
        {
            return false;
        }
        debug!(%error, attempt = self.attempt, delay = ?self.delay, "read failed transiently; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay *= 3;
        self.attempt += 1;
        true
    }
}

/// How often a read is tried in all when it fails transiently.
const READ_ATTEMPTS: u32 = 4;

/// The pause before the first retry of a read; tripled before each next one
/// (50, 150, 450 ms: 650 ms in all).
const READ_RETRY_DELAY: Duration = Duration::from_millis(50);

impl Store {
    /// Opens the database at `url` with default [`StoreOptions`] and applies
    /// pending migrations.
    ///
    /// `None` opens (and creates) the SQLite file `./cascade.db`. Accepted
    /// URLs: `postgres://user:password@host:port/database` (also
    /// `postgresql://`), `sqlite://relative/path.db`, `sqlite:///absolute/path.db`
    /// and `sqlite::memory:`.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownScheme`], [`StoreError::MalformedUrl`],
    /// [`StoreError::Unavailable`] (server unreachable after retries),
    /// [`StoreError::SqliteOpen`], [`StoreError::SchemaTooNew`] and
    /// [`StoreError::Migration`].
    pub async fn open(url: Option<&str>) -> Result<Store> {
        Store::open_with(url, StoreOptions::default()).await
    }

    /// Like [`Store::open`], with explicit options.
    #[instrument(skip_all, fields(url = url.map(url::mask_password)), err)]
    pub async fn open_with(url: Option<&str>, options: StoreOptions) -> Result<Store> {
        let default_url = format!("sqlite://{}", url::DEFAULT_SQLITE_PATH);
        let raw_url = url.unwrap_or(&default_url);
        let masked = url::mask_password(raw_url);
        let pools = match url::parse(raw_url)? {
            Target::Postgres => {
                let pool = connect::pg_pool(raw_url, &options)?;
                connect::pg_migrate(&pool, &masked, &options).await?;
                Pools::Pg(pool)
            }
            Target::SqliteMemory => {
                let setup = connect::SqliteSetup {
                    path: ":memory:".to_owned(),
                    memory: true,
                };
                let pools = connect::sqlite_pools(&setup, &options)?;
                connect::sqlite_migrate(&pools, setup.path.as_ref(), &masked).await?;
                Pools::Sqlite(pools)
            }
            Target::SqliteFile(path) => {
                connect::prepare_sqlite_path(&path)?;
                let setup = connect::SqliteSetup {
                    path: path.to_string_lossy().into_owned(),
                    memory: false,
                };
                let mut pools = connect::sqlite_pools(&setup, &options)?;
                connect::sqlite_migrate(&pools, &path, &masked).await?;
                pools.checkpointer = connect::Checkpointer::start(&setup.path);
                Pools::Sqlite(pools)
            }
        };
        debug!(url = %masked, "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                url: masked,
                raw_url: raw_url.to_owned(),
                options,
                pools,
            }),
        })
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match self.inner.pools {
            Pools::Pg(_) => Backend::Postgres,
            Pools::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The database URL, password masked (`postgres://user:***@host/db`).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub(crate) async fn checkout_pg(
        &self,
        pool: &diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>> {
        connect::checkout(pool, &self.inner.url, &self.inner.options).await
    }

    /// Runs one store call under its client-side deadline
    /// ([`StoreOptions::statement_timeout`] plus a margin, times `units`);
    /// [`StoreError::Timeout`] when it passes. Dropping the call on timeout
    /// is safe: a connection left inside a transaction or with a broken
    /// session is discarded by the pool, never reused.
    pub(crate) async fn bounded<T>(&self, units: usize, call: impl Future<Output = Result<T>>) -> Result<T> {
        let Some(after) = self.inner.options.call_deadline(units) else {
            return call.await;
        };
        match tokio::time::timeout(after, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::Timeout {
                operation: "query",
                after,
            }),
        }
    }

    pub(crate) async fn checkout_sqlite(
        &self,
        pool: &diesel_async::pooled_connection::deadpool::Pool<SqliteConn>,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<SqliteConn>> {
        connect::checkout(pool, &self.inner.url, &self.inner.options).await
    }

    // ----- DAGs -------------------------------------------------------------

    /// Registers a DAG by its unique name.
    ///
    /// A new name creates version 1. The same hash as the latest version
    /// returns the record unchanged. A different hash creates version + 1,
    /// stores its definition next to the older ones and updates the
    /// description and schedule.
    #[instrument(skip_all, fields(dag.name = %dag.name), err)]
    pub async fn upsert_dag(&self, dag: NewDag) -> Result<DagRecord> {
        let dag = &dag;
        let row: DagRow = write_tx!(self, |c| {
            // Concurrent registrations of the same name (other processes)
            // lose a compare-and-set and go round again.
            for _ in 0..8 {
                let at = naive(rows::now());
                let existing: Option<DagRow> = dags::table
                    .filter(dags::name.eq(&dag.name))
                    .select(DagRow::as_select())
                    .first(c)
                    .await
                    .optional()?;
                match existing {
                    None => {
                        let inserted: Option<DagRow> = diesel::insert_into(dags::table)
                            .values(NewDagRow {
                                name: &dag.name,
                                description: &dag.description,
                                version: 1,
                                hash: &dag.hash,
                                schedule: dag.schedule.as_deref(),
                                paused: false,
                                created_at: at,
                                updated_at: at,
                            })
                            .on_conflict(dags::name)
                            .do_nothing()
                            .returning(DagRow::as_returning())
                            .get_result(c)
                            .await
                            .optional()?;
                        let Some(inserted) = inserted else { continue };
                        insert_version(c, &inserted, &dag.definition, at).await?;
                        return Ok(inserted);
                    }
                    Some(current) if current.hash == dag.hash => return Ok(current),
                    Some(current) => {
                        let updated: Option<DagRow> = diesel::update(dags::table)
                            .filter(dags::id.eq(current.id))
                            .filter(dags::version.eq(current.version))
                            .set((
                                dags::version.eq(current.version + 1),
                                dags::hash.eq(&dag.hash),
                                dags::description.eq(&dag.description),
                                dags::schedule.eq(dag.schedule.as_deref()),
                                dags::updated_at.eq(at),
                            ))
                            .returning(DagRow::as_returning())
                            .get_result(c)
                            .await
                            .optional()?;
                        let Some(updated) = updated else { continue };
                        insert_version(c, &updated, &dag.definition, at).await?;
                        return Ok(updated);
                    }
                }
            }
            Err(StoreError::from(diesel::result::Error::RollbackTransaction))
        })
        .map_err(|e| e.during("upsert_dag"))?;
        debug!(dag.id = row.id, version = row.version, "dag registered");
        Ok(row.into())
    }

    /// Every registered DAG, by name.
    #[instrument(skip_all, err)]
    pub async fn list_dags(&self) -> Result<Vec<DagRecord>> {
        let rows: Vec<DagRow> = read!(self, |c| {
            dags::table
                .order(dags::name.asc())
                .select(DagRow::as_select())
                .load(c)
                .await
        })
        .map_err(|e| e.during("list_dags"))?;
        Ok(rows.into_iter().map(DagRecord::from).collect())
    }

    /// One DAG by id; [`StoreError::DagNotFound`] if there is none.
    #[instrument(skip(self), err)]
    pub async fn get_dag(&self, dag_id: DagId) -> Result<DagRecord> {
        self.find_dag(dag_id)
            .await?
            .ok_or(StoreError::DagNotFound { dag_id })
    }

    async fn find_dag(&self, dag_id: DagId) -> Result<Option<DagRecord>> {
        let row: Option<DagRow> = read!(self, |c| {
            dags::table
                .find(dag_id.0)
                .select(DagRow::as_select())
                .first(c)
                .await
                .optional()
        })
        .map_err(|e| e.during("get_dag"))?;
        Ok(row.map(DagRecord::from))
    }

    /// One DAG by name, if registered.
    #[instrument(skip(self), err)]
    pub async fn get_dag_by_name(&self, name: &str) -> Result<Option<DagRecord>> {
        let row: Option<DagRow> = read!(self, |c| {
            dags::table
                .filter(dags::name.eq(name))
                .select(DagRow::as_select())
                .first(c)
                .await
                .optional()
        })
        .map_err(|e| e.during("get_dag_by_name"))?;
        Ok(row.map(DagRecord::from))
    }

    /// One stored version of a DAG, with its definition exactly as registered.
    #[instrument(skip(self), err)]
    pub async fn get_dag_version(&self, dag_id: DagId, version: i32) -> Result<DagVersion> {
        let row: Option<DagVersionRow> = read!(self, |c| {
            dag_versions::table
                .find((dag_id.0, version))
                .select(DagVersionRow::as_select())
                .first(c)
                .await
                .optional()
        })
        .map_err(|e| e.during("get_dag_version"))?;
        match row {
            Some(row) => Ok(row.into()),
            None if self.find_dag(dag_id).await?.is_none() => Err(StoreError::DagNotFound { dag_id }),
            None => Err(StoreError::DagVersionNotFound { dag_id, version }),
        }
    }

    /// Pauses or resumes a DAG's schedule.
    #[instrument(skip(self), err)]
    pub async fn set_dag_paused(&self, dag_id: DagId, paused: bool) -> Result<DagRecord> {
        let at = naive(rows::now());
        let row: Option<DagRow> = write_one!(self, |c| {
            diesel::update(dags::table.find(dag_id.0))
                .set((dags::paused.eq(paused), dags::updated_at.eq(at)))
                .returning(DagRow::as_returning())
                .get_result(c)
                .await
                .optional()
        })
        .map_err(|e| e.during("set_dag_paused"))?;
        row.map(DagRecord::from).ok_or(StoreError::DagNotFound { dag_id })
    }

    /// Compare-and-set on a DAG's cron schedule state: applies only if the
    /// stored `next_fire_at` equals `expected_next` (`None` matches a NULL),
    /// then stores `next_fire_at` and, when `Some`, `last_fired_at` (`None`
    /// leaves it unchanged). Returns whether it won; of several schedulers
    /// advancing the same tick, exactly one does.
    ///
    /// Times are kept at microsecond precision: a value read back from the
    /// store (or the same value passed again) always matches.
    /// [`StoreError::DagNotFound`] if there is no such DAG. `updated_at` is
    /// left alone.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store, dag: cascade_store::DagRecord) -> cascade_store::Result<()> {
    /// use chrono::{Duration, Utc};
    ///
    /// let fired = dag.next_fire_at.unwrap_or_else(Utc::now);
    /// let next = fired + Duration::hours(1);
    /// if store.advance_dag_schedule(dag.id, dag.next_fire_at, Some(fired), Some(next)).await? {
    ///     // This scheduler won the tick: create the job.
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), err)]
    pub async fn advance_dag_schedule(
        &self,
        dag_id: DagId,
        expected_next: Option<DateTime<Utc>>,
        last_fired_at: Option<DateTime<Utc>>,
        next_fire_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let expected = expected_next.map(naive);
        let next = next_fire_at.map(naive);
        let last = last_fired_at.map(naive);
        let update = diesel::update(dags::table.find(dag_id.0));
        let set = (
            dags::next_fire_at.eq(next),
            dags::last_fired_at.eq(rows::coalesce(last, dags::last_fired_at)),
        );
        let n = self
            .bounded(1, async {
                let n = match &self.inner.pools {
                    Pools::Pg(pool) => {
                        let mut conn = self.checkout_pg(pool).await?;
                        update
                            .filter(dags::next_fire_at.is_not_distinct_from(expected))
                            .set(set)
                            .execute(&mut *conn)
                            .await?
                    }
                    Pools::Sqlite(pools) => {
                        let mut conn = self.checkout_sqlite(&pools.writer).await?;
                        update
                            .filter(dags::next_fire_at.is(expected))
                            .set(set)
                            .execute(&mut *conn)
                            .await?
                    }
                };
                Ok(n)
            })
            .await
            .map_err(|e| e.during("advance_dag_schedule"))?;
        if n == 0 && self.find_dag(dag_id).await?.is_none() {
            return Err(StoreError::DagNotFound { dag_id });
        }
        Ok(n == 1)
    }

    // ----- jobs -------------------------------------------------------------

    /// Creates a job and all its task rows in one transaction.
    ///
    /// With an idempotency key that an existing job of the same DAG already
    /// carries, nothing is written and that job is returned with
    /// `created: false`; concurrent triggers with one key get one job.
    /// Each task row gets its [`NewTask::priority`](crate::NewTask::priority)
    /// and [`NewTask::labels`](crate::NewTask::labels).
    /// If any row fails (for example a duplicate task id), nothing is written.
    /// Params, texts and task rows that cannot be stored (a NUL character,
    /// JSON nested deeper than can be read back) are refused with
    /// [`StoreError::InvalidValue`].
    #[instrument(skip_all, fields(dag.id = %job.dag_id, n_tasks = job.tasks.len()), err)]
    pub async fn create_job(&self, job: NewJob) -> Result<CreatedJob> {
        crate::values::check_new_job(&job)?;
        let job = &job;
        let dag_id = job.dag_id;
        let units = 1 + job.tasks.len() / ROWS_PER_UNIT;
        let created: Option<(JobRow, bool)> = write_tx!(self, units = units, |c| {
            let dag_exists: Option<i64> = dags::table
                .find(dag_id.0)
                .select(dags::id)
                .first(c)
                .await
                .optional()?;
            if dag_exists.is_none() {
                return Ok(None);
            }
            let at = naive(rows::now());
            let started_at = (job.status != crate::JobStatus::Pending).then_some(at);
            let inserted: Option<JobRow> = diesel::insert_into(jobs::table)
                .values(NewJobRow {
                    dag_id: dag_id.0,
                    dag_version: job.dag_version,
                    status: job.status.as_str(),
                    trigger: &job.trigger,
                    params: JsonValue(job.params.clone()),
                    idempotency_key: job.idempotency_key.as_deref(),
                    error: None,
                    created_at: at,
                    started_at,
                    completed_at: job.status.is_terminal().then_some(at),
                    updated_at: at,
                    owner: job.owner.as_deref(),
                    lease_expires_at: job.lease_expires_at.map(naive),
                })
                .on_conflict((jobs::dag_id, jobs::idempotency_key))
                .do_nothing()
                .returning(JobRow::as_returning())
                .get_result(c)
                .await
                .optional()?;
            let Some(inserted) = inserted else {
                // The key matched: return the job that holds it.
                let existing: JobRow = jobs::table
                    .filter(jobs::dag_id.eq(dag_id.0))
                    .filter(jobs::idempotency_key.eq(job.idempotency_key.as_deref()))
                    .select(JobRow::as_select())
                    .first(c)
                    .await?;
                return Ok(Some((existing, false)));
            };
            // A lease runs on the database's clock (see `DbTime`).
            let inserted = match job.lease_expires_at {
                Some(lease_until) if self.backend() == crate::Backend::Postgres => {
                    diesel::update(jobs::table.find(inserted.id))
                        .set(jobs::lease_expires_at.eq(DbTime::at(lease_until).nullable()))
                        .returning(JobRow::as_returning())
                        .get_result(c)
                        .await?
                }
                _ => inserted,
            };
            for chunk in job.tasks.chunks(TASK_INSERT_CHUNK) {
                let rows: Vec<NewTaskRow> = chunk
                    .iter()
                    .map(|task| NewTaskRow::new(inserted.id, task, at))
                    .collect();
                crate::batch::InsertRows::insert_task_rows(c, rows).await?;
            }
            Ok(Some((inserted, true)))
        })
        .map_err(|e| e.during("create_job"))?;
        let Some((row, created)) = created else {
            return Err(StoreError::DagNotFound { dag_id });
        };
        let job = Job::try_from(row)?;
        debug!(job.id = %job.id, created, "job created");
        Ok(CreatedJob { job, created })
    }

    /// One job by id; [`StoreError::JobNotFound`] if there is none.
    #[instrument(skip(self), err)]
    pub async fn get_job(&self, job_id: JobId) -> Result<Job> {
        let row: Option<JobRow> = read!(self, |c| {
            jobs::table
                .find(job_id.0)
                .select(JobRow::as_select())
                .first(c)
                .await
                .optional()
        })
        .map_err(|e| e.during("get_job"))?;
        row.ok_or(StoreError::JobNotFound { job_id })?.try_into()
    }

    /// A job with its DAG and all its task executions, read consistently.
    #[instrument(skip(self), err)]
    pub async fn get_job_with_details(&self, job_id: JobId) -> Result<JobDetails> {
        let found: Option<(JobRow, DagRow, Vec<TaskRow>, Vec<AttemptSpan>)> = read!(self, |c| {
            c.transaction(async |c| -> Result<_> {
                let Some(job) = jobs::table
                    .find(job_id.0)
                    .select(JobRow::as_select())
                    .first(c)
                    .await
                    .optional()?
                else {
                    return Ok(None);
                };
                let dag: DagRow = dags::table
                    .find(job.dag_id)
                    .select(DagRow::as_select())
                    .first(c)
                    .await?;
                let tasks: Vec<TaskRow> = task_executions::table
                    .filter(task_executions::job_id.eq(job_id.0))
                    .order(task_executions::id.asc())
                    .select(TaskRow::as_select())
                    .load(c)
                    .await?;
                let spans: Vec<AttemptSpan> = task_attempts::table
                    .filter(task_attempts::job_id.eq(job_id.0))
                    .select((
                        task_attempts::task_id,
                        task_attempts::started_at,
                        task_attempts::finished_at,
                    ))
                    .load(c)
                    .await?;
                Ok(Some((job, dag, tasks, spans)))
            })
            .await
        })
        .map_err(|e| e.during("get_job_with_details"))?;
        let (job, dag, tasks, spans) = found.ok_or(StoreError::JobNotFound { job_id })?;
        let tasks: Vec<TaskExecution> = tasks
            .into_iter()
            .map(TaskExecution::try_from)
            .collect::<Result<_>>()?;
        let attempt_summaries = summarize_attempts(&tasks, spans);
        Ok(JobDetails {
            job: job.try_into()?,
            dag: dag.into(),
            tasks,
            attempt_summaries,
        })
    }

    /// Jobs matching `filter`, newest first.
    #[instrument(skip(self), err)]
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        let rows: Vec<JobRow> = read!(self, |c| {
            let mut query = jobs::table
                .select(JobRow::as_select())
                .order(jobs::id.desc())
                .limit(filter.limit.max(0))
                .offset(filter.offset.max(0))
                .into_boxed();
            if let Some(dag_id) = filter.dag_id {
                query = query.filter(jobs::dag_id.eq(dag_id.0));
            }
            if let Some(status) = filter.status {
                query = query.filter(jobs::status.eq(status.as_str()));
            }
            query.load(c).await
        })
        .map_err(|e| e.during("list_jobs"))?;
        rows.into_iter().map(Job::try_from).collect()
    }

    /// One task execution of a job, as committed; `None` if the job has no
    /// such task.
    #[instrument(skip(self), err)]
    pub async fn get_task_execution(&self, job_id: JobId, task_id: &str) -> Result<Option<TaskExecution>> {
        let row: Option<TaskRow> = read!(self, |c| {
            task_executions::table
                .filter(task_executions::job_id.eq(job_id.0))
                .filter(task_executions::task_id.eq(task_id))
                .select(TaskRow::as_select())
                .first(c)
                .await
                .optional()
        })
        .map_err(|e| e.during("get_task_execution"))?;
        row.map(TaskExecution::try_from).transpose()
    }

    /// The task executions of a job, in creation order (empty for an unknown job).
    #[instrument(skip(self), err)]
    pub async fn list_task_executions_for_job(&self, job_id: JobId) -> Result<Vec<TaskExecution>> {
        let rows: Vec<TaskRow> = read!(self, |c| {
            task_executions::table
                .filter(task_executions::job_id.eq(job_id.0))
                .order(task_executions::id.asc())
                .select(TaskRow::as_select())
                .load(c)
                .await
        })
        .map_err(|e| e.during("list_task_executions_for_job"))?;
        rows.into_iter().map(TaskExecution::try_from).collect()
    }

    /// The recorded attempts of one task, oldest first.
    #[instrument(skip(self), err)]
    pub async fn list_task_attempts(&self, job_id: JobId, task_id: &str) -> Result<Vec<TaskAttempt>> {
        let rows: Vec<AttemptRow> = read!(self, |c| {
            task_attempts::table
                .filter(task_attempts::job_id.eq(job_id.0))
                .filter(task_attempts::task_id.eq(task_id))
                .order((task_attempts::attempt.asc(), task_attempts::id.asc()))
                .select(AttemptRow::as_select())
                .load(c)
                .await
        })
        .map_err(|e| e.during("list_task_attempts"))?;
        rows.into_iter().map(TaskAttempt::try_from).collect()
    }

    // ----- job ownership ------------------------------------------------------

    /// Makes `owner` the owner of an unfinished job until `lease_until`, in
    /// one compare-and-set; returns whether it won.
    ///
    /// It wins if the job is `pending` or `running` and is unowned, already
    /// owned by `owner` (a renewal), or its lease expired before `now`. A
    /// finished job is never claimed. [`StoreError::JobNotFound`] if there is
    /// no such job.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store, job_id: cascade_store::JobId) -> cascade_store::Result<()> {
    /// use chrono::{Duration, Utc};
    ///
    /// let now = Utc::now();
    /// if store.claim_job(job_id, "engine-a", now + Duration::seconds(30), now).await? {
    ///     // engine-a runs the job and renews its leases periodically.
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), err)]
    pub async fn claim_job(
        &self,
        job_id: JobId,
        owner: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (lease_until, now) = (DbTime::at(lease_until), DbTime::at(now));
        let n = write_one!(self, |c| {
            diesel::update(jobs::table.find(job_id.0))
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .filter(
                    jobs::owner
                        .is_null()
                        .or(jobs::owner.eq(owner))
                        .or(jobs::lease_expires_at.lt(now.nullable())),
                )
                .set((
                    jobs::owner.eq(owner),
                    jobs::lease_expires_at.eq(lease_until.nullable()),
                ))
                .execute(c)
                .await
        })
        .map_err(|e| e.during("claim_job"))?;
        if n == 0 {
            // Distinguish "lost" from "no such job" only on the slow path.
            self.get_job(job_id).await?;
            debug!("job claim lost (owned by another engine with a live lease, or finished)");
        }
        Ok(n == 1)
    }

    /// Extends to `lease_until` the lease of every `pending` or `running` job
    /// owned by `owner`; returns how many jobs that was.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store) -> cascade_store::Result<()> {
    /// use chrono::{Duration, Utc};
    ///
    /// let renewed = store.renew_job_leases("engine-a", Utc::now() + Duration::seconds(30)).await?;
    /// # let _ = renewed;
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), err)]
    pub async fn renew_job_leases(&self, owner: &str, lease_until: DateTime<Utc>) -> Result<u64> {
        let lease_until = DbTime::at(lease_until);
        let n = write_one!(self, |c| {
            diesel::update(jobs::table)
                .filter(jobs::owner.eq(owner))
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .set(jobs::lease_expires_at.eq(lease_until.nullable()))
                .execute(c)
                .await
        })
        .map_err(|e| e.during("renew_job_leases"))?;
        Ok(n as u64)
    }

    /// Extends to `lease_until` the lease of those of `job_ids` that are still
    /// unfinished and owned by `owner`; returns the ids it extended. An id
    /// missing from the answer is no longer this owner's to run (another
    /// engine took it over after its lease ended, or it finished).
    #[instrument(skip(self, job_ids), fields(n = job_ids.len()), err)]
    pub async fn renew_leases_of_jobs(
        &self,
        owner: &str,
        job_ids: &[JobId],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<JobId>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let lease_until = DbTime::at(lease_until);
        let ids: Vec<i64> = job_ids.iter().map(|id| id.0).collect();
        let renewed: Vec<i64> = write_one!(self, |c| {
            diesel::update(jobs::table)
                .filter(jobs::id.eq_any(&ids))
                .filter(jobs::owner.eq(owner))
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .set(jobs::lease_expires_at.eq(lease_until.nullable()))
                .returning(jobs::id)
                .get_results(c)
                .await
        })
        .map_err(|e| e.during("renew_leases_of_jobs"))?;
        Ok(renewed.into_iter().map(JobId).collect())
    }

    /// Records a request to cancel a job, if it is unfinished; returns whether
    /// it is (a finished job is left as it is). Whichever node runs the job
    /// reads the request from the row and cancels it; a notification only
    /// wakes nodes up to look. From then on no task of the job can commit
    /// `success`: that compare-and-set loses, whoever runs the task, so an
    /// attempt that was running when the request was stored ends otherwise.
    #[instrument(skip(self), err)]
    pub async fn request_cancel(&self, job_id: JobId) -> Result<bool> {
        let now = naive(rows::now());
        let n = write_one!(self, |c| {
            diesel::update(jobs::table.find(job_id.0))
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .filter(jobs::cancel_requested_at.is_null())
                .set(jobs::cancel_requested_at.eq(now))
                .execute(c)
                .await
        })
        .map_err(|e| e.during("request_cancel"))?;
        if n == 1 {
            return Ok(true);
        }
        let job = self.get_job(job_id).await?;
        Ok(!job.status.is_terminal())
    }

    /// Those of `job_ids` that are unfinished and have a stored cancel request.
    #[instrument(skip(self, job_ids), fields(n = job_ids.len()), err)]
    pub async fn jobs_with_cancel_requests(&self, job_ids: &[JobId]) -> Result<Vec<JobId>> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = job_ids.iter().map(|id| id.0).collect();
        let found: Vec<i64> = read!(self, |c| {
            jobs::table
                .filter(jobs::id.eq_any(&ids))
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .filter(jobs::cancel_requested_at.is_not_null())
                .select(jobs::id)
                .load(c)
                .await
        })
        .map_err(|e| e.during("jobs_with_cancel_requests"))?;
        Ok(found.into_iter().map(JobId).collect())
    }

    /// Gives up every job owned by `owner` (owner and lease become NULL), for
    /// a graceful shutdown: other engines may claim them at once. Returns how
    /// many jobs that was.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store) -> cascade_store::Result<()> {
    /// let released = store.release_jobs("engine-a").await?;
    /// # let _ = released;
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), err)]
    pub async fn release_jobs(&self, owner: &str) -> Result<u64> {
        let n = write_one!(self, |c| {
            diesel::update(jobs::table)
                .filter(jobs::owner.eq(owner))
                .set((
                    jobs::owner.eq(None::<&str>),
                    jobs::lease_expires_at.eq(None::<chrono::NaiveDateTime>),
                ))
                .execute(c)
                .await
        })
        .map_err(|e| e.during("release_jobs"))?;
        Ok(n as u64)
    }

    /// Up to `limit` `pending` or `running` jobs of the given DAGs that nobody
    /// owns or whose lease expired before `now`, oldest first. Claim each one
    /// with [`Store::claim_job`] before running it.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store, dag: cascade_store::DagId) -> cascade_store::Result<()> {
    /// use chrono::Utc;
    ///
    /// for job in store.list_claimable_jobs(&[dag], Utc::now(), 100).await? {
    ///     println!("job {} can be taken over", job.id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self), fields(n_dags = dag_ids.len()), err)]
    pub async fn list_claimable_jobs(
        &self,
        dag_ids: &[DagId],
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        if dag_ids.is_empty() || limit <= 0 {
            return Ok(Vec::new());
        }
        let now = DbTime::at(now);
        let dag_ids: Vec<i64> = dag_ids.iter().map(|id| id.0).collect();
        let rows: Vec<JobRow> = read!(self, |c| {
            jobs::table
                .filter(jobs::dag_id.eq_any(&dag_ids))
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .filter(
                    jobs::owner
                        .is_null()
                        .or(jobs::lease_expires_at.lt(now.nullable())),
                )
                .order(jobs::id.asc())
                .limit(limit)
                .select(JobRow::as_select())
                .load(c)
                .await
        })
        .map_err(|e| e.during("list_claimable_jobs"))?;
        rows.into_iter().map(Job::try_from).collect()
    }

    /// Up to `limit` unfinished (`pending` or `running`) jobs, oldest first,
    /// whoever owns them: of the given DAGs, or of every DAG when `dag_ids` is
    /// `None`; without those owned by `except_owner` when given. What a caller
    /// looks through for jobs left by engines that are gone.
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store) -> cascade_store::Result<()> {
    /// for job in store.list_unfinished_jobs(None, None, 100).await? {
    ///     println!("job {} is owned by {:?}", job.id, job.owner);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    #[instrument(skip(self, dag_ids), err)]
    pub async fn list_unfinished_jobs(
        &self,
        dag_ids: Option<&[DagId]>,
        except_owner: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Job>> {
        if limit <= 0 || dag_ids.is_some_and(<[DagId]>::is_empty) {
            return Ok(Vec::new());
        }
        let dag_ids: Option<Vec<i64>> = dag_ids.map(|ids| ids.iter().map(|id| id.0).collect());
        let rows: Vec<JobRow> = read!(self, |c| {
            let mut query = jobs::table
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .order(jobs::id.asc())
                .limit(limit)
                .select(JobRow::as_select())
                .into_boxed();
            if let Some(ids) = &dag_ids {
                query = query.filter(jobs::dag_id.eq_any(ids));
            }
            if let Some(owner) = except_owner {
                query = query.filter(jobs::owner.is_null().or(jobs::owner.ne(owner)));
            }
            query.load(c).await
        })
        .map_err(|e| e.during("list_unfinished_jobs"))?;
        rows.into_iter().map(Job::try_from).collect()
    }

    /// Takes an unfinished job over from `previous_owner`, whatever its lease
    /// says, in one compare-and-set: for an owner known to be gone (a process
    /// on this host that no longer exists). Returns whether it won; it loses
    /// when the job finished or changed owner meanwhile.
    #[instrument(skip(self), err)]
    pub async fn take_over_job(
        &self,
        job_id: JobId,
        previous_owner: &str,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool> {
        let lease_until = DbTime::at(lease_until);
        let n = write_one!(self, |c| {
            diesel::update(jobs::table.find(job_id.0))
                .filter(jobs::status.eq_any(UNFINISHED_JOB))
                .filter(jobs::owner.eq(previous_owner))
                .set((
                    jobs::owner.eq(owner),
                    jobs::lease_expires_at.eq(lease_until.nullable()),
                ))
                .execute(c)
                .await
        })
        .map_err(|e| e.during("take_over_job"))?;
        Ok(n == 1)
    }

    // ----- transitions --------------------------------------------------------

    /// Compare-and-set on a job; `true` if the job was in `from` and is now in `to`.
    #[instrument(skip_all, fields(job.id = %transition.job_id, from = %transition.from, to = %transition.to), err)]
    pub async fn transition_job(&self, transition: JobTransition) -> Result<bool> {
        crate::values::check_job(&transition)?;
        let cas = JobCas::new(&transition, naive(rows::now()));
        let n = write_one!(self, |c| rows::job_cas_query!(cas).execute(c).await)
            .map_err(|e| e.during("transition_job"))?;
        if n == 0 {
            debug!("job transition lost its compare-and-set");
        }
        Ok(n == 1)
    }

    /// Compare-and-set on a task execution; `true` if the row was in `from`
    /// with the expected fencing token and now is in `to`.
    ///
    /// A stale writer (wrong state or token) changes nothing and gets `false`,
    /// and so does a transition to `success` while the job has a stored
    /// cancel request ([`Store::request_cancel`]).
    #[instrument(skip_all, fields(job.id = %transition.job_id, task.id = %transition.task_id, from = %transition.from, to = %transition.to), err)]
    pub async fn transition_task(&self, transition: TaskTransition) -> Result<bool> {
        crate::values::check_task(&transition)?;
        let cas = TaskCas::new(&transition, naive(rows::now()));
        // A success must also find no cancel request on its job, which only
        // the batch statements check.
        let won = if cas.attempt.is_none() && cas.set.status != TaskStatus::Success.as_str() {
            // A single statement needs no explicit transaction.
            let n = match &self.inner.pools {
                Pools::Pg(_) => write_one!(self, |c| rows::task_cas_query!(cas).execute(c).await),
                Pools::Sqlite(pools) => {
                    // The fixed-shape statement, prepared once on the writer.
                    self.bounded(1, async {
                        let mut conn = self.checkout_sqlite(&pools.writer).await?;
                        let n = conn
                            .spawn_blocking(move |c| {
                                diesel::RunQueryDsl::execute(crate::batch::SqliteTaskCas::new(&cas), c)
                            })
                            .await?;
                        Ok(n)
                    })
                    .await
                }
            };
            n.map_err(|e| e.during("transition_task"))? == 1
        } else {
            let outcome = self
                .apply_batch(vec![cas], Vec::new(), &[])
                .await
                .map_err(|e| e.during("transition_task"))?;
            matches!(outcome.tasks.as_slice(), [true])
        };
        if !won {
            debug!("task transition lost its compare-and-set (stale state or fencing token)");
        }
        Ok(won)
    }

    /// Applies many transitions in ONE transaction and reports, per input and
    /// in order, whether each compare-and-set won.
    ///
    /// Task transitions apply in order (a later transition of the same task
    /// sees the earlier one), then job transitions. Attempt records are
    /// written only for winning task transitions. A transition to `success`
    /// loses while its job has a stored cancel request. If the transaction fails,
    /// nothing is applied and the error is returned; a value that cannot be
    /// stored (a NUL character in a text or JSON string, JSON nested deeper
    /// than can be read back) fails the whole batch with
    /// [`StoreError::InvalidValue`] before anything is sent. To keep one
    /// job's bad value from holding back the others, see
    /// [`Store::commit_transitions_by_job`].
    ///
    /// On PostgreSQL the batch's [`notifications`](TransitionBatch::notifications)
    /// are sent with `pg_notify` in the same transaction, so listeners hear of
    /// them only once the transitions are committed, and never if it fails.
    /// SQLite ignores them.
    #[instrument(skip_all, fields(n_tasks = batch.tasks.len(), n_jobs = batch.jobs.len()), err)]
    pub async fn commit_transitions(&self, batch: &TransitionBatch) -> Result<BatchOutcome> {
        let notifications: &[crate::model::Notification] = match self.backend() {
            Backend::Postgres => &batch.notifications,
            Backend::Sqlite => &[],
        };
        if batch.is_empty() && notifications.is_empty() {
            return Ok(BatchOutcome::default());
        }
        for transition in &batch.tasks {
            crate::values::check_task(transition)?;
        }
        for transition in &batch.jobs {
            crate::values::check_job(transition)?;
        }
        let at = naive(rows::now());
        let tasks: Vec<TaskCas> = batch.tasks.iter().map(|t| TaskCas::new(t, at)).collect();
        let jobs: Vec<JobCas> = batch.jobs.iter().map(|j| JobCas::new(j, at)).collect();
        let outcome = self
            .apply_batch(tasks, jobs, notifications)
            .await
            .map_err(|e| e.during("commit_transitions"))?;
        debug!(
            tasks_won = outcome.tasks.iter().filter(|w| **w).count(),
            jobs_won = outcome.jobs.iter().filter(|w| **w).count(),
            "transitions committed"
        );
        Ok(outcome)
    }

    async fn apply_batch(
        &self,
        tasks: Vec<TaskCas>,
        jobs: Vec<JobCas>,
        notifications: &[crate::model::Notification],
    ) -> Result<BatchOutcome> {
        let units = 1 + (tasks.len() + jobs.len()) / ROWS_PER_UNIT;
        self.bounded(units, async {
            match &self.inner.pools {
                Pools::Pg(pool) => {
                    let mut conn = self.checkout_pg(pool).await?;
                    // One statement, or its own transaction when longer.
                    crate::batch::pg_apply(&mut conn, &tasks, &jobs, notifications).await
                }
                Pools::Sqlite(pools) => {
                    let mut conn = self.checkout_sqlite(&pools.writer).await?;
                    conn.spawn_blocking(move |c| {
                        c.immediate_transaction(|c| crate::batch::sqlite_apply(c, &tasks, &jobs))
                    })
                    .await
                    .map_err(StoreError::from)
                }
            }
        })
        .await
    }
}

async fn insert_version<C>(c: &mut C, dag: &DagRow, definition: &str, at: chrono::NaiveDateTime) -> Result<()>
where
    C: AsyncConnection,
    for<'a> diesel::dsl::Values<diesel::dsl::insert_into<dag_versions::table>, DagVersionRow>:
        diesel_async::methods::ExecuteDsl<C>,
{
    diesel::insert_into(dag_versions::table)
        .values(DagVersionRow {
            dag_id: dag.id,
            version: dag.version,
            hash: dag.hash.clone(),
            definition: definition.to_owned(),
            created_at: at,
        })
        .execute(c)
        .await?;
    Ok(())
}

#[path = "distributed.rs"]
mod distributed;

pub use self::distributed::{Leadership, NotificationStream};

/// An attempt's task, start and end, as read for [`AttemptSummary`].
type AttemptSpan = (
    String,
    Option<chrono::NaiveDateTime>,
    Option<chrono::NaiveDateTime>,
);

/// Adds up each task's attempts, in the order of `tasks`.
fn summarize_attempts(tasks: &[TaskExecution], spans: Vec<AttemptSpan>) -> Vec<AttemptSummary> {
    let mut by_task: std::collections::HashMap<String, AttemptSummary> = std::collections::HashMap::new();
    for (task_id, started, finished) in spans {
        let summary = by_task.entry(task_id.clone()).or_insert_with(|| AttemptSummary {
            task_id,
            attempts: 0,
            first_started_at: None,
            last_finished_at: None,
            total_run_time: std::time::Duration::ZERO,
        });
        summary.attempts += 1;
        let started = started.map(|t| t.and_utc());
        let finished = finished.map(|t| t.and_utc());
        if let Some(s) = started {
            summary.first_started_at = Some(summary.first_started_at.map_or(s, |f| f.min(s)));
        }
        if let Some(f) = finished {
            summary.last_finished_at = Some(summary.last_finished_at.map_or(f, |l| l.max(f)));
        }
        if let (Some(s), Some(f)) = (started, finished) {
            summary.total_run_time += (f - s).to_std().unwrap_or_default();
        }
    }
    tasks
        .iter()
        .filter_map(|task| by_task.remove(&task.task_id))
        .collect()
}
