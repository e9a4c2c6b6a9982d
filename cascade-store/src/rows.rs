//! Row structs as stored, and their conversion to the public records.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use diesel::prelude::*;

use crate::error::{Result, StoreError};
use crate::ids::{DagId, JobId, JobStatus, TaskStatus};
use crate::json::JsonValue;
use crate::model::{
    DagRecord, DagVersion, Job, NewTask, TaskAttempt, TaskChanges, TaskExecution, TaskTransition,
};
use crate::schema::{dag_versions, dags, jobs, task_attempts, task_executions};

/// The current time at the databases' common precision (microseconds).
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// UTC to the naive UTC that `TIMESTAMP` columns hold, at microsecond precision.
pub(crate) fn naive(at: DateTime<Utc>) -> NaiveDateTime {
    at.trunc_subsecs(6).naive_utc()
}

pub(crate) fn utc(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

fn parse_job_status(value: String) -> Result<JobStatus> {
    value.parse().map_err(|_| StoreError::Corrupt {
        column: "jobs.status",
        value,
    })
}

fn parse_task_status(column: &'static str, value: String) -> Result<TaskStatus> {
    value.parse().map_err(|_| StoreError::Corrupt { column, value })
}

/// A count column (attempts, losses) as the model's `u32`; a negative value
/// was written outside cascade.
fn count(column: &'static str, value: i32) -> Result<u32> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt {
        column,
        value: value.to_string(),
    })
}

/// A count as stored (the columns are 32-bit signed integers).
pub(crate) fn stored(count: u32) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// A list column (queues, labels) as stored: a JSON array of strings.
pub(crate) fn encode_labels(list: &[String]) -> String {
    serde_json::to_string(list).expect("a list of strings serialises")
}

/// Decodes a list column written by [`encode_labels`]; anything else is
/// [`StoreError::Corrupt`].
pub(crate) fn decode_labels(column: &'static str, value: String) -> Result<Vec<String>> {
    serde_json::from_str(&value).map_err(|_| StoreError::Corrupt { column, value })
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = dags)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub(crate) struct DagRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) version: i32,
    pub(crate) hash: String,
    pub(crate) schedule: Option<String>,
    pub(crate) paused: bool,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) next_fire_at: Option<NaiveDateTime>,
    pub(crate) last_fired_at: Option<NaiveDateTime>,
}

impl From<DagRow> for DagRecord {
    fn from(row: DagRow) -> Self {
        DagRecord {
            id: DagId(row.id),
            name: row.name,
            description: row.description,
            version: row.version,
            hash: row.hash,
            schedule: row.schedule,
            paused: row.paused,
            created_at: utc(row.created_at),
            updated_at: utc(row.updated_at),
            next_fire_at: row.next_fire_at.map(utc),
            last_fired_at: row.last_fired_at.map(utc),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = dags)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewDagRow<'a> {
    pub(crate) name: &'a str,
    pub(crate) description: &'a str,
    pub(crate) version: i32,
    pub(crate) hash: &'a str,
    pub(crate) schedule: Option<&'a str>,
    pub(crate) paused: bool,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = dag_versions)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub(crate) struct DagVersionRow {
    pub(crate) dag_id: i64,
    pub(crate) version: i32,
    pub(crate) hash: String,
    pub(crate) definition: String,
    pub(crate) created_at: NaiveDateTime,
}

impl From<DagVersionRow> for DagVersion {
    fn from(row: DagVersionRow) -> Self {
        DagVersion {
            dag_id: DagId(row.dag_id),
            version: row.version,
            hash: row.hash,
            definition: row.definition,
            created_at: utc(row.created_at),
        }
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = jobs)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub(crate) struct JobRow {
    pub(crate) id: i64,
    pub(crate) dag_id: i64,
    pub(crate) dag_version: i32,
    pub(crate) status: String,
    pub(crate) trigger: String,
    pub(crate) params: JsonValue,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) completed_at: Option<NaiveDateTime>,
    pub(crate) owner: Option<String>,
    pub(crate) lease_expires_at: Option<NaiveDateTime>,
    pub(crate) cancel_requested_at: Option<NaiveDateTime>,
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self> {
        Ok(Job {
            id: JobId(row.id),
            dag_id: DagId(row.dag_id),
            dag_version: row.dag_version,
            status: parse_job_status(row.status)?,
            trigger: row.trigger,
            params: row.params.0,
            idempotency_key: row.idempotency_key,
            error: row.error,
            created_at: utc(row.created_at),
            started_at: row.started_at.map(utc),
            completed_at: row.completed_at.map(utc),
            owner: row.owner,
            lease_expires_at: row.lease_expires_at.map(utc),
            cancel_requested_at: row.cancel_requested_at.map(utc),
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = jobs)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewJobRow<'a> {
    pub(crate) dag_id: i64,
    pub(crate) dag_version: i32,
    pub(crate) status: &'static str,
    pub(crate) trigger: &'a str,
    pub(crate) params: JsonValue,
    pub(crate) idempotency_key: Option<&'a str>,
    pub(crate) error: Option<&'a str>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) completed_at: Option<NaiveDateTime>,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) owner: Option<&'a str>,
    pub(crate) lease_expires_at: Option<NaiveDateTime>,
}

#[derive(Debug, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = task_executions)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub(crate) struct TaskRow {
    pub(crate) id: i64,
    pub(crate) job_id: i64,
    pub(crate) task_id: String,
    pub(crate) status: String,
    pub(crate) attempt: i32,
    pub(crate) fencing_token: i64,
    pub(crate) worker: Option<String>,
    pub(crate) queue: String,
    pub(crate) result: Option<JsonValue>,
    pub(crate) error: Option<String>,
    pub(crate) next_attempt_at: Option<NaiveDateTime>,
    pub(crate) lease_expires_at: Option<NaiveDateTime>,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) completed_at: Option<NaiveDateTime>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) priority: i32,
    pub(crate) lost_count: i32,
    pub(crate) labels: String,
    pub(crate) retry_base: i32,
}

impl TryFrom<TaskRow> for TaskExecution {
    type Error = StoreError;

    fn try_from(row: TaskRow) -> Result<Self> {
        Ok(TaskExecution {
            id: row.id,
            job_id: JobId(row.job_id),
            task_id: row.task_id,
            status: parse_task_status("task_executions.status", row.status)?,
            attempt: count("task_executions.attempt", row.attempt)?,
            fencing_token: row.fencing_token,
            worker: row.worker,
            queue: row.queue,
            result: row.result.map(|json| json.0),
            error: row.error,
            next_attempt_at: row.next_attempt_at.map(utc),
            lease_expires_at: row.lease_expires_at.map(utc),
            started_at: row.started_at.map(utc),
            completed_at: row.completed_at.map(utc),
            created_at: utc(row.created_at),
            updated_at: utc(row.updated_at),
            priority: row.priority,
            lost_count: count("task_executions.lost_count", row.lost_count)?,
            labels: decode_labels("task_executions.labels", row.labels)?,
            retry_base: count("task_executions.retry_base", row.retry_base)?,
        })
    }
}

/// A task row to insert (owned, so it can cross `spawn_blocking`). Every
/// column is bound (no DEFAULT), which SQLite's multi-row `INSERT` requires.
#[derive(Debug, Insertable)]
#[diesel(table_name = task_executions)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewTaskRow {
    pub(crate) job_id: i64,
    pub(crate) task_id: String,
    pub(crate) status: &'static str,
    pub(crate) attempt: i32,
    pub(crate) fencing_token: i64,
    pub(crate) queue: String,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) priority: i32,
    pub(crate) labels: String,
}

impl NewTaskRow {
    pub(crate) fn new(job_id: i64, task: &NewTask, at: NaiveDateTime) -> Self {
        NewTaskRow {
            job_id,
            task_id: task.task_id.clone(),
            status: task.status.as_str(),
            attempt: stored(task.attempt),
            fencing_token: task.fencing_token,
            queue: task.queue.clone(),
            started_at: task.started_at.map(naive),
            created_at: at,
            updated_at: at,
            priority: task.priority,
            labels: encode_labels(&task.labels),
        }
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = task_attempts)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub(crate) struct AttemptRow {
    pub(crate) job_id: i64,
    pub(crate) task_id: String,
    pub(crate) attempt: i32,
    pub(crate) status: String,
    pub(crate) worker: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) finished_at: Option<NaiveDateTime>,
}

impl TryFrom<AttemptRow> for TaskAttempt {
    type Error = StoreError;

    fn try_from(row: AttemptRow) -> Result<Self> {
        Ok(TaskAttempt {
            job_id: JobId(row.job_id),
            task_id: row.task_id,
            attempt: count("task_attempts.attempt", row.attempt)?,
            status: parse_task_status("task_attempts.status", row.status)?,
            worker: row.worker,
            error: row.error,
            output: row.output,
            started_at: row.started_at.map(utc),
            finished_at: row.finished_at.map(utc),
        })
    }
}

/// An attempt-history row to insert (owned, so it can cross `spawn_blocking`).
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = task_attempts)]
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct NewAttemptRow {
    pub(crate) job_id: i64,
    pub(crate) task_id: String,
    pub(crate) attempt: i32,
    pub(crate) status: &'static str,
    pub(crate) worker: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) finished_at: Option<NaiveDateTime>,
}

impl From<&TaskAttempt> for NewAttemptRow {
    fn from(attempt: &TaskAttempt) -> Self {
        NewAttemptRow {
            job_id: attempt.job_id.0,
            task_id: attempt.task_id.clone(),
            attempt: stored(attempt.attempt),
            status: attempt.status.as_str(),
            worker: attempt.worker.clone(),
            error: attempt.error.clone(),
            output: attempt.output.clone(),
            started_at: attempt.started_at.map(naive),
            finished_at: attempt.finished_at.map(naive),
        }
    }
}

/// The `SET` list of a task transition. `None` leaves a column alone;
/// `Some(None)` writes NULL.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = task_executions)]
pub(crate) struct TaskChangeset {
    pub(crate) status: &'static str,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) attempt: Option<i32>,
    pub(crate) fencing_token: Option<i64>,
    pub(crate) worker: Option<String>,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) lease_expires_at: Option<NaiveDateTime>,
    pub(crate) result: Option<Option<JsonValue>>,
    pub(crate) error: Option<Option<String>>,
    pub(crate) completed_at: Option<Option<NaiveDateTime>>,
    pub(crate) next_attempt_at: Option<Option<NaiveDateTime>>,
    pub(crate) priority: Option<i32>,
    pub(crate) retry_base: Option<i32>,
    pub(crate) lost_count: Option<i32>,
}

/// One task compare-and-set, owned and ready to run on either backend.
#[derive(Debug, Clone)]
pub(crate) struct TaskCas {
    pub(crate) job_id: i64,
    pub(crate) task_id: String,
    pub(crate) from: &'static str,
    pub(crate) fencing_token: i64,
    pub(crate) set: TaskChangeset,
    pub(crate) attempt: Option<NewAttemptRow>,
}

impl TaskCas {
    pub(crate) fn new(transition: &TaskTransition, at: NaiveDateTime) -> Self {
        let TaskChanges {
            attempt,
            fencing_token,
            worker,
            result,
            error,
            started_at,
            completed_at,
            next_attempt_at,
            lease_expires_at,
            clear_outcome,
            record_attempt,
            priority,
            retry_base,
            lost_count,
        } = &transition.changes;
        // With `clear_outcome` an absent value becomes an explicit NULL.
        fn outcome<T>(value: Option<T>, clear: bool) -> Option<Option<T>> {
            match value {
                Some(value) => Some(Some(value)),
                None if clear => Some(None),
                None => None,
            }
        }
        TaskCas {
            job_id: transition.job_id.0,
            task_id: transition.task_id.clone(),
            from: transition.from.as_str(),
            fencing_token: transition.fencing_token,
            set: TaskChangeset {
                status: transition.to.as_str(),
                updated_at: at,
                attempt: attempt.map(stored),
                fencing_token: *fencing_token,
                worker: worker.clone(),
                started_at: started_at.map(naive),
                lease_expires_at: lease_expires_at.map(naive),
                result: outcome(result.clone().map(JsonValue), *clear_outcome),
                error: outcome(error.clone(), *clear_outcome),
                completed_at: outcome(completed_at.map(naive), *clear_outcome),
                next_attempt_at: outcome(next_attempt_at.map(naive), *clear_outcome),
                priority: *priority,
                retry_base: retry_base.map(stored),
                // A re-run starts with its full budget of losses too.
                lost_count: retry_base.map(|_| 0).or(lost_count.map(stored)),
            },
            attempt: record_attempt.as_ref().map(NewAttemptRow::from),
        }
    }
}

/// One job compare-and-set, owned.
#[derive(Debug, Clone)]
pub(crate) struct JobCas {
    pub(crate) job_id: i64,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    pub(crate) error: Option<String>,
    /// `Some(at)` when the job starts running: fills `started_at` if NULL.
    pub(crate) started_at: Option<NaiveDateTime>,
    /// `Some(at)` when the job ends.
    pub(crate) completed_at: Option<NaiveDateTime>,
    /// `false` on a re-run (terminal to non-terminal): the stored `error` and
    /// `completed_at` are then dropped instead of kept.
    pub(crate) keep_outcome: bool,
    pub(crate) updated_at: NaiveDateTime,
    /// The owner the job must have, if any.
    pub(crate) owner: Option<String>,
    /// Whether `to` is terminal: then no task row of the job may be unfinished.
    pub(crate) to_terminal: bool,
}

impl JobCas {
    pub(crate) fn new(transition: &crate::model::JobTransition, updated_at: NaiveDateTime) -> Self {
        let at = naive(transition.at);
        JobCas {
            job_id: transition.job_id.0,
            from: transition.from.as_str(),
            to: transition.to.as_str(),
            error: transition.error.clone(),
            started_at: (transition.to == JobStatus::Running).then_some(at),
            completed_at: transition.to.is_terminal().then_some(at),
            // Only a re-run (terminal to non-terminal) drops the outcome.
            keep_outcome: !transition.from.is_terminal() || transition.to.is_terminal(),
            updated_at,
            owner: transition.owner.clone(),
            to_terminal: transition.to.is_terminal(),
        }
    }
}

diesel::define_sql_function! {
    /// SQL `COALESCE` of two nullable timestamps.
    fn coalesce(x: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>, y: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>) -> diesel::sql_types::Nullable<diesel::sql_types::Timestamp>;
}

diesel::define_sql_function! {
    /// SQL `COALESCE` of two nullable texts.
    #[sql_name = "coalesce"]
    fn coalesce_text(x: diesel::sql_types::Nullable<diesel::sql_types::Text>, y: diesel::sql_types::Nullable<diesel::sql_types::Text>) -> diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

/// The `UPDATE` of a [`TaskCas`], as an expression both backends compile.
macro_rules! task_cas_query {
    ($cas:expr) => {{
        use $crate::schema::task_executions as t;
        diesel::update(t::table)
            .filter(t::job_id.eq($cas.job_id))
            .filter(t::task_id.eq(&$cas.task_id))
            .filter(t::status.eq($cas.from))
            .filter(t::fencing_token.eq($cas.fencing_token))
            .set(&$cas.set)
    }};
}
pub(crate) use task_cas_query;

/// The `UPDATE` of a [`JobCas`]; one statement shape for every transition.
/// `CASE WHEN keep THEN column END` is the stored value, or NULL on a re-run.
/// Task statuses that are not final: a job with a task row in one of them
/// cannot finish.
pub(crate) const UNFINISHED_TASK: [&str; 4] = [
    crate::TaskStatus::Pending.as_str(),
    crate::TaskStatus::Queued.as_str(),
    crate::TaskStatus::Running.as_str(),
    crate::TaskStatus::UpForRetry.as_str(),
];

macro_rules! job_cas_query {
    ($cas:expr) => {{
        use diesel::IntoSql as _;
        use diesel::dsl::case_when;
        use diesel::sql_types::Bool;
        use $crate::rows::{coalesce, coalesce_text};
        use $crate::schema::jobs as j;
        use $crate::schema::task_executions as te;
        let keep = $cas.keep_outcome;
        diesel::update(j::table)
            .filter(j::id.eq($cas.job_id))
            .filter(j::status.eq($cas.from))
            // Fenced by ownership when the writer runs the job.
            .filter(
                $cas.owner
                    .is_none()
                    .into_sql::<Bool>()
                    .or(j::owner.eq($cas.owner.as_deref().unwrap_or_default())),
            )
            // A job finishes only when every one of its tasks has.
            .filter(
                (!$cas.to_terminal)
                    .into_sql::<Bool>()
                    .or(diesel::dsl::not(diesel::dsl::exists(
                        te::table
                            .filter(te::job_id.eq(j::id))
                            .filter(te::status.eq_any($crate::rows::UNFINISHED_TASK)),
                    ))),
            )
            .set((
                j::status.eq($cas.to),
                j::updated_at.eq($cas.updated_at),
                j::error.eq(coalesce_text(
                    $cas.error.as_deref(),
                    case_when(keep.into_sql::<Bool>(), j::error),
                )),
                j::started_at.eq(coalesce(j::started_at, $cas.started_at)),
                j::completed_at.eq(coalesce(
                    $cas.completed_at,
                    case_when(keep.into_sql::<Bool>(), j::completed_at),
                )),
                // A finished job has no owner: whoever re-runs it claims it.
                j::owner.eq(case_when(
                    $cas.completed_at.is_none().into_sql::<Bool>(),
                    j::owner,
                )),
                j::lease_expires_at.eq(case_when(
                    $cas.completed_at.is_none().into_sql::<Bool>(),
                    j::lease_expires_at,
                )),
                // A re-run starts without the cancel request of its past.
                j::cancel_requested_at.eq(case_when(keep.into_sql::<Bool>(), j::cancel_requested_at)),
            ))
    }};
}
pub(crate) use job_cas_query;
