//! The records the store returns and the inputs it accepts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{DagId, JobId, JobStatus, TaskStatus};

/// A registered DAG: its latest version plus scheduling flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagRecord {
    /// Database identity.
    pub id: DagId,
    /// Unique name (the `name:` of the `dag!`).
    pub name: String,
    /// Human description of the latest version.
    pub description: String,
    /// Latest version number, starting at 1 and bumped whenever the hash changes.
    pub version: i32,
    /// Content hash of the latest definition.
    pub hash: String,
    /// Cron schedule of the latest version, if any.
    pub schedule: Option<String>,
    /// Whether scheduled runs are paused.
    pub paused: bool,
    /// When the DAG was first registered.
    pub created_at: DateTime<Utc>,
    /// When the record last changed (registration, pause); advancing the
    /// schedule does not count.
    pub updated_at: DateTime<Utc>,
    /// When the cron schedule fires next, as last stored by
    /// [`Store::advance_dag_schedule`](crate::Store::advance_dag_schedule);
    /// `None` until a scheduler sets it.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// When the cron schedule last fired; `None` if it never did.
    pub last_fired_at: Option<DateTime<Utc>>,
}

/// One stored version of a DAG definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagVersion {
    /// The DAG this version belongs to.
    pub dag_id: DagId,
    /// Version number.
    pub version: i32,
    /// Content hash of `definition`.
    pub hash: String,
    /// The IR JSON exactly as it was registered.
    pub definition: String,
    /// When this version was registered.
    pub created_at: DateTime<Utc>,
}

/// One run of a DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Database identity.
    pub id: JobId,
    /// The DAG being run.
    pub dag_id: DagId,
    /// The DAG version the job was created from.
    pub dag_version: i32,
    /// Current state.
    pub status: JobStatus,
    /// What started the job: `"cron"` for a job fired by the DAG's
    /// schedule, otherwise the string given to `trigger_job` (such as
    /// `"manual"`).
    pub trigger: String,
    /// The trigger's parameters.
    pub params: Value,
    /// The caller's idempotency key, if one was given.
    pub idempotency_key: Option<String>,
    /// Why the job failed, if it did.
    pub error: Option<String>,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When the job first became `running`.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a terminal state; cleared when a terminal job is
    /// moved back to a non-terminal state (a re-run).
    pub completed_at: Option<DateTime<Utc>>,
    /// The engine that owns (runs) the job, if any; see
    /// [`Store::claim_job`](crate::Store::claim_job).
    pub owner: Option<String>,
    /// When the owner's lease lapses; after that another engine may claim the
    /// job. `None` with an owner means the lease never lapses.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When a cancel of this job was requested
    /// ([`Store::request_cancel`](crate::Store::request_cancel)), if it was:
    /// whichever node runs the job cancels it.
    pub cancel_requested_at: Option<DateTime<Utc>>,
}

/// The stored state of one task within one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskExecution {
    /// Row identity.
    pub id: i64,
    /// The job this execution belongs to.
    pub job_id: JobId,
    /// The task's id within the DAG.
    pub task_id: String,
    /// Current state.
    pub status: TaskStatus,
    /// Current attempt number (0 before the first attempt starts).
    pub attempt: u32,
    /// Token that a writer must present to change this row (see [`TaskTransition`]).
    pub fencing_token: i64,
    /// The worker running or last running it.
    pub worker: Option<String>,
    /// Queue the task is dispatched on.
    pub queue: String,
    /// The handler's result, once successful.
    pub result: Option<Value>,
    /// The last error.
    pub error: Option<String>,
    /// When an `up_for_retry` task becomes due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the running attempt's lease lapses.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When the current attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the task reached a terminal state.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// When the row last changed.
    pub updated_at: DateTime<Utc>,
    /// Claiming order: higher runs first (default 0); set with
    /// [`TaskChanges::priority`].
    pub priority: i32,
    /// How many times the task was taken back from a worker that stopped
    /// heartbeating (see [`Store::reap_expired_tasks`](crate::Store::reap_expired_tasks)),
    /// since it was created or last re-run. Counted apart from `attempt`: an
    /// infrastructure loss is not a failure of the task, until it happens
    /// more than `max_lost` times.
    pub lost_count: u32,
    /// Labels a worker must all have to claim the task (see
    /// [`ClaimRequest::labels`]); empty: any worker. Set at creation
    /// ([`NewTask::labels`]).
    #[serde(default)]
    pub labels: Vec<String>,
    /// The attempts made before the task's latest re-run
    /// (`Cascade::retry_job`); its retry budget counts only the attempts
    /// above this, so a re-run task has its full budget again. 0 for a task
    /// never re-run.
    #[serde(default)]
    pub retry_base: u32,
}

/// One finished attempt of a task, kept as history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAttempt {
    /// The job.
    pub job_id: JobId,
    /// The task's id within the DAG.
    pub task_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// How the attempt ended.
    pub status: TaskStatus,
    /// The worker that ran it.
    pub worker: Option<String>,
    /// The error, if it failed.
    pub error: Option<String>,
    /// The attempt's captured output, as text. For a shell task whose command
    /// ran to its end (whatever its exit status): its stdout and stderr, each
    /// stream's last 64 KiB. For any failed attempt whose handler attached
    /// output with `TaskError::with_output`: that output. Otherwise `None`,
    /// which includes successful local tasks: their result is in
    /// [`TaskExecution::result`].
    pub output: Option<String>,
    /// When the attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the attempt ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job together with its DAG and all its task executions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetails {
    /// The job.
    pub job: Job,
    /// The DAG it runs (latest version of the record).
    pub dag: DagRecord,
    /// Its task executions, ordered by row id (creation order).
    pub tasks: Vec<TaskExecution>,
    /// Per task that has attempts, what they add up to: in the order of
    /// `tasks`; tasks that never started have none.
    pub attempt_summaries: Vec<AttemptSummary>,
}

/// What the recorded attempts of one task add up to: the total time a task
/// took, retries included, without reading its attempts one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptSummary {
    /// The task.
    pub task_id: String,
    /// How many attempts were recorded (lost ones included).
    pub attempts: u32,
    /// When the first attempt started.
    pub first_started_at: Option<DateTime<Utc>>,
    /// When the latest finished attempt finished.
    pub last_finished_at: Option<DateTime<Utc>>,
    /// The running time of the finished attempts, added up (waits between
    /// retries not included).
    pub total_run_time: std::time::Duration,
}

/// A DAG to register with [`Store::upsert_dag`](crate::Store::upsert_dag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDag {
    /// Unique name; registering the same name again updates the DAG.
    pub name: String,
    /// Human description.
    pub description: String,
    /// Cron schedule, if any.
    pub schedule: Option<String>,
    /// The IR JSON; stored exactly as given.
    pub definition: String,
    /// Content hash of `definition`; a different hash makes a new version.
    pub hash: String,
}

/// A task row to create with its job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    /// The task's id within the DAG; unique within the job.
    pub task_id: String,
    /// Queue to dispatch it on.
    pub queue: String,
    /// Initial state (usually `pending`, or `queued` for roots).
    pub status: TaskStatus,
    /// Initial attempt number.
    pub attempt: u32,
    /// Initial fencing token.
    pub fencing_token: i64,
    /// Start time, if the task is created already running.
    pub started_at: Option<DateTime<Utc>>,
    /// Claiming order: higher is claimed first by
    /// [`Store::claim_tasks`](crate::Store::claim_tasks) (0 is the default);
    /// a transition may change it later with [`TaskChanges::priority`].
    #[serde(default)]
    pub priority: i32,
    /// Labels a worker must ALL have (see [`ClaimRequest::labels`]) to claim
    /// the task; empty: any worker may. Stored as given (order and
    /// duplicates do not matter to claiming).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A job to create with [`Store::create_job`](crate::Store::create_job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// The DAG to run.
    pub dag_id: DagId,
    /// The DAG version to run.
    pub dag_version: i32,
    /// Initial state.
    pub status: JobStatus,
    /// What started the job.
    pub trigger: String,
    /// The trigger's parameters.
    pub params: Value,
    /// When set, creating a second job of the same DAG with the same key
    /// returns the first one instead.
    pub idempotency_key: Option<String>,
    /// The engine that owns the job from its creation, if any (see
    /// [`Store::claim_job`](crate::Store::claim_job)).
    pub owner: Option<String>,
    /// When that ownership lapses unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Every task of the job; all rows are written in the job's transaction.
    pub tasks: Vec<NewTask>,
}

/// What [`Store::create_job`](crate::Store::create_job) did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedJob {
    /// The new job, or the existing job whose idempotency key matched.
    pub job: Job,
    /// `false` when the idempotency key matched an existing job (no rows were written).
    pub created: bool,
}

/// Which jobs [`Store::list_jobs`](crate::Store::list_jobs) returns, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    /// Only jobs of this DAG.
    pub dag_id: Option<DagId>,
    /// Only jobs in this state.
    pub status: Option<JobStatus>,
    /// Page size (default 100).
    pub limit: i64,
    /// Number of jobs to skip.
    pub offset: i64,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            dag_id: None,
            status: None,
            limit: 100,
            offset: 0,
        }
    }
}

/// Column changes applied with a task transition. `None` leaves a column unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskChanges {
    /// New attempt number.
    pub attempt: Option<u32>,
    /// The new fencing token (the expected one is in [`TaskTransition::fencing_token`]).
    pub fencing_token: Option<i64>,
    /// Worker running the task.
    pub worker: Option<String>,
    /// The handler's result.
    pub result: Option<Value>,
    /// The error.
    pub error: Option<String>,
    /// Start of the attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// Terminal time.
    pub completed_at: Option<DateTime<Utc>>,
    /// When a retry becomes due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the attempt's lease lapses.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Set `result`, `error`, `completed_at` and `next_attempt_at` to NULL
    /// first (a retry or rerun), then apply the `Some` fields.
    pub clear_outcome: bool,
    /// Appended to the attempt history in the same transaction, only if the
    /// compare-and-set wins.
    pub record_attempt: Option<TaskAttempt>,
    /// New claiming priority (higher is claimed first by
    /// [`Store::claim_tasks`](crate::Store::claim_tasks)); typically set when
    /// the task is queued.
    pub priority: Option<i32>,
    /// New retry base: the attempts made before a re-run, which the retry
    /// budget does not count (see [`TaskExecution::retry_base`]). Setting it
    /// also sets [`TaskExecution::lost_count`] back to 0: a re-run task may
    /// be lost as often again as a new one.
    pub retry_base: Option<u32>,
    /// New count of lost attempts (see [`TaskExecution::lost_count`]), set
    /// when an attempt that was lost with its engine is started again.
    pub lost_count: Option<u32>,
}

/// A compare-and-set on one task execution row.
///
/// It applies only if the row is still in `from` with `fencing_token`; a
/// stale writer (an old attempt, a worker presumed dead) therefore changes
/// nothing and learns so from the `false` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTransition {
    /// The job.
    pub job_id: JobId,
    /// The task's id within the job.
    pub task_id: String,
    /// Expected current state.
    pub from: TaskStatus,
    /// Expected current fencing token.
    pub fencing_token: i64,
    /// New state.
    pub to: TaskStatus,
    /// Other columns to change.
    pub changes: TaskChanges,
}

/// A compare-and-set on a job row.
///
/// Sets `started_at` (if still NULL) when `to` is `running`, and
/// `completed_at` when `to` is terminal. Going from a terminal state back to
/// a non-terminal one (a re-run, e.g. `failed` → `running`) clears
/// `completed_at` and `error` (then records `error` if `Some`) and keeps
/// `started_at`. A job that reaches a terminal state releases its owner and
/// lease, so that a later re-run can be claimed by any engine.
///
/// Two more conditions are checked in the same statement:
/// - with `owner` given, the job must still be owned by it: an engine whose
///   lease lapsed and whose job another engine took over loses;
/// - a terminal `to` (`success`, `failed`, `cancelled`) loses while any of
///   the job's task rows is unfinished (`pending`, `queued`, `running`,
///   `up_for_retry`), counting the task transitions committed with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTransition {
    /// The job.
    pub job_id: JobId,
    /// Expected current state.
    pub from: JobStatus,
    /// New state.
    pub to: JobStatus,
    /// Error to record (replaces the stored one when `Some`; `None` keeps it,
    /// except on a re-run, which clears it).
    pub error: Option<String>,
    /// When the transition happened.
    pub at: DateTime<Utc>,
    /// The engine that must own the job for the transition to win (its
    /// fencing); `None` for a writer that acts on a job it does not run
    /// (a cancel or a re-run from the outside).
    #[serde(default)]
    pub owner: Option<String>,
}

/// Transitions committed together by [`Store::commit_transitions`](crate::Store::commit_transitions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransitionBatch {
    /// Task transitions, applied in order.
    pub tasks: Vec<TaskTransition>,
    /// Job transitions, applied in order after the task transitions.
    pub jobs: Vec<JobTransition>,
    /// Sent with `pg_notify` inside the batch's transaction, after the
    /// transitions: PostgreSQL delivers them only if the batch commits (and
    /// collapses identical channel + payload pairs of one transaction into
    /// one). Sent whether or not the compare-and-sets won. Ignored on
    /// SQLite, which has no notifications.
    #[serde(default)]
    pub notifications: Vec<Notification>,
}

impl TransitionBatch {
    /// Whether the batch holds no transition.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.jobs.is_empty()
    }
}

/// Per-transition results of [`Store::commit_transitions`](crate::Store::commit_transitions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// For each task transition, in input order: whether its compare-and-set won.
    pub tasks: Vec<bool>,
    /// For each job transition, in input order: whether its compare-and-set won.
    pub jobs: Vec<bool>,
}

/// What [`Store::commit_transitions_by_job`](crate::Store::commit_transitions_by_job)
/// did: which compare-and-sets won, and which jobs were not committed.
#[derive(Debug, Default)]
pub struct SplitOutcome {
    /// Per transition, in input order, whether its compare-and-set won;
    /// `false` for every transition of a job in [`failed`](Self::failed).
    pub outcome: BatchOutcome,
    /// The jobs whose transitions were not committed, with the reason.
    pub failed: Vec<UncommittedJobs>,
}

/// Jobs whose transitions [`Store::commit_transitions_by_job`](crate::Store::commit_transitions_by_job)
/// could not commit: ONE job whose transitions the store refused for a
/// reason of their own (a value it cannot store, a constraint), or, when the
/// store became unavailable ([`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)),
/// every job that was not committed yet. None of their transitions applied.
#[derive(Debug)]
pub struct UncommittedJobs {
    /// The jobs, in the order they first appear in the batch.
    pub job_ids: Vec<JobId>,
    /// Why they were not committed.
    pub error: crate::StoreError,
}

/// A PostgreSQL notification (`NOTIFY channel, 'payload'`), sent with
/// [`Store::notify`](crate::Store::notify) or in a [`TransitionBatch`], and
/// received from [`Store::listen`](crate::Store::listen).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Notification {
    /// The channel name.
    pub channel: String,
    /// The payload (PostgreSQL limits it to just under 8000 bytes).
    pub payload: String,
    /// In a [`TransitionBatch`]: the index (in `tasks`) of the transition
    /// this notification announces. It is sent only if that transition wins
    /// its compare-and-set, so a writer that lost never announces a change
    /// the database refused. `None`: sent with the batch whatever happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_task: Option<usize>,
}

impl Notification {
    /// A notification on `channel` carrying `payload`.
    pub fn new(channel: impl Into<String>, payload: impl Into<String>) -> Self {
        Notification {
            channel: channel.into(),
            payload: payload.into(),
            after_task: None,
        }
    }

    /// A notification announcing the batch's task transition at `index`:
    /// sent only if that transition wins.
    pub fn after_task(channel: impl Into<String>, payload: impl Into<String>, index: usize) -> Self {
        Notification {
            after_task: Some(index),
            ..Notification::new(channel, payload)
        }
    }
}

/// What a worker process tells the store about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Unique worker id (for example `host:pid:random`); also written to
    /// [`TaskExecution::worker`] for the tasks it claims.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Operating system process id.
    pub pid: i64,
    /// Queues it claims from.
    pub queues: Vec<String>,
    /// Free-form labels (capabilities, zone, …).
    pub labels: Vec<String>,
    /// How many tasks it runs at once.
    pub capacity: i32,
    /// Cascade (or application) version it runs.
    pub version: String,
    /// What kind of process it is.
    #[serde(default)]
    pub role: WorkerRole,
}

/// What kind of process a registered worker is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    /// A worker process: claims queued tasks with
    /// [`Store::claim_tasks`](crate::Store::claim_tasks).
    #[default]
    Worker,
    /// An all-in-one engine: schedules the jobs it owns and runs their tasks
    /// itself, on any queue (its `queues` list is empty).
    All,
}

impl WorkerRole {
    /// The stored text (`worker`, `all`).
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkerRole::Worker => "worker",
            WorkerRole::All => "all",
        }
    }
}

/// The liveness state of a registered worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Registered and heartbeating.
    Active,
    /// Deregistered on a graceful shutdown.
    Stopped,
    /// Stopped heartbeating; see [`Store::mark_lost_workers`](crate::Store::mark_lost_workers).
    Lost,
}

impl WorkerState {
    /// The stored text (`active`, `stopped`, `lost`).
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Stopped => "stopped",
            WorkerState::Lost => "lost",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registered worker as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Unique worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Operating system process id.
    pub pid: i64,
    /// Queues it claims from.
    pub queues: Vec<String>,
    /// Free-form labels.
    pub labels: Vec<String>,
    /// How many tasks it runs at once.
    pub capacity: i32,
    /// Version it runs.
    pub version: String,
    /// When it (last) registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Liveness state.
    pub state: WorkerState,
    /// What kind of process it is.
    pub role: WorkerRole,
}

/// What [`Store::claim_tasks`](crate::Store::claim_tasks) may claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// The claiming worker's id, written to [`TaskExecution::worker`].
    pub worker: String,
    /// Only tasks on these queues.
    pub queues: Vec<String>,
    /// Only tasks of jobs of these DAGs (the ones this worker has handlers for).
    pub dag_ids: Vec<DagId>,
    /// At most this many tasks (the worker's free capacity).
    pub limit: i64,
    /// The current time: tasks whose `next_attempt_at` is later are not due;
    /// also the new `started_at` and `updated_at`.
    pub now: DateTime<Utc>,
    /// The lease of the claimed tasks; renew it with
    /// [`Store::heartbeat_worker`](crate::Store::heartbeat_worker).
    pub lease_until: DateTime<Utc>,
    /// The claiming worker's labels: only tasks whose
    /// [`labels`](TaskExecution::labels) are all among these are claimed
    /// (tasks without labels always are).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A task claimed by [`Store::claim_tasks`](crate::Store::claim_tasks), with
/// what its handler needs from the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedTask {
    /// The task as updated by the claim (`running`, new fencing token: the
    /// worker must present it in every later transition).
    pub execution: TaskExecution,
    /// The job's DAG.
    pub dag_id: DagId,
    /// The DAG version the job runs.
    pub dag_version: i32,
    /// The job's trigger parameters.
    pub params: Value,
}
