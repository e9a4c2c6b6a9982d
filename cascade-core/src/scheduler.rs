//! The Scheduler: one task that owns the in-memory state of every active job,
//! decides what runs next from in-degree counters, and acts only on committed
//! state.
//!
//! Each turn of its loop takes every command waiting in the inbox, works out
//! the transitions they cause (a finished task, the dependents it releases,
//! the runner slots it frees), commits them all in one transaction through the
//! StateManager, and only then acts: starts attempts, publishes events, wakes
//! waiters, runs callbacks. Work per finished task is proportional to its
//! out-degree.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cascade_ir::{TaskKind, TriggerRule, ValidDag};
use cascade_store::{
    DagRecord, ErrorKind, Job, JobTransition, Notification, StoreError, TaskAttempt, TaskChanges,
    TaskExecution, TaskTransition, TransitionBatch,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dag::{Callback, Dag, Handler};
use crate::events::{Event, EventBus, JobEvent, JobEventKind, TaskEvent, TaskEventKind};
use crate::limits::Limits;
use crate::runner::{self, Attempt, Completion, Outcome};
use crate::shell;
use crate::state::{JobState, RowCommit, StateManager, TaskState};
use crate::task::{
    BoxFuture, CallbackContext, CallbackEvent, Lineage, TaskContext, TaskError, TaskErrorKind, TaskResult,
};
use crate::{JobId, JobStatus, TaskStatus};

/// Most commands folded into one commit.
const MAX_BATCH: usize = 4096;

/// How often a job whose transitions the store refuses is repaired and
/// resumed before it is left detached.
const MAX_REPAIRS: u32 = 3;

/// A DAG registered in this engine: its stored record, its plan and its
/// handlers, indexed by task for dispatch without lookups.
pub(crate) struct RegisteredDag {
    pub(crate) record: DagRecord,
    pub(crate) dag: Dag,
    pub(crate) plan: Arc<ValidDag>,
    pub(crate) name: Arc<str>,
    pub(crate) task_ids: Vec<Arc<str>>,
    handlers: Vec<Option<Handler>>,
}

impl RegisteredDag {
    pub(crate) fn new(record: DagRecord, dag: Dag) -> Self {
        Self::with_plan(record, dag.plan_arc(), dag)
    }

    /// A registered DAG running an older version's plan with today's handlers.
    pub(crate) fn with_plan(record: DagRecord, plan: Arc<ValidDag>, dag: Dag) -> Self {
        let task_ids = plan.tasks().iter().map(|t| Arc::from(t.id.as_str())).collect();
        let handlers = plan
            .tasks()
            .iter()
            .map(|t| match &t.kind {
                TaskKind::Local { handler } => dag.handler(handler).cloned(),
                TaskKind::Shell { .. } => shell::handler(&plan, t),
            })
            .collect();
        RegisteredDag {
            name: Arc::from(record.name.as_str()),
            record,
            dag,
            plan,
            task_ids,
            handlers,
        }
    }

    fn callback(&self, name: Option<&String>) -> Option<Callback> {
        name.and_then(|n| self.dag.callback(n).cloned())
    }

    /// The handler of task `t`, or one that fails at once saying why there is none.
    pub(crate) fn handler_at(&self, t: usize) -> Handler {
        if let Some(handler) = &self.handlers[t] {
            return Arc::clone(handler);
        }
        let message = match &self.plan.tasks()[t].kind {
            TaskKind::Local { handler } => format!("no handler is registered under the name `{handler}`"),
            TaskKind::Shell { .. } => "shell tasks need a Unix system".to_owned(),
        };
        Arc::new(move |_| -> BoxFuture<TaskResult> {
            let message = message.clone();
            Box::pin(async move { Err(TaskError::fatal(message)) })
        })
    }
}

impl std::fmt::Debug for RegisteredDag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredDag")
            .field("id", &self.record.id)
            .field("name", &self.name)
            .field("version", &self.record.version)
            .finish_non_exhaustive()
    }
}

/// What the scheduler is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// A job was created (pending); start it.
    Start { job: Job, dag: Arc<RegisteredDag> },
    /// Take over an unfinished job from the store (recovery, rerun).
    Resume {
        job: Job,
        dag: Arc<RegisteredDag>,
        tasks: Vec<TaskExecution>,
    },
    /// An attempt finished.
    Completed(Completion),
    /// A worker process committed a change to a task (a claim or an outcome).
    Remote(RemoteTaskUpdate),
    /// Cancel a job; the reply comes once it is cancelled.
    Cancel {
        job_id: JobId,
        reply: oneshot::Sender<CancelReply>,
    },
    /// Reply `true` once the job is terminal, or `false` at once if this engine
    /// is not running it.
    Wait {
        job_id: JobId,
        reply: oneshot::Sender<bool>,
    },
    /// The jobs this engine runs now (for the polling fallback).
    ActiveJobs { reply: oneshot::Sender<Vec<JobId>> },
    /// The in-memory state of a job, if active here.
    State {
        job_id: JobId,
        reply: oneshot::Sender<Option<JobState>>,
    },
    /// These jobs are no longer this engine's (its lease renewal did not
    /// cover them: another engine took them over): stop their attempts and
    /// forget them.
    Detach { job_ids: Vec<JobId> },
    /// Stop starting attempts, let running ones finish for up to `timeout`,
    /// then stop.
    Shutdown {
        timeout: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// A task change committed by another process, as announced on the
/// `cascade_done` channel (and found again by the polling fallback).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RemoteTaskUpdate {
    pub(crate) job_id: JobId,
    pub(crate) task_id: String,
    pub(crate) token: i64,
    pub(crate) attempt: u32,
    pub(crate) status: TaskStatus,
    pub(crate) error: Option<String>,
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
}

impl RemoteTaskUpdate {
    /// What a committed task row says, for the scheduler to apply.
    pub(crate) fn from_row(row: TaskExecution) -> Self {
        RemoteTaskUpdate {
            job_id: row.job_id,
            task_id: row.task_id,
            token: row.fencing_token,
            attempt: row.attempt,
            status: row.status,
            error: row.error,
            next_attempt_at: row.next_attempt_at,
        }
    }
}

/// The answer to a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReply {
    /// The job is cancelled (now or before).
    Cancelled,
    /// The job finished before the request arrived.
    AlreadyFinished(JobStatus),
    /// This engine is not running the job.
    NotActive,
}

/// Engine settings the scheduler needs.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    pub(crate) workers: usize,
    pub(crate) worker_id: String,
    pub(crate) cancel_grace: Duration,
    /// How long a claim on a job lasts without renewal.
    pub(crate) lease: Duration,
    /// Distributed mode: ready tasks are queued in the store for worker
    /// processes to claim instead of running here.
    pub(crate) remote_dispatch: bool,
    /// What a task's result may be.
    pub(crate) limits: Limits,
    /// The jobs this scheduler runs, shared with the lease keeper, which
    /// renews exactly these.
    pub(crate) active: ActiveJobs,
    /// Where callbacks and repairs run, so that the shutdown awaits them.
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

/// The ids of the jobs a scheduler runs, readable without asking it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ActiveJobs(Arc<std::sync::Mutex<std::collections::HashSet<JobId>>>);

impl ActiveJobs {
    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<JobId>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, job_id: JobId) {
        self.set().insert(job_id);
    }

    fn remove(&self, job_id: JobId) {
        self.set().remove(&job_id);
    }

    /// The jobs run now.
    pub(crate) fn ids(&self) -> Vec<JobId> {
        self.set().iter().copied().collect()
    }
}

/// What a failed attempt leads to: a retry after the backoff (`up_for_retry`
/// and when), or failure. `retry_base` is the attempt count before a re-run;
/// `roll` is a uniform random number in [0, 1) for the jitter.
pub(crate) fn retry_decision(
    plan_task: &cascade_ir::TaskPlan,
    error: &TaskError,
    attempt: u32,
    retry_base: u32,
    now: DateTime<Utc>,
    roll: f64,
) -> (TaskStatus, Option<DateTime<Utc>>) {
    let retry = plan_task.retry;
    if error.is_retryable() && attempt.saturating_sub(retry_base) <= retry.retries {
        let delay = retry.delay(attempt.saturating_sub(retry_base).max(1), roll);
        let next = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero());
        (TaskStatus::UpForRetry, Some(next))
    } else {
        (TaskStatus::Failed, None)
    }
}

/// How many dependencies ended which way.
#[derive(Debug, Default, Clone, Copy)]
struct DepCounts {
    success: u32,
    failed: u32,
    skipped: u32,
}

impl DepCounts {
    fn done(self) -> u32 {
        self.success + self.failed + self.skipped
    }
}

/// What a task's trigger rule says, given its dependencies so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Wait,
    Run,
    UpstreamFailed,
    Skip,
}

/// Airflow's trigger rules over dependency counts.
fn decide(rule: TriggerRule, counts: DepCounts, n_deps: u32) -> Decision {
    let all_done = counts.done() == n_deps;
    match rule {
        TriggerRule::AllSuccess if counts.failed > 0 => Decision::UpstreamFailed,
        TriggerRule::AllSuccess if counts.skipped > 0 => Decision::Skip,
        TriggerRule::AllSuccess | TriggerRule::AllDone if all_done => Decision::Run,
        TriggerRule::AllFailed if counts.success > 0 || counts.skipped > 0 => Decision::Skip,
        TriggerRule::AllFailed if all_done => Decision::Run,
        TriggerRule::OneSuccess if counts.success > 0 => Decision::Run,
        TriggerRule::OneSuccess if all_done && counts.failed > 0 => Decision::UpstreamFailed,
        TriggerRule::OneSuccess if all_done => Decision::Skip,
        TriggerRule::OneFailed if counts.failed > 0 => Decision::Run,
        TriggerRule::OneFailed if all_done => Decision::Skip,
        TriggerRule::NoneFailed if counts.failed > 0 => Decision::UpstreamFailed,
        TriggerRule::NoneFailed if all_done => Decision::Run,
        _ => Decision::Wait,
    }
}

#[derive(Debug)]
struct TaskRun {
    status: TaskStatus,
    attempt: u32,
    token: i64,
    /// The last attempt was interrupted by a crash or shutdown, not failed:
    /// the next one keeps its attempt number.
    interrupted: bool,
    /// Ready, or decided terminal: the trigger rule is not evaluated again.
    decided: bool,
    /// Attempts made before a re-run; the retry budget counts from here.
    retry_base: u32,
    counts: DepCounts,
    result: Option<Arc<Value>>,
    abort: Option<AbortHandle>,
    cancellation: Option<CancellationToken>,
    started_at: Option<DateTime<Utc>>,
    /// Attempts lost with their engine or worker, as stored.
    lost_count: u32,
    /// The engine or worker that ran the last attempt, as stored.
    worker: Option<String>,
    /// Running on a worker process under a task lease, though this engine
    /// runs the job's other tasks itself (it took the job over from a
    /// scheduler): its outcome comes from the worker, or the reaper takes it
    /// back when the lease lapses.
    worker_held: bool,
}

impl TaskRun {
    /// The number of the attempt that starts next: an attempt interrupted by
    /// a crash or shutdown runs again under its own number.
    fn next_attempt(&self) -> u32 {
        if self.interrupted {
            self.attempt.max(1)
        } else {
            self.attempt + 1
        }
    }

    fn new() -> Self {
        TaskRun {
            status: TaskStatus::Pending,
            attempt: 0,
            token: 0,
            interrupted: false,
            worker_held: false,
            decided: false,
            retry_base: 0,
            lost_count: 0,
            worker: None,
            counts: DepCounts::default(),
            result: None,
            abort: None,
            cancellation: None,
            started_at: None,
        }
    }
}

#[derive(Debug)]
struct JobRun {
    job_id: JobId,
    dag: Arc<RegisteredDag>,
    params: Arc<Value>,
    status: JobStatus,
    tasks: Vec<TaskRun>,
    running: usize,
    unfinished: usize,
    first_failure: Option<String>,
    cancelling: bool,
    finishing: bool,
    cancellation: CancellationToken,
    waiters: Vec<oneshot::Sender<bool>>,
    cancel_waiters: Vec<oneshot::Sender<CancelReply>>,
}

/// Which transition an effect depends on.
#[derive(Debug, Clone, Copy)]
enum Guard {
    Always,
    Task(usize),
    Job(usize),
}

/// Something to do once the batch is committed.
enum Effect {
    Spawn {
        job_id: JobId,
        task: usize,
    },
    Publish(Event),
    Callback(Callback, CallbackContext),
    Finished {
        job_id: JobId,
        waiters: Vec<oneshot::Sender<bool>>,
        cancel_waiters: Vec<oneshot::Sender<CancelReply>>,
    },
}

#[derive(Default)]
struct Batch {
    store: TransitionBatch,
    effects: Vec<(Guard, Effect)>,
    now: Option<DateTime<Utc>>,
}

impl Batch {
    fn now(&mut self) -> DateTime<Utc> {
        *self.now.get_or_insert_with(Utc::now)
    }

    fn task(&mut self, transition: TaskTransition) -> Guard {
        self.store.tasks.push(transition);
        Guard::Task(self.store.tasks.len() - 1)
    }

    fn job(&mut self, transition: JobTransition) -> Guard {
        self.store.jobs.push(transition);
        Guard::Job(self.store.jobs.len() - 1)
    }

    fn effect(&mut self, guard: Guard, effect: Effect) {
        self.effects.push((guard, effect));
    }

    /// A notification sent inside the batch's transaction, so that it is
    /// delivered only if the batch commits. Repeats are sent once.
    fn notify(&mut self, channel: &str, payload: String) {
        let duplicate = self
            .store
            .notifications
            .iter()
            .any(|n| n.channel == channel && n.payload == payload);
        if !duplicate {
            self.store.notifications.push(Notification {
                channel: channel.to_owned(),
                payload,
                after_task: None,
            });
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retry { job_id: JobId, task: usize, token: i64 },
    CancelGrace { job_id: JobId },
    ShutdownDeadline,
}

/// The scheduler task's state.
/// A queued task waiting for a runner. Ordered for a max-heap: the highest
/// priority, then the lowest arrival number (the oldest).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Waiting {
    priority: i32,
    order: Reverse<u64>,
    job_id: JobId,
    task: usize,
}

pub(crate) struct Scheduler {
    config: SchedulerConfig,
    state: StateManager,
    events: EventBus,
    inbox: mpsc::Receiver<Command>,
    /// Weak, so that the loop ends once every engine handle is gone.
    reports: mpsc::WeakSender<Command>,
    jobs: HashMap<JobId, JobRun>,
    /// Tasks persisted as queued, waiting for a free runner: the highest
    /// priority first, then the oldest.
    queued: BinaryHeap<Waiting>,
    /// Arrival order of `queued`, for first-in first-out among equal priorities.
    queued_seq: u64,
    /// Tasks that became ready during the current batch.
    newly_ready: Vec<(JobId, usize)>,
    running: usize,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    timer_seq: u64,
    rng: u64,
    draining: bool,
    abandoning: bool,
    shutdown_reply: Option<oneshot::Sender<()>>,
    /// How often each job's transitions were refused by the store.
    repairs: HashMap<JobId, u32>,
}

impl Scheduler {
    pub(crate) fn new(
        config: SchedulerConfig,
        state: StateManager,
        events: EventBus,
        inbox: mpsc::Receiver<Command>,
        reports: mpsc::WeakSender<Command>,
    ) -> Self {
        let seed = Utc::now().timestamp_nanos_opt().unwrap_or(0) as u64 | 1;
        Scheduler {
            config,
            state,
            events,
            inbox,
            reports,
            jobs: HashMap::new(),
            queued: BinaryHeap::new(),
            queued_seq: 0,
            newly_ready: Vec::new(),
            running: 0,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            rng: seed,
            draining: false,
            abandoning: false,
            shutdown_reply: None,
            repairs: HashMap::new(),
        }
    }

    /// The scheduler loop; returns after a shutdown completes or when every
    /// engine handle is gone.
    pub(crate) async fn run(mut self) {
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let first = tokio::select! {
                command = self.inbox.recv() => match command {
                    Some(command) => Some(command),
                    None => return,
                },
                () = sleep_until(next_timer), if next_timer.is_some() => None,
            };
            let mut batch = Batch::default();
            if let Some(command) = first {
                self.handle(command, &mut batch);
                // Attempts started by the last commit often finish within
                // microseconds: let them report, so that one commit carries
                // all of their completions rather than one.
                tokio::task::yield_now().await;
            }
            while batch.effects.len() < MAX_BATCH {
                match self.inbox.try_recv() {
                    Ok(command) => self.handle(command, &mut batch),
                    Err(_) => break,
                }
            }
            self.fire_timers(&mut batch);
            self.dispatch(&mut batch);
            self.commit(batch).await;
            if self.draining && self.running == 0 {
                if let Some(reply) = self.shutdown_reply.take() {
                    let _ = reply.send(());
                }
                return;
            }
        }
    }

    fn handle(&mut self, command: Command, batch: &mut Batch) {
        match command {
            Command::Start { job, dag } => self.start_job(job, dag, batch),
            Command::Resume { job, dag, tasks } => self.resume_job(job, dag, tasks, batch),
            Command::Completed(completion) => self.complete(completion, batch),
            Command::Remote(update) => self.apply_remote(update, batch),
            Command::Cancel { job_id, reply } => self.cancel(job_id, reply, batch),
            Command::Wait { job_id, reply } => match self.jobs.get_mut(&job_id) {
                Some(job) => job.waiters.push(reply),
                None => {
                    let _ = reply.send(false);
                }
            },
            Command::Detach { job_ids } => {
                for job_id in job_ids {
                    if self.jobs.contains_key(&job_id) {
                        tracing::warn!(job.id = %job_id, "this engine's lease on the job ended and another engine owns it now; stopping its attempts here");
                        self.detach_job(job_id);
                    }
                }
            }
            Command::ActiveJobs { reply } => {
                // What a reconcile looks at: every job in distributed mode;
                // otherwise only those with tasks on worker processes.
                let remote = self.config.remote_dispatch;
                let ids = self
                    .jobs
                    .iter()
                    .filter(|(_, job)| {
                        remote || job.tasks.iter().any(|t| t.worker_held && !t.status.is_terminal())
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let _ = reply.send(ids);
            }
            Command::State { job_id, reply } => {
                let _ = reply.send(self.jobs.get(&job_id).map(snapshot));
            }
            Command::Shutdown { timeout, reply } => {
                tracing::info!(running = self.running, ?timeout, "scheduler draining");
                self.draining = true;
                self.shutdown_reply = Some(reply);
                self.add_timer(Instant::now() + timeout, Timer::ShutdownDeadline);
            }
        }
    }

    fn add_timer(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, self.timer_seq, timer)));
    }

    fn start_job(&mut self, job: Job, dag: Arc<RegisteredDag>, batch: &mut Batch) {
        let n = dag.plan.tasks().len();
        let mut run = JobRun {
            job_id: job.id,
            params: Arc::new(job.params),
            status: JobStatus::Running,
            tasks: (0..n).map(|_| TaskRun::new()).collect(),
            running: 0,
            unfinished: n,
            first_failure: None,
            cancelling: false,
            finishing: false,
            cancellation: CancellationToken::new(),
            waiters: Vec::new(),
            cancel_waiters: Vec::new(),
            dag,
        };
        let now = batch.now();
        batch.effect(
            Guard::Always,
            Effect::Publish(job_event(&run, JobEventKind::Created, JobStatus::Pending, now)),
        );
        let guard = batch.job(JobTransition {
            job_id: job.id,
            from: JobStatus::Pending,
            to: JobStatus::Running,
            error: None,
            at: now,
            owner: Some(self.config.worker_id.clone()),
        });
        batch.effect(
            guard,
            Effect::Publish(job_event(&run, JobEventKind::Started, JobStatus::Running, now)),
        );
        for (i, task) in run.dag.plan.tasks().iter().enumerate() {
            if task.dependencies.is_empty() {
                run.tasks[i].decided = true;
                self.newly_ready.push((job.id, i));
            }
        }
        tracing::info!(job.id = %job.id, dag = %run.dag.name, tasks = n, "job started");
        self.config.active.insert(job.id);
        self.jobs.insert(job.id, run);
    }

    /// Rebuilds a job's in-memory state from its stored task rows: finished
    /// tasks keep their results and never run again; tasks that were running
    /// are queued again with their attempt number kept.
    fn resume_job(&mut self, job: Job, dag: Arc<RegisteredDag>, rows: Vec<TaskExecution>, batch: &mut Batch) {
        if self.jobs.contains_key(&job.id) {
            return;
        }
        let n = dag.plan.tasks().len();
        // A job whose cancel was asked for, or begun (a task of it is
        // cancelled), goes on being cancelled: it never ends `success`.
        let mut cancelling = job.cancel_requested_at.is_some();
        let mut tasks: Vec<TaskRun> = (0..n).map(|_| TaskRun::new()).collect();
        let mut next_attempts = vec![None; n];
        // Which running rows are held under a task lease (by a worker
        // process) rather than under the job's lease (by the engine that
        // owned the job).
        let mut task_leased = vec![false; n];
        for row in rows {
            let Some(i) = dag.plan.task_index(&row.task_id) else {
                tracing::warn!(job.id = %job.id, task.id = %row.task_id, "stored task not in the dag version; ignored");
                continue;
            };
            let task = &mut tasks[i];
            cancelling |= row.status == TaskStatus::Cancelled;
            task.status = row.status;
            task.attempt = row.attempt;
            task.token = row.fencing_token;
            task.result = row.result.map(Arc::new);
            task.started_at = row.started_at;
            task.retry_base = row.retry_base;
            task.lost_count = row.lost_count;
            task.worker = row.worker;
            task_leased[i] = row.lease_expires_at.is_some();
            next_attempts[i] = row.next_attempt_at;
        }
        let mut run = JobRun {
            job_id: job.id,
            params: Arc::new(job.params),
            status: JobStatus::Running,
            running: 0,
            unfinished: tasks.iter().filter(|t| !t.status.is_terminal()).count(),
            first_failure: None,
            cancelling: false,
            finishing: false,
            cancellation: CancellationToken::new(),
            waiters: Vec::new(),
            cancel_waiters: Vec::new(),
            tasks,
            dag,
        };
        let now = batch.now();
        if job.status == JobStatus::Pending {
            let guard = batch.job(JobTransition {
                job_id: job.id,
                from: JobStatus::Pending,
                to: JobStatus::Running,
                error: None,
                at: now,
                owner: Some(self.config.worker_id.clone()),
            });
            batch.effect(
                guard,
                Effect::Publish(job_event(&run, JobEventKind::Started, JobStatus::Running, now)),
            );
        }
        // Dependency counts from the stored outcomes.
        let plan = Arc::clone(&run.dag.plan);
        for (i, task) in plan.tasks().iter().enumerate() {
            let status = run.tasks[i].status;
            if matches!(status, TaskStatus::Failed | TaskStatus::UpstreamFailed)
                && run.first_failure.is_none()
            {
                run.first_failure = Some(format!("task `{}` {}", task.id, status));
            }
            for &d in &task.dependents {
                count_outcome(&mut run.tasks[d].counts, status);
            }
        }
        let mut retry_timers = Vec::new();
        for (i, task) in plan.tasks().iter().enumerate() {
            match run.tasks[i].status {
                // A task running on a worker process belongs to it, whose
                // task lease decides whether it is still alive (the reaper
                // takes it back otherwise): whichever role adopted the job,
                // it waits for the outcome. A queued one waits in the store
                // for a claim in distributed mode.
                TaskStatus::Running if task_leased[i] => {
                    run.tasks[i].decided = true;
                    run.tasks[i].worker_held = !self.config.remote_dispatch;
                }
                TaskStatus::Queued if self.config.remote_dispatch => {
                    run.tasks[i].decided = true;
                }
                // Running under the job lease of an engine that is gone (or
                // fenced out): lost with it, it runs again (distributed: is
                // queued again for the workers).
                TaskStatus::Running | TaskStatus::Queued => {
                    run.tasks[i].interrupted = run.tasks[i].status == TaskStatus::Running;
                    run.tasks[i].decided = true;
                    self.newly_ready.push((job.id, i));
                }
                TaskStatus::UpForRetry => {
                    run.tasks[i].decided = true;
                    retry_timers.push((i, run.tasks[i].token, next_attempts[i]));
                }
                TaskStatus::Pending => {
                    let n_deps = task.dependencies.len() as u32;
                    match decide(task.trigger_rule, run.tasks[i].counts, n_deps) {
                        Decision::Wait => {}
                        Decision::Run => {
                            run.tasks[i].decided = true;
                            self.newly_ready.push((job.id, i));
                        }
                        decision => {
                            // Decided before the crash but not yet recorded.
                            let to = if decision == Decision::Skip {
                                TaskStatus::Skipped
                            } else {
                                TaskStatus::UpstreamFailed
                            };
                            self.settle_unrun(&mut run, i, to, batch);
                        }
                    }
                }
                _ => {}
            }
        }
        tracing::info!(job.id = %job.id, dag = %run.dag.name, unfinished = run.unfinished, "job resumed");
        self.config.active.insert(job.id);
        self.jobs.insert(job.id, run);
        // Retries whose backoff was persisted fire at the stored time, or now if it passed.
        for (i, token, next_attempt_at) in retry_timers {
            let wait = next_attempt_at
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .unwrap_or(Duration::ZERO);
            self.add_timer(
                Instant::now() + wait,
                Timer::Retry {
                    job_id: job.id,
                    task: i,
                    token,
                },
            );
        }
        if cancelling {
            tracing::info!(job.id = %job.id, "the job was being cancelled; cancelling it");
            let (reply, _) = oneshot::channel();
            self.cancel(job.id, reply, batch);
            return;
        }
        self.maybe_finish(job.id, batch);
    }

    fn complete(&mut self, completion: Completion, batch: &mut Batch) {
        let Completion {
            job_id,
            task: t,
            token,
            outcome,
            finished_at,
        } = completion;
        let abandoning = self.abandoning;
        let worker_id = self.config.worker_id.clone();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            tracing::warn!(job.id = %job_id, task = t, token, "rejected completion for a job this engine no longer runs");
            return;
        };
        let task = &mut job.tasks[t];
        if task.status != TaskStatus::Running || task.token != token {
            tracing::warn!(
                job.id = %job_id, task.id = %job.dag.task_ids[t], token, current = task.token,
                "rejected a stale completion (fencing token)"
            );
            return;
        }
        task.abort = None;
        task.cancellation = None;
        job.running -= 1;
        self.running -= 1;
        if abandoning && matches!(outcome, Outcome::Aborted) {
            // Shutdown: the row stays `running` so the next engine re-queues it.
            return;
        }
        let task_id = Arc::clone(&job.dag.task_ids[t]);
        let plan_task = &job.dag.plan.tasks()[t];
        let attempt = task.attempt;
        let started_at = task.started_at;
        let now = batch.now();
        let record = |status: TaskStatus, error: Option<String>, output: Option<String>| TaskAttempt {
            job_id,
            task_id: task_id.to_string(),
            attempt,
            status,
            worker: Some(worker_id.clone()),
            error,
            output,
            started_at,
            finished_at: Some(finished_at),
        };

        if job.cancelling {
            let error = Some("cancelled".to_owned());
            let changes = TaskChanges {
                error: error.clone(),
                completed_at: Some(finished_at),
                record_attempt: Some(record(TaskStatus::Cancelled, error.clone(), None)),
                ..TaskChanges::default()
            };
            let guard = batch.task(transition(
                job_id,
                &task_id,
                TaskStatus::Running,
                token,
                TaskStatus::Cancelled,
                changes,
            ));
            task.status = TaskStatus::Cancelled;
            job.unfinished -= 1;
            batch.effect(
                guard,
                Effect::Publish(task_event(job, t, TaskEventKind::Cancelled, error, now)),
            );
            self.maybe_finish(job_id, batch);
            return;
        }

        match outcome {
            Outcome::Success(value) => {
                let output = matches!(plan_task.kind, TaskKind::Shell { .. }).then(|| {
                    format!(
                        "stdout:\n{}\nstderr:\n{}",
                        value["stdout"].as_str().unwrap_or_default(),
                        value["stderr"].as_str().unwrap_or_default()
                    )
                });
                let changes = TaskChanges {
                    result: Some(value.clone()),
                    completed_at: Some(finished_at),
                    record_attempt: Some(record(TaskStatus::Success, None, output)),
                    ..TaskChanges::default()
                };
                let guard = batch.task(transition(
                    job_id,
                    &task_id,
                    TaskStatus::Running,
                    token,
                    TaskStatus::Success,
                    changes,
                ));
                task.status = TaskStatus::Success;
                task.result = Some(Arc::new(value));
                job.unfinished -= 1;
                tracing::info!(job.id = %job_id, task.id = %task_id, attempt, "task succeeded");
                batch.effect(
                    guard,
                    Effect::Publish(task_event(job, t, TaskEventKind::Succeeded, None, now)),
                );
                if let Some(callback) = job.dag.callback(plan_task.on_success.as_ref()) {
                    let ctx = callback_context(job, Some(&task_id), CallbackEvent::Success, attempt, None);
                    batch.effect(guard, Effect::Callback(callback, ctx));
                }
                self.propagate(job_id, t, TaskStatus::Success, batch);
            }
            Outcome::Failed(error) => self.fail_attempt(job_id, t, token, error, finished_at, batch),
            Outcome::Aborted => self.fail_attempt(
                job_id,
                t,
                token,
                TaskError::with_kind(TaskErrorKind::Cancelled, "attempt aborted"),
                finished_at,
                batch,
            ),
        }
        self.maybe_finish(job_id, batch);
    }

    fn fail_attempt(
        &mut self,
        job_id: JobId,
        t: usize,
        token: i64,
        error: TaskError,
        finished_at: DateTime<Utc>,
        batch: &mut Batch,
    ) {
        let now = batch.now();
        let jitter_roll = self.next_random();
        let worker_id = self.config.worker_id.clone();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let task = &mut job.tasks[t];
        let plan_task = &job.dag.plan.tasks()[t];
        let task_id = Arc::clone(&job.dag.task_ids[t]);
        let attempt = task.attempt;
        let message = error.message().to_owned();
        let output = error.output().map(str::to_owned);
        let started_at = task.started_at;
        let record = |status: TaskStatus| TaskAttempt {
            job_id,
            task_id: task_id.to_string(),
            attempt,
            status,
            worker: Some(worker_id.clone()),
            error: Some(message.clone()),
            output: output.clone(),
            started_at,
            finished_at: Some(finished_at),
        };
        if let (TaskStatus::UpForRetry, Some(next_at)) =
            retry_decision(plan_task, &error, attempt, task.retry_base, now, jitter_roll)
        {
            let delay = (next_at - now).to_std().unwrap_or(Duration::ZERO);
            let changes = TaskChanges {
                error: Some(message.clone()),
                next_attempt_at: Some(next_at),
                record_attempt: Some(record(TaskStatus::UpForRetry)),
                ..TaskChanges::default()
            };
            let guard = batch.task(transition(
                job_id,
                &task_id,
                TaskStatus::Running,
                token,
                TaskStatus::UpForRetry,
                changes,
            ));
            task.status = TaskStatus::UpForRetry;
            tracing::warn!(
                job.id = %job_id, task.id = %task_id, attempt, error = %message, retry_in = ?delay,
                "task attempt failed; retry scheduled"
            );
            batch.effect(
                guard,
                Effect::Publish(task_event(
                    job,
                    t,
                    TaskEventKind::RetryScheduled,
                    Some(message.clone()),
                    now,
                )),
            );
            if let Some(callback) = job.dag.callback(plan_task.on_retry.as_ref()) {
                let ctx = callback_context(job, Some(&task_id), CallbackEvent::Retry, attempt, Some(message));
                batch.effect(guard, Effect::Callback(callback, ctx));
            }
            self.add_timer(
                Instant::now() + delay,
                Timer::Retry {
                    job_id,
                    task: t,
                    token,
                },
            );
            return;
        }
        let changes = TaskChanges {
            error: Some(message.clone()),
            completed_at: Some(finished_at),
            record_attempt: Some(record(TaskStatus::Failed)),
            ..TaskChanges::default()
        };
        let guard = batch.task(transition(
            job_id,
            &task_id,
            TaskStatus::Running,
            token,
            TaskStatus::Failed,
            changes,
        ));
        task.status = TaskStatus::Failed;
        job.unfinished -= 1;
        if job.first_failure.is_none() {
            job.first_failure = Some(format!("task `{task_id}` failed: {message}"));
        }
        tracing::error!(job.id = %job_id, task.id = %task_id, attempt, error = %message, "task failed");
        batch.effect(
            guard,
            Effect::Publish(task_event(
                job,
                t,
                TaskEventKind::Failed,
                Some(message.clone()),
                now,
            )),
        );
        if let Some(callback) = job.dag.callback(plan_task.on_failure.as_ref()) {
            let ctx = callback_context(
                job,
                Some(&task_id),
                CallbackEvent::Failure,
                attempt,
                Some(message),
            );
            batch.effect(guard, Effect::Callback(callback, ctx));
        }
        self.propagate(job_id, t, TaskStatus::Failed, batch);
    }

    /// Tells the dependents of a finished task; each may become ready, or be
    /// settled as upstream-failed or skipped, which is passed on in turn.
    /// Work is proportional to the out-degrees involved.
    fn propagate(&mut self, job_id: JobId, t: usize, status: TaskStatus, batch: &mut Batch) {
        let Some(mut job) = self.jobs.remove(&job_id) else {
            return;
        };
        let plan = Arc::clone(&job.dag.plan);
        let mut stack = vec![(t, status)];
        while let Some((t, status)) = stack.pop() {
            for &d in &plan.tasks()[t].dependents {
                let dependent = &mut job.tasks[d];
                count_outcome(&mut dependent.counts, status);
                if dependent.decided || dependent.status != TaskStatus::Pending {
                    continue;
                }
                let n_deps = plan.tasks()[d].dependencies.len() as u32;
                match decide(plan.tasks()[d].trigger_rule, dependent.counts, n_deps) {
                    Decision::Wait => {}
                    Decision::Run => {
                        dependent.decided = true;
                        if !job.cancelling {
                            self.newly_ready.push((job_id, d));
                        }
                    }
                    Decision::UpstreamFailed => {
                        self.settle_unrun(&mut job, d, TaskStatus::UpstreamFailed, batch);
                        stack.push((d, TaskStatus::UpstreamFailed));
                    }
                    Decision::Skip => {
                        self.settle_unrun(&mut job, d, TaskStatus::Skipped, batch);
                        stack.push((d, TaskStatus::Skipped));
                    }
                }
            }
        }
        self.jobs.insert(job_id, job);
    }

    /// Records a task that will not run: upstream-failed, skipped or cancelled.
    fn settle_unrun(&mut self, job: &mut JobRun, t: usize, to: TaskStatus, batch: &mut Batch) {
        let now = batch.now();
        let task = &mut job.tasks[t];
        let task_id = Arc::clone(&job.dag.task_ids[t]);
        let changes = TaskChanges {
            completed_at: Some(now),
            ..TaskChanges::default()
        };
        let guard = batch.task(transition(
            job.job_id,
            &task_id,
            task.status,
            task.token,
            to,
            changes,
        ));
        task.status = to;
        task.decided = true;
        job.unfinished -= 1;
        let kind = match to {
            TaskStatus::UpstreamFailed => {
                if job.first_failure.is_none() {
                    job.first_failure = Some(format!("task `{task_id}` upstream failed"));
                }
                TaskEventKind::UpstreamFailed
            }
            TaskStatus::Skipped => TaskEventKind::Skipped,
            _ => TaskEventKind::Cancelled,
        };
        tracing::info!(job.id = %job.job_id, task.id = %task_id, status = %to, "task will not run");
        batch.effect(guard, Effect::Publish(task_event(job, t, kind, None, now)));
    }

    fn cancel(&mut self, job_id: JobId, reply: oneshot::Sender<CancelReply>, batch: &mut Batch) {
        let grace = self.config.cancel_grace;
        let Some(mut job) = self.jobs.remove(&job_id) else {
            let _ = reply.send(CancelReply::NotActive);
            return;
        };
        if job.finishing && !job.cancelling {
            let _ = reply.send(CancelReply::AlreadyFinished(job.status));
        } else if job.cancelling {
            job.cancel_waiters.push(reply);
        } else {
            job.cancelling = true;
            job.cancel_waiters.push(reply);
            let now = batch.now();
            tracing::info!(job.id = %job_id, running = job.running, "cancelling job");
            batch.effect(
                Guard::Always,
                Effect::Publish(job_event(&job, JobEventKind::Cancelling, JobStatus::Running, now)),
            );
            // A queued task may be claimed by a worker at this very moment (its
            // cancellation then loses the compare-and-set): workers must hear
            // of the cancel whenever a task of the job was queued or running.
            let dispatched = job
                .tasks
                .iter()
                .any(|t| matches!(t.status, TaskStatus::Queued | TaskStatus::Running));
            for t in 0..job.tasks.len() {
                match job.tasks[t].status {
                    TaskStatus::Pending | TaskStatus::Queued | TaskStatus::UpForRetry => {
                        self.settle_unrun(&mut job, t, TaskStatus::Cancelled, batch);
                    }
                    TaskStatus::Running => {
                        if let Some(token) = &job.tasks[t].cancellation {
                            token.cancel();
                        } else if !self.config.remote_dispatch {
                            // Resumed from the store and not started here
                            // again: nothing runs it.
                            self.settle_unrun(&mut job, t, TaskStatus::Cancelled, batch);
                        }
                    }
                    _ => {}
                }
            }
            job.cancellation.cancel();
            let remote_running = self.config.remote_dispatch && job.unfinished > 0;
            if self.config.remote_dispatch && dispatched {
                // Workers stop the job's attempts when they hear this.
                batch.notify(crate::bridge::CANCEL_CHANNEL, job_id.to_string());
            }
            if job.running > 0 || remote_running {
                self.add_timer(Instant::now() + grace, Timer::CancelGrace { job_id });
            }
        }
        self.jobs.insert(job_id, job);
        self.maybe_finish(job_id, batch);
    }

    fn fire_timers(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Retry { job_id, task, token } => {
                    if let Some(job) = self.jobs.get(&job_id)
                        && job.tasks[task].status == TaskStatus::UpForRetry
                        && job.tasks[task].token == token
                        && !job.cancelling
                    {
                        self.newly_ready.push((job_id, task));
                    }
                }
                Timer::CancelGrace { job_id } if self.config.remote_dispatch => {
                    // Tasks still running on workers are cancelled in the store;
                    // a late completion then loses its compare-and-set. So are
                    // those a worker moved on meanwhile (a retry scheduled, a
                    // lost claim re-queued), which nothing would run or settle.
                    if let Some(mut job) = self.jobs.remove(&job_id) {
                        for t in 0..job.tasks.len() {
                            if !job.tasks[t].status.is_terminal() {
                                self.settle_unrun(&mut job, t, TaskStatus::Cancelled, batch);
                            }
                        }
                        self.jobs.insert(job_id, job);
                        self.maybe_finish(job_id, batch);
                    }
                }
                Timer::CancelGrace { job_id } => {
                    if let Some(job) = self.jobs.get(&job_id) {
                        for task in &job.tasks {
                            if let Some(abort) = &task.abort {
                                tracing::warn!(job.id = %job_id, "cancellation grace period over; dropping the handler");
                                abort.abort();
                            }
                        }
                    }
                }
                Timer::ShutdownDeadline => {
                    if self.running > 0 {
                        tracing::warn!(
                            running = self.running,
                            "shutdown timeout reached; stopping running attempts (they stay `running` for recovery)"
                        );
                    }
                    self.abandoning = true;
                    for job in self.jobs.values() {
                        job.cancellation.cancel();
                        for task in &job.tasks {
                            if let Some(abort) = &task.abort {
                                abort.abort();
                            }
                        }
                    }
                }
            }
        }
    }

    /// Starts ready tasks while runner slots are free, the highest priority
    /// first and, among equals, those queued earlier before those that became
    /// ready in this batch. The rest are persisted as `queued`.
    fn dispatch(&mut self, batch: &mut Batch) {
        let mut newly_ready = std::mem::take(&mut self.newly_ready);
        if self.draining {
            // Nothing new starts during shutdown; ready tasks stay pending for
            // the next engine.
            return;
        }
        if self.config.remote_dispatch {
            for (job_id, t) in newly_ready {
                self.queue_for_workers(job_id, t, batch);
            }
            return;
        }
        // Stable: equal priorities keep the order in which they became ready.
        newly_ready.sort_by_cached_key(|&(job_id, t)| Reverse(self.priority_of(job_id, t)));
        let mut ready = newly_ready.into_iter().peekable();
        while self.running < self.config.workers {
            let fresh = ready.peek().map(|&(job_id, t)| self.priority_of(job_id, t));
            let take_queued = match (self.queued.peek(), fresh) {
                (Some(waiting), Some(fresh)) => waiting.priority >= fresh,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (job_id, t) = if take_queued {
                match self.queued.pop() {
                    Some(waiting) => (waiting.job_id, waiting.task),
                    None => break,
                }
            } else {
                match ready.next() {
                    Some(next) => next,
                    None => break,
                }
            };
            self.start_attempt(job_id, t, batch);
        }
        let now = batch.now();
        for (job_id, t) in ready {
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let task = &mut job.tasks[t];
            if job.cancelling || !matches!(task.status, TaskStatus::Pending | TaskStatus::UpForRetry) {
                if task.status == TaskStatus::Queued {
                    self.push_queued(job_id, t);
                }
                continue;
            }
            let task_id = &job.dag.task_ids[t];
            let guard = batch.task(transition(
                job_id,
                task_id,
                task.status,
                task.token,
                TaskStatus::Queued,
                TaskChanges::default(),
            ));
            task.status = TaskStatus::Queued;
            batch.effect(
                guard,
                Effect::Publish(task_event(job, t, TaskEventKind::Queued, None, now)),
            );
            self.push_queued(job_id, t);
        }
    }

    /// A task's dispatch priority (its IR `priority`; 0 if the job is gone).
    fn priority_of(&self, job_id: JobId, t: usize) -> i32 {
        self.jobs
            .get(&job_id)
            .map_or(0, |job| job.dag.plan.tasks()[t].priority)
    }

    fn push_queued(&mut self, job_id: JobId, t: usize) {
        self.queued_seq += 1;
        self.queued.push(Waiting {
            priority: self.priority_of(job_id, t),
            order: Reverse(self.queued_seq),
            job_id,
            task: t,
        });
    }

    /// Distributed mode: persists a ready task as `queued` with the attempt
    /// number its run will have, and wakes the workers of its queue.
    fn queue_for_workers(&mut self, job_id: JobId, t: usize, batch: &mut Batch) {
        let now = batch.now();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let task = &mut job.tasks[t];
        if job.cancelling
            || !matches!(
                task.status,
                TaskStatus::Pending | TaskStatus::UpForRetry | TaskStatus::Running
            )
        {
            return;
        }
        let attempt = task.next_attempt();
        let queue = job.dag.plan.tasks()[t].queue.clone();
        let task_id = &job.dag.task_ids[t];
        let lost = task
            .interrupted
            .then(|| lost_attempt(job_id, task_id, task, attempt, now));
        let changes = TaskChanges {
            attempt: Some(attempt),
            clear_outcome: true,
            lost_count: lost.as_ref().map(|_| task.lost_count + 1),
            record_attempt: lost,
            ..TaskChanges::default()
        };
        let guard = batch.task(transition(
            job_id,
            task_id,
            task.status,
            task.token,
            TaskStatus::Queued,
            changes,
        ));
        task.status = TaskStatus::Queued;
        task.attempt = attempt;
        if task.interrupted {
            task.lost_count += 1;
        }
        task.interrupted = false;
        batch.notify(crate::bridge::READY_CHANNEL, queue);
        batch.effect(
            guard,
            Effect::Publish(task_event(job, t, TaskEventKind::Queued, None, now)),
        );
    }

    /// Applies a task change that a worker process committed: a claim, a
    /// success, a failure or a scheduled retry. Stale and repeated updates
    /// (older fencing token, same state) change nothing.
    fn apply_remote(&mut self, update: RemoteTaskUpdate, batch: &mut Batch) {
        let job_id = update.job_id;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let Some(t) = job.dag.plan.task_index(&update.task_id) else {
            return;
        };
        let task = &mut job.tasks[t];
        if !remote_is_newer(task.status, task.token, update.status, update.token) {
            return;
        }
        task.token = update.token;
        task.attempt = update.attempt;
        let task_id = Arc::clone(&job.dag.task_ids[t]);
        let plan_task = &job.dag.plan.tasks()[t];
        let attempt = update.attempt;
        match update.status {
            // Taken back from a worker (its lease lapsed) by the reaper: an
            // engine that runs the job's tasks itself runs it here.
            TaskStatus::Queued if !self.config.remote_dispatch => {
                task.status = TaskStatus::Queued;
                task.worker_held = false;
                self.newly_ready.push((job_id, t));
            }
            TaskStatus::Running | TaskStatus::Queued => task.status = update.status,
            TaskStatus::UpForRetry => {
                task.status = TaskStatus::UpForRetry;
                let wait = update
                    .next_attempt_at
                    .and_then(|at| (at - Utc::now()).to_std().ok())
                    .unwrap_or(Duration::ZERO);
                if let Some(callback) = job.dag.callback(plan_task.on_retry.as_ref()) {
                    let ctx =
                        callback_context(job, Some(&task_id), CallbackEvent::Retry, attempt, update.error);
                    batch.effect(Guard::Always, Effect::Callback(callback, ctx));
                }
                let token = update.token;
                self.add_timer(
                    Instant::now() + wait,
                    Timer::Retry {
                        job_id,
                        task: t,
                        token,
                    },
                );
            }
            TaskStatus::Success => {
                task.status = TaskStatus::Success;
                job.unfinished -= 1;
                if let Some(callback) = job.dag.callback(plan_task.on_success.as_ref()) {
                    let ctx = callback_context(job, Some(&task_id), CallbackEvent::Success, attempt, None);
                    batch.effect(Guard::Always, Effect::Callback(callback, ctx));
                }
                self.propagate(job_id, t, TaskStatus::Success, batch);
            }
            TaskStatus::Failed => {
                task.status = TaskStatus::Failed;
                job.unfinished -= 1;
                let message = update.error.unwrap_or_default();
                if job.first_failure.is_none() {
                    job.first_failure = Some(format!("task `{task_id}` failed: {message}"));
                }
                if let Some(callback) = job.dag.callback(plan_task.on_failure.as_ref()) {
                    let ctx = callback_context(
                        job,
                        Some(&task_id),
                        CallbackEvent::Failure,
                        attempt,
                        Some(message),
                    );
                    batch.effect(Guard::Always, Effect::Callback(callback, ctx));
                }
                self.propagate(job_id, t, TaskStatus::Failed, batch);
            }
            other => {
                task.status = other;
                if other.is_terminal() {
                    job.unfinished -= 1;
                }
            }
        }
        self.maybe_finish(job_id, batch);
    }

    fn start_attempt(&mut self, job_id: JobId, t: usize, batch: &mut Batch) {
        let now = batch.now();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let task = &mut job.tasks[t];
        if job.cancelling
            || !matches!(
                task.status,
                TaskStatus::Pending | TaskStatus::Queued | TaskStatus::UpForRetry | TaskStatus::Running
            )
        {
            return;
        }
        let attempt = task.next_attempt();
        let token = task.token + 1;
        let task_id = &job.dag.task_ids[t];
        // An attempt interrupted with its engine is recorded as lost, with
        // the engine it was lost with, before it runs again.
        let lost = task
            .interrupted
            .then(|| lost_attempt(job_id, task_id, task, attempt, now));
        let changes = TaskChanges {
            attempt: Some(attempt),
            fencing_token: Some(token),
            worker: Some(self.config.worker_id.clone()),
            started_at: Some(now),
            clear_outcome: true,
            lost_count: lost.as_ref().map(|_| task.lost_count + 1),
            record_attempt: lost,
            ..TaskChanges::default()
        };
        let guard = batch.task(transition(
            job_id,
            task_id,
            task.status,
            task.token,
            TaskStatus::Running,
            changes,
        ));
        task.status = TaskStatus::Running;
        task.attempt = attempt;
        task.token = token;
        if task.interrupted {
            task.lost_count += 1;
        }
        task.interrupted = false;
        task.started_at = Some(now);
        task.worker = Some(self.config.worker_id.clone());
        job.running += 1;
        self.running += 1;
        tracing::info!(job.id = %job_id, task.id = %task_id, attempt, "task started");
        batch.effect(
            guard,
            Effect::Publish(task_event(job, t, TaskEventKind::Started, None, now)),
        );
        batch.effect(guard, Effect::Spawn { job_id, task: t });
    }

    fn maybe_finish(&mut self, job_id: JobId, batch: &mut Batch) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if job.finishing || job.unfinished > 0 || job.running > 0 {
            return;
        }
        job.finishing = true;
        let (status, kind, error) = if job.cancelling {
            (
                JobStatus::Cancelled,
                JobEventKind::Cancelled,
                Some("cancelled".to_owned()),
            )
        } else if let Some(error) = job.first_failure.clone() {
            (JobStatus::Failed, JobEventKind::Failed, Some(error))
        } else {
            (JobStatus::Success, JobEventKind::Succeeded, None)
        };
        let now = batch.now();
        let guard = batch.job(JobTransition {
            job_id,
            from: JobStatus::Running,
            to: status,
            error: error.clone(),
            at: now,
            owner: Some(self.config.worker_id.clone()),
        });
        job.status = status;
        match status {
            JobStatus::Failed => {
                tracing::error!(job.id = %job_id, dag = %job.dag.name, error = ?error, "job failed")
            }
            _ => tracing::info!(job.id = %job_id, dag = %job.dag.name, status = %status, "job finished"),
        }
        let mut event = job_event(job, kind, status, now);
        event_error(&mut event, error.clone());
        batch.effect(guard, Effect::Publish(event));
        let ir = job.dag.plan.ir();
        let callback = match status {
            JobStatus::Success => job
                .dag
                .callback(ir.on_success.as_ref())
                .map(|c| (c, CallbackEvent::Success)),
            JobStatus::Failed => job
                .dag
                .callback(ir.on_failure.as_ref())
                .map(|c| (c, CallbackEvent::Failure)),
            _ => None,
        };
        if let Some((callback, event)) = callback {
            let ctx = callback_context(job, None, event, 0, error);
            batch.effect(guard, Effect::Callback(callback, ctx));
        }
        batch.effect(
            Guard::Always,
            Effect::Finished {
                job_id,
                waiters: std::mem::take(&mut job.waiters),
                cancel_waiters: std::mem::take(&mut job.cancel_waiters),
            },
        );
    }

    async fn commit(&mut self, batch: Batch) {
        let Batch { store, effects, .. } = batch;
        let committed = match self.state.commit(&store).await {
            Ok(committed) => committed,
            Err(error) => {
                tracing::error!(%error, "could not commit state; detaching the affected jobs (they resume when an engine restarts)");
                self.detach(&store);
                return;
            }
        };
        // Jobs whose transitions were not committed: only they are affected,
        // the rest of the batch stands.
        let mut uncommitted: HashSet<JobId> = HashSet::new();
        for failed in committed.failed {
            for &job_id in &failed.job_ids {
                uncommitted.insert(job_id);
                if failed.error.kind() == ErrorKind::Unavailable {
                    tracing::error!(job.id = %job_id, error = %failed.error, "could not commit state; detaching the job (it resumes when an engine restarts)");
                    self.detach_job(job_id);
                } else {
                    self.quarantine(job_id, &failed.error, &store);
                }
            }
        }
        let outcome = committed.outcome;
        for (guard, effect) in effects {
            if !uncommitted.is_empty()
                && effect_job(&effect).is_some_and(|job_id| uncommitted.contains(&job_id))
            {
                continue;
            }
            let won = match guard {
                Guard::Always => true,
                Guard::Task(i) => outcome.tasks.get(i).copied().unwrap_or(false),
                Guard::Job(i) => outcome.jobs.get(i).copied().unwrap_or(false),
            };
            if !won {
                // Another writer moved this job on: the in-memory view of it is
                // stale, so stop running it here rather than act on it.
                let lost = match guard {
                    Guard::Task(i) => store.tasks.get(i).map(|t| {
                        tracing::warn!(
                            job.id = %t.job_id, task.id = %t.task_id, from = %t.from, to = %t.to,
                            "transition lost its compare-and-set; another writer owns this job now"
                        );
                        t.job_id
                    }),
                    Guard::Job(i) => store.jobs.get(i).map(|j| {
                        tracing::warn!(job.id = %j.job_id, from = %j.from, to = %j.to, "job transition lost its compare-and-set");
                        j.job_id
                    }),
                    Guard::Always => None,
                };
                // In distributed mode workers write task rows too: a lost task
                // race there is expected and the polling fallback reconciles
                // it. Otherwise the job is read back from the store.
                let expected = self.config.remote_dispatch && matches!(guard, Guard::Task(_));
                if let Some(job_id) = lost
                    && !expected
                {
                    self.resync(job_id);
                }
                continue;
            }
            self.apply(effect);
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Publish(event) => self.events.publish(event),
            Effect::Spawn { job_id, task } => self.spawn(job_id, task),
            Effect::Callback(callback, ctx) => {
                self.config.tasks.spawn(async move {
                    let job_id = ctx.job_id;
                    let task_id = ctx.task_id.clone();
                    // Called inside its own task, so that a callback that
                    // panics even before its first await is caught too.
                    match tokio::spawn(async move { callback(ctx).await }).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::error!(job.id = %job_id, task.id = ?task_id, %error, "callback returned an error")
                        }
                        Err(error) => {
                            tracing::error!(job.id = %job_id, task.id = ?task_id, %error, "callback panicked")
                        }
                    }
                });
            }
            Effect::Finished {
                job_id,
                waiters,
                cancel_waiters,
            } => {
                self.jobs.remove(&job_id);
                self.repairs.remove(&job_id);
                self.config.active.remove(job_id);
                for waiter in waiters {
                    let _ = waiter.send(true);
                }
                for waiter in cancel_waiters {
                    let _ = waiter.send(CancelReply::Cancelled);
                }
            }
        }
    }

    fn spawn(&mut self, job_id: JobId, t: usize) {
        let Some(reports) = self.reports.upgrade() else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let plan = Arc::clone(&job.dag.plan);
        let plan_task = &plan.tasks()[t];
        let mut upstream = HashMap::with_capacity(plan_task.dependencies.len());
        for &d in &plan_task.dependencies {
            if let Some(result) = &job.tasks[d].result {
                upstream.insert(Arc::clone(&job.dag.task_ids[d]), Arc::clone(result));
            }
        }
        let cancellation = job.cancellation.child_token();
        let task = &mut job.tasks[t];
        let context = TaskContext::new(
            job_id,
            job.dag.record.id,
            Arc::clone(&job.dag.name),
            Arc::clone(&job.dag.task_ids[t]),
            task.attempt,
            Arc::clone(&job.params),
            upstream,
            cancellation.clone(),
        )
        .with_lineage(Lineage {
            plan: Arc::clone(&plan),
            task: t,
            store: self.state.store().clone(),
        });
        let handler = job.dag.handler_at(t);
        let abort = runner::spawn(
            Attempt {
                job_id,
                task: t,
                token: task.token,
                handler,
                context,
                timeout: plan_task.timeout,
                cancellation: cancellation.clone(),
                limits: self.config.limits,
            },
            reports,
        );
        task.abort = Some(abort);
        task.cancellation = Some(cancellation);
    }

    /// After a failed commit the in-memory state of the jobs in the batch is
    /// ahead of the store; forget them so that only committed state is ever
    /// acted on. Their rows still say what was committed, and recovery resumes
    /// them.
    fn detach(&mut self, store: &TransitionBatch) {
        let mut ids: Vec<JobId> = store
            .tasks
            .iter()
            .map(|t| t.job_id)
            .chain(store.jobs.iter().map(|j| j.job_id))
            .collect();
        ids.sort();
        ids.dedup();
        for job_id in ids {
            self.detach_job(job_id);
        }
    }

    /// Handles a job whose transitions the store refused for a reason of
    /// their own (a value it cannot hold): the job stops running here, then,
    /// in the background, its task transitions from the batch are committed
    /// one by one, a refused outcome being replaced by a failure of its task
    /// that says why, and the job is resumed from what is stored. A job
    /// refused again and again is left detached (it resumes when an engine
    /// restarts).
    fn quarantine(&mut self, job_id: JobId, error: &StoreError, store: &TransitionBatch) {
        let Some(dag) = self.jobs.get(&job_id).map(|job| Arc::clone(&job.dag)) else {
            return;
        };
        let repairs = self.repairs.entry(job_id).or_insert(0);
        *repairs += 1;
        let repairs = *repairs;
        tracing::error!(
            job.id = %job_id, error = %crate::state::error_chain(error), repairs,
            "the store refused this job's transitions; the other jobs of the batch are committed"
        );
        self.detach_job(job_id);
        if repairs > MAX_REPAIRS {
            tracing::error!(job.id = %job_id, "the store keeps refusing this job; it stays detached");
            return;
        }
        let transitions: Vec<TaskTransition> = store
            .tasks
            .iter()
            .filter(|t| t.job_id == job_id)
            .cloned()
            .collect();
        let state = self.state.clone();
        let reports = self.reports.clone();
        let events = self.events.clone();
        self.config.tasks.spawn(async move {
            let results = state.commit_each(transitions, |_| Vec::new()).await;
            for result in &results {
                match result {
                    Some(RowCommit {
                        transition,
                        won: true,
                        replaced: true,
                    }) => events.publish(Event::Task(TaskEvent {
                        kind: TaskEventKind::Failed,
                        job_id,
                        dag_id: dag.record.id,
                        task_id: transition.task_id.clone(),
                        status: TaskStatus::Failed,
                        attempt: transition
                            .changes
                            .record_attempt
                            .as_ref()
                            .map_or(0, |a| a.attempt),
                        error: transition.changes.error.clone(),
                        timestamp: Utc::now(),
                    })),
                    Some(_) => {}
                    None => {
                        tracing::error!(job.id = %job_id, "could not settle the job's refused transitions; it resumes when an engine restarts");
                        return;
                    }
                }
            }
            let store = state.store();
            let (job, tasks) = match (
                store.get_job(job_id).await,
                store.list_task_executions_for_job(job_id).await,
            ) {
                (Ok(job), Ok(tasks)) => (job, tasks),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::error!(job.id = %job_id, %error, "could not read the job back; it resumes when an engine restarts");
                    return;
                }
            };
            if job.status.is_terminal() {
                return;
            }
            if let Some(reports) = reports.upgrade() {
                let _ = reports.send(Command::Resume { job, dag, tasks }).await;
            }
        });
    }

    /// Handles a job whose stored state moved on without this scheduler (a
    /// compare-and-set lost): the job stops running here, then it is read
    /// back from the store and resumed if it is still this engine's to run
    /// (its lease renewed by a claim that only its owner, or anyone after the
    /// lease lapsed, wins). Another engine's job is forgotten; a job that
    /// keeps losing is left detached, and its lease then lapses.
    fn resync(&mut self, job_id: JobId) {
        let Some(dag) = self.jobs.get(&job_id).map(|job| Arc::clone(&job.dag)) else {
            return;
        };
        self.detach_job(job_id);
        let repairs = self.repairs.entry(job_id).or_insert(0);
        *repairs += 1;
        if *repairs > MAX_REPAIRS {
            tracing::error!(job.id = %job_id, "the job's stored state keeps moving on without this engine; it stays detached");
            return;
        }
        let store = self.state.store().clone();
        let reports = self.reports.clone();
        let owner = self.config.worker_id.clone();
        let lease = chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(30));
        self.config.tasks.spawn(async move {
            let now = Utc::now();
            match store.claim_job(job_id, &owner, now + lease, now).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(job.id = %job_id, "the job is another engine's now (or finished); forgetting it here");
                    return;
                }
                Err(error) => {
                    tracing::error!(job.id = %job_id, %error, "could not read the job back; its lease lapses and an engine resumes it");
                    return;
                }
            }
            let (job, tasks) = match (
                store.get_job(job_id).await,
                store.list_task_executions_for_job(job_id).await,
            ) {
                (Ok(job), Ok(tasks)) => (job, tasks),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::error!(job.id = %job_id, %error, "could not read the job back; its lease lapses and an engine resumes it");
                    return;
                }
            };
            if job.status.is_terminal() {
                return;
            }
            if let Some(reports) = reports.upgrade() {
                let _ = reports.send(Command::Resume { job, dag, tasks }).await;
            }
        });
    }

    /// Stops running a job here: its attempts are stopped and its waiters
    /// told to read the store. Its rows keep what was committed.
    fn detach_job(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.remove(&job_id) else {
            return;
        };
        self.config.active.remove(job_id);
        job.cancellation.cancel();
        for task in &job.tasks {
            if let Some(abort) = &task.abort {
                abort.abort();
            }
        }
        self.running -= job.running;
        for waiter in job.waiters {
            let _ = waiter.send(false);
        }
        for waiter in job.cancel_waiters {
            let _ = waiter.send(CancelReply::NotActive);
        }
        self.queued.retain(|waiting| waiting.job_id != job_id);
        tracing::error!(job.id = %job_id, "job detached from this engine; its stored state stands");
    }

    /// xorshift64*: enough randomness for retry jitter without a dependency.
    fn next_random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let value = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The record of an attempt interrupted with the engine that ran it, kept
/// before the task runs again.
fn lost_attempt(
    job_id: JobId,
    task_id: &str,
    task: &TaskRun,
    attempt: u32,
    now: DateTime<Utc>,
) -> TaskAttempt {
    TaskAttempt {
        job_id,
        task_id: task_id.to_owned(),
        attempt,
        status: TaskStatus::Lost,
        worker: task.worker.clone(),
        error: Some(match &task.worker {
            Some(worker) => format!("lost with its engine {worker}"),
            None => "lost with its engine".to_owned(),
        }),
        output: None,
        started_at: task.started_at,
        finished_at: Some(now),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The job an effect belongs to.
fn effect_job(effect: &Effect) -> Option<JobId> {
    match effect {
        Effect::Spawn { job_id, .. } | Effect::Finished { job_id, .. } => Some(*job_id),
        Effect::Publish(event) => event.job_id(),
        Effect::Callback(_, ctx) => Some(ctx.job_id),
    }
}

/// Whether a task change read from the store (a worker's claim or outcome,
/// the reaper's) moves the scheduler's view of the task forward. Only queued
/// and running tasks are changed by others. Fencing tokens only grow: a
/// claim or a reaping brings a new one. With the token the scheduler knows,
/// the only change that can follow is the outcome of the running attempt; a
/// row read while it said `up_for_retry` (or `running`) that arrives after
/// the scheduler queued the retry is older than what it knows, and applying
/// it again would replay the retry (and its `on_retry`).
fn remote_is_newer(known: TaskStatus, known_token: i64, update: TaskStatus, update_token: i64) -> bool {
    if !matches!(known, TaskStatus::Queued | TaskStatus::Running) {
        return false;
    }
    update_token > known_token
        || (update_token == known_token
            && known == TaskStatus::Running
            && !matches!(
                update,
                TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Running
            ))
}

fn count_outcome(counts: &mut DepCounts, status: TaskStatus) {
    match status {
        TaskStatus::Success => counts.success += 1,
        TaskStatus::Failed | TaskStatus::UpstreamFailed => counts.failed += 1,
        TaskStatus::Skipped | TaskStatus::Cancelled => counts.skipped += 1,
        _ => {}
    }
}

fn transition(
    job_id: JobId,
    task_id: &str,
    from: TaskStatus,
    token: i64,
    to: TaskStatus,
    changes: TaskChanges,
) -> TaskTransition {
    TaskTransition {
        job_id,
        task_id: task_id.to_owned(),
        from,
        fencing_token: token,
        to,
        changes,
    }
}

fn job_event(job: &JobRun, kind: JobEventKind, status: JobStatus, at: DateTime<Utc>) -> Event {
    Event::Job(JobEvent {
        kind,
        job_id: job.job_id,
        dag_id: job.dag.record.id,
        status,
        error: None,
        timestamp: at,
    })
}

fn event_error(event: &mut Event, error: Option<String>) {
    if let Event::Job(e) = event {
        e.error = error;
    }
}

fn task_event(
    job: &JobRun,
    t: usize,
    kind: TaskEventKind,
    error: Option<String>,
    at: DateTime<Utc>,
) -> Event {
    Event::Task(TaskEvent {
        kind,
        job_id: job.job_id,
        dag_id: job.dag.record.id,
        task_id: job.dag.task_ids[t].to_string(),
        status: job.tasks[t].status,
        attempt: job.tasks[t].attempt,
        error,
        timestamp: at,
    })
}

fn callback_context(
    job: &JobRun,
    task_id: Option<&str>,
    event: CallbackEvent,
    attempt: u32,
    error: Option<String>,
) -> CallbackContext {
    CallbackContext {
        job_id: job.job_id,
        dag_id: job.dag.record.id,
        dag_name: job.dag.name.to_string(),
        task_id: task_id.map(str::to_owned),
        event,
        attempt,
        error,
        params: Arc::clone(&job.params),
    }
}

fn snapshot(job: &JobRun) -> JobState {
    JobState {
        job_id: job.job_id,
        dag_id: job.dag.record.id,
        status: job.status,
        active: true,
        cancelling: job.cancelling,
        tasks: job
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| TaskState {
                task_id: job.dag.task_ids[i].to_string(),
                status: t.status,
                attempt: t.attempt,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(success: u32, failed: u32, skipped: u32) -> DepCounts {
        DepCounts {
            success,
            failed,
            skipped,
        }
    }

    #[test]
    fn remote_updates_never_move_a_task_back() {
        use TaskStatus::*;
        // A claim (new token), then the attempt's outcome (same token).
        assert!(remote_is_newer(Queued, 0, Running, 1));
        assert!(remote_is_newer(Running, 1, UpForRetry, 1));
        assert!(remote_is_newer(Running, 1, Success, 1));
        assert!(remote_is_newer(Running, 1, Cancelled, 1));
        // The reaper re-queues or fails with a new token.
        assert!(remote_is_newer(Running, 1, Queued, 2));
        assert!(remote_is_newer(Running, 1, Failed, 2));
        // The retry was queued (token kept): the `up_for_retry` row read
        // before, or the claim's `running`, is old news.
        assert!(!remote_is_newer(Queued, 1, UpForRetry, 1));
        assert!(!remote_is_newer(Queued, 1, Running, 1));
        // Repeats and older tokens change nothing.
        assert!(!remote_is_newer(Running, 1, Running, 1));
        assert!(!remote_is_newer(Running, 2, Success, 1));
        assert!(!remote_is_newer(Queued, 2, Running, 1));
        // Settled tasks are the scheduler's alone.
        assert!(!remote_is_newer(UpForRetry, 1, Running, 2));
        assert!(!remote_is_newer(Success, 1, Failed, 2));
    }

    #[test]
    fn trigger_rules_follow_airflow() {
        use Decision::*;
        use TriggerRule::*;
        assert_eq!(decide(AllSuccess, counts(1, 0, 0), 2), Wait);
        assert_eq!(decide(AllSuccess, counts(2, 0, 0), 2), Run);
        assert_eq!(decide(AllSuccess, counts(0, 1, 0), 2), UpstreamFailed);
        assert_eq!(decide(AllSuccess, counts(0, 0, 1), 2), Skip);
        assert_eq!(decide(AllDone, counts(1, 1, 0), 3), Wait);
        assert_eq!(decide(AllDone, counts(1, 1, 1), 3), Run);
        assert_eq!(decide(AllFailed, counts(0, 2, 0), 2), Run);
        assert_eq!(decide(AllFailed, counts(1, 0, 0), 2), Skip);
        assert_eq!(decide(OneSuccess, counts(1, 0, 0), 3), Run);
        assert_eq!(decide(OneSuccess, counts(0, 2, 0), 2), UpstreamFailed);
        assert_eq!(decide(OneSuccess, counts(0, 0, 2), 2), Skip);
        assert_eq!(decide(OneFailed, counts(0, 1, 0), 3), Run);
        assert_eq!(decide(OneFailed, counts(3, 0, 0), 3), Skip);
        assert_eq!(decide(NoneFailed, counts(1, 0, 1), 2), Run);
        assert_eq!(decide(NoneFailed, counts(1, 1, 0), 3), UpstreamFailed);
        assert_eq!(decide(AllSuccess, counts(0, 0, 0), 0), Run);
    }
}
