//! [`Cascade`], the engine handle, and its builder.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cascade_store::{
    Backend, DagRecord, ErrorKind, Job, JobStatus, JobTransition, NewDag, NewJob, NewTask, Store,
    StoreOptions, StoreReader, TaskChanges, TaskStatus, TaskTransition, TransitionBatch,
};
use chrono::Utc;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dag::Dag;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus, EventStream, Topic, WorkerEvent, WorkerEventKind};
use crate::limits::{self, Limits, MAX_RESULT_BYTES_CEILING};
use crate::owner::{self, OrphanedJob};
use crate::scheduler::RemoteTaskUpdate;
use crate::scheduler::{ActiveJobs, CancelReply, Command, RegisteredDag, Scheduler, SchedulerConfig};
use crate::state::{JobState, StateManager, TaskState};
use crate::worker::{self, WorkerConfig};
use crate::{DagId, JobId};
use crate::{bridge, cron, leader, leases};

/// Default grace period between a cancellation signal and dropping handlers
/// that ignore it.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);
/// Default time `shutdown` lets running tasks finish.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default capacity of the event bus per subscriber before it lags.
pub const DEFAULT_EVENT_CAPACITY: usize = 8192;
/// The longest pause between two store reads of [`Cascade::wait_for_job`]
/// waiting for a job that another engine runs.
pub const WAIT_POLL_MAX: Duration = Duration::from_secs(1);
const WAIT_POLL_MIN: Duration = Duration::from_millis(20);
/// Jobs read per page when looking for jobs to take over.
const ADOPT_PAGE: i64 = 200;
/// Jobs held by other engines' leases logged one by one at registration.
const ANNOUNCE_MAX: usize = 10;
/// How long an engine's claim on a job lasts without renewal (default of
/// [`CascadeBuilder::lease_duration`]).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// What an engine does in a deployment of several processes sharing one
/// PostgreSQL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Role {
    /// Schedules jobs and runs their tasks in this process (the default; the
    /// only role on SQLite).
    #[default]
    All,
    /// Schedules jobs (owns them, releases dependents, fires cron ticks when
    /// it leads) and queues their tasks for worker processes; runs none.
    Scheduler,
    /// Claims queued tasks of the DAGs it registered and runs them; schedules
    /// nothing.
    Worker,
}

/// Default interval between a worker's heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Default of [`CascadeBuilder::store_outage_timeout`].
pub const DEFAULT_STORE_OUTAGE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Default of [`CascadeBuilder::max_lost`]: a task may lose its worker this
/// many times; the next loss fails it.
pub const DEFAULT_MAX_LOST: u32 = 3;

/// Configures and starts a [`Cascade`] engine.
///
/// ```no_run
/// use cascade_core::Cascade;
///
/// # #[tokio::main] async fn main() -> cascade_core::Result<()> {
/// let cascade = Cascade::builder()                 // no URL: ./cascade.db (SQLite)
///     .database_url("postgres://root@127.0.0.1/test")
///     .workers(8)
///     .build()
///     .await?;
/// # cascade.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CascadeBuilder {
    database_url: Option<String>,
    workers: Option<usize>,
    store_options: StoreOptions,
    cancel_grace: Option<Duration>,
    shutdown_timeout: Option<Duration>,
    event_capacity: Option<usize>,
    lease_duration: Option<Duration>,
    role: Role,
    queues: Option<Vec<String>>,
    labels: Vec<String>,
    capacity: Option<usize>,
    heartbeat_interval: Option<Duration>,
    poll_interval: Option<Duration>,
    max_result_bytes: Option<usize>,
    max_lost: Option<u32>,
    store_outage_timeout: Option<Duration>,
}

impl CascadeBuilder {
    /// The database: `postgres://…`, `sqlite://path`, `sqlite::memory:`. Without
    /// one, Cascade uses the SQLite file `./cascade.db`.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// How many task attempts run at once. Defaults to 2 × the CPU cores; the
    /// `CASCADE_WORKERS` environment variable overrides both.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Store settings (pool sizes, SQLite durability).
    pub fn store_options(mut self, options: StoreOptions) -> Self {
        self.store_options = options;
        self
    }

    /// How long `cancel_job` waits for handlers to react to the cancellation
    /// signal before dropping them (default 5 s).
    pub fn cancel_grace_period(mut self, grace: Duration) -> Self {
        self.cancel_grace = Some(grace);
        self
    }

    /// How long `shutdown` lets running tasks finish before stopping them
    /// (default 30 s). Stopped tasks stay `running` in the store and are
    /// resumed by the next engine.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// How many events a subscriber may fall behind before it lags (default 8192).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = Some(capacity);
        self
    }

    /// How long this engine's claim on a job lasts without renewal (default
    /// 30 s). The engine renews its claims every third of it; when a process
    /// dies, another engine that has the DAG registered takes its unfinished
    /// jobs over once the lease has lapsed.
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.lease_duration = Some(lease);
        self
    }

    /// This process's role among several sharing one PostgreSQL database
    /// (default [`Role::All`]). `Scheduler` and `Worker` need PostgreSQL.
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The queues a worker claims tasks from (default `["default"]`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = Some(queues.into_iter().map(Into::into).collect());
        self
    }

    /// Labels describing a worker (e.g. `gpu`, `eu-west`), recorded in the
    /// `workers` table.
    pub fn labels<I, S>(mut self, labels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.labels = labels.into_iter().map(Into::into).collect();
        self
    }

    /// How many tasks a worker runs at once; the same as [`workers`](Self::workers).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// How often a worker heartbeats and extends the leases of its tasks
    /// (default 5 s). A task's lease is three intervals; a worker silent for
    /// that long is declared lost and its tasks return to the queue.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// How often a worker looks for queued tasks without being notified, and
    /// a scheduler re-reads the tasks of its jobs (default 1 s): the fallback
    /// when notifications are unavailable, e.g. behind a transaction pooler.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// The most bytes a task's result, or a job's params, may take as JSON
    /// (default [`DEFAULT_MAX_RESULT_BYTES`](crate::DEFAULT_MAX_RESULT_BYTES),
    /// 2 MiB; at most 128 MiB). A larger result fails its task, without a
    /// retry, with an error such as `result is 3145728 bytes, over
    /// max_result_bytes 2097152`; larger params are refused by
    /// [`Cascade::trigger_job`] with [`Error::InvalidParams`]. Keep large
    /// data elsewhere (files, object storage) and pass a reference.
    ///
    /// Results and params are also refused, whatever their size, when a
    /// string or key holds a NUL character (`\u0000`) or when they are nested
    /// more than [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH) levels deep.
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = Some(bytes);
        self
    }

    /// How long the engine holds its commits while the store is away — a
    /// PostgreSQL restart or failover, dropped connections, a SQLite lock
    /// held by another process — before it gives them up (default
    /// [`DEFAULT_STORE_OUTAGE_TIMEOUT`], 5 minutes). Meanwhile it starts
    /// nothing new and loses nothing; when the store returns, work resumes.
    /// Jobs whose commit was given up stop here and, once their lease ends,
    /// are taken over (by this engine or another) from what was committed.
    pub fn store_outage_timeout(mut self, timeout: Duration) -> Self {
        self.store_outage_timeout = Some(timeout);
        self
    }

    /// How many times a task may be lost — its worker stopped heartbeating
    /// while running it (killed, hung, cut off from the database) — before
    /// the next loss fails it with the error `lost N times (max_lost M)`
    /// instead of handing it to another worker (default
    /// [`DEFAULT_MAX_LOST`], 3). Stops a task that kills every worker it
    /// runs on from going round forever. Applies in distributed mode, where
    /// the leading scheduler reaps lapsed leases; every loss is kept in the
    /// attempt history with status [`TaskStatus::Lost`].
    pub fn max_lost(mut self, max_lost: u32) -> Self {
        self.max_lost = Some(max_lost);
        self
    }

    /// Opens the store (running migrations) and starts the engine.
    #[tracing::instrument(skip(self), err)]
    pub async fn build(self) -> Result<Cascade> {
        let workers = resolve_workers(
            self.capacity.or(self.workers),
            std::env::var("CASCADE_WORKERS").ok(),
        )?;
        let lease = self.lease_duration.unwrap_or(DEFAULT_LEASE);
        if lease < Duration::from_millis(300) {
            return Err(Error::Config {
                reason: format!(
                    "lease_duration({lease:?}) is too short to renew in time; use at least 300 ms"
                ),
            });
        }
        let heartbeat_interval = self.heartbeat_interval.unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        if heartbeat_interval < Duration::from_millis(50) {
            return Err(Error::Config {
                reason: format!(
                    "heartbeat_interval({heartbeat_interval:?}) is too short; use at least 50 ms"
                ),
            });
        }
        let max_result_bytes = self.max_result_bytes.unwrap_or(crate::DEFAULT_MAX_RESULT_BYTES);
        if max_result_bytes == 0 || max_result_bytes > MAX_RESULT_BYTES_CEILING {
            return Err(Error::Config {
                reason: format!(
                    "max_result_bytes({max_result_bytes}) must be between 1 and {MAX_RESULT_BYTES_CEILING} \
                     (128 MiB); keep large data outside the store and pass a reference"
                ),
            });
        }
        let limits = Limits { max_result_bytes };
        let max_lost = self.max_lost.unwrap_or(DEFAULT_MAX_LOST);
        let poll_interval = self
            .poll_interval
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        let store = Store::open_with(self.database_url.as_deref(), self.store_options).await?;
        let role = self.role;
        let distributed = store.backend() == Backend::Postgres;
        if role != Role::All && !distributed {
            return Err(Error::Config {
                reason: format!(
                    "role {role:?} needs PostgreSQL: distributed mode shares work through the database; \
                     use a postgres:// database_url, or Role::All with SQLite"
                ),
            });
        }
        let worker_id = owner::new_engine_id();
        // Events cross processes when the work does.
        let (outbox, outbox_rx) = if role == Role::All {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        };
        let events = EventBus::new(self.event_capacity.unwrap_or(DEFAULT_EVENT_CAPACITY), outbox);
        let (commands, inbox) = mpsc::channel(1024);
        let cancel_grace = self.cancel_grace.unwrap_or(DEFAULT_CANCEL_GRACE);
        let store_outage_timeout = self.store_outage_timeout.unwrap_or(DEFAULT_STORE_OUTAGE_TIMEOUT);
        let active = ActiveJobs::default();
        let tasks = TaskTracker::new();
        let scheduler = Scheduler::new(
            SchedulerConfig {
                workers,
                worker_id: worker_id.clone(),
                cancel_grace,
                lease,
                remote_dispatch: role == Role::Scheduler,
                limits,
                active: active.clone(),
                tasks: tasks.clone(),
            },
            StateManager::with_outage_timeout(store.clone(), store_outage_timeout),
            events.clone(),
            inbox,
            commands.downgrade(),
        );
        let scheduler = tokio::spawn(scheduler.run());
        tracing::info!(backend = ?store.backend(), url = %store.url(), ?role, workers, worker = %worker_id, "cascade engine started");
        let (worker_cancels, cancels_rx) = mpsc::unbounded_channel();
        let cascade = Cascade {
            inner: Arc::new(Inner {
                reader: StoreReader::from(store.clone()),
                active,
                store,
                events,
                commands,
                registry: RwLock::new(HashMap::new()),
                worker_id,
                workers,
                lease,
                role,
                shutdown_timeout: self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
                scheduler: Mutex::new(Some(scheduler)),
                background: CancellationToken::new(),
                cron_wakeup: Notify::new(),
                worker_wakeup: Notify::new(),
                worker_cancels,
                is_leader: AtomicBool::new(!distributed),
                limits,
                max_lost,
                worker_drained: Mutex::new(None),
                membership: Mutex::new(None),
                tasks,
                forwarder: Mutex::new(None),
                events_stop: CancellationToken::new(),
            }),
        };
        let weak = Arc::downgrade(&cascade.inner);
        let stop = cascade.inner.background.clone();
        if role == Role::All {
            // It runs tasks, so it is listed with the workers (queues: any).
            let info = worker::worker_info(
                &cascade.inner.worker_id,
                Vec::new(),
                self.labels.clone(),
                workers,
                cascade_store::WorkerRole::All,
            );
            let membership = tokio::spawn(worker::keep_registered(
                weak.clone(),
                info,
                heartbeat_interval,
                stop.clone(),
            ));
            *cascade.inner.membership.lock().unwrap_or_else(|p| p.into_inner()) = Some(membership);
            cascade.inner.events.publish(Event::Worker(WorkerEvent {
                kind: WorkerEventKind::Joined,
                worker: cascade.inner.worker_id.clone(),
                timestamp: Utc::now(),
            }));
        }
        // The background loops stop at shutdown even in the middle of a
        // round (a cron tick being fired, a notification being handled):
        // nothing of theirs happens once `shutdown` has returned.
        let tasks = &cascade.inner.tasks;
        if role != Role::Worker {
            spawn_until_stopped(tasks, &stop, leases::keep_leases(weak.clone(), stop.clone()));
            spawn_until_stopped(tasks, &stop, cron::run_cron(weak.clone(), stop.clone()));
        }
        if distributed && role != Role::Worker {
            // Schedulers elect the one that fires cron ticks and reaps leases.
            spawn_until_stopped(
                tasks,
                &stop,
                leader::run_leader(
                    weak.clone(),
                    heartbeat_interval,
                    heartbeat_interval * 3,
                    stop.clone(),
                ),
            );
        }
        if distributed {
            spawn_until_stopped(
                tasks,
                &stop,
                bridge::run_listener(weak.clone(), role, stop.clone()),
            );
        }
        if let Some(outbox_rx) = outbox_rx {
            // Stopped last, once the events of the shutdown itself are out.
            let forwarder = tokio::spawn(bridge::forward_events(
                weak.clone(),
                outbox_rx,
                cascade.inner.events_stop.clone(),
            ));
            *cascade.inner.forwarder.lock().unwrap_or_else(|p| p.into_inner()) = Some(forwarder);
        }
        if distributed && role != Role::Worker {
            // Notifications normally carry every update; the fallback can be
            // slow. An all-in-one engine needs it only for the tasks of jobs
            // it took over from a scheduler that still run on workers.
            spawn_until_stopped(
                tasks,
                &stop,
                reconcile(
                    weak.clone(),
                    (poll_interval * 5).max(Duration::from_secs(2)),
                    stop.clone(),
                ),
            );
        }
        if role == Role::Worker {
            let (drained, drained_rx) = oneshot::channel();
            *cascade
                .inner
                .worker_drained
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(drained_rx);
            let config = WorkerConfig {
                queues: self
                    .queues
                    .unwrap_or_else(|| vec![cascade_ir::DEFAULT_QUEUE.to_owned()]),
                labels: self.labels,
                capacity: workers,
                heartbeat_interval,
                poll_interval,
                task_lease: heartbeat_interval * 3,
                cancel_grace,
                store_outage_timeout,
            };
            // It drains at shutdown rather than stopping mid-round.
            tasks.spawn(worker::run_worker(weak, config, cancels_rx, stop, drained));
        }
        Ok(cascade)
    }
}

/// Spawns a background loop onto `tasks`, dropped wherever it is once `stop`
/// fires: in-flight store calls are abandoned (a transaction is rolled back),
/// so the shutdown that awaits `tasks` never waits on one.
fn spawn_until_stopped(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = work => {}
        }
    });
}

/// The polling fallback of a scheduler in distributed mode: re-reads the
/// tasks of its active jobs (for an all-in-one engine, of those with tasks on
/// worker processes) and applies what workers committed, in case a
/// notification was missed.
async fn reconcile(engine: std::sync::Weak<Inner>, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        if cascade.send(Command::ActiveJobs { reply }).await.is_err() {
            return;
        }
        let Ok(jobs) = answer.await else { return };
        for job_id in jobs {
            if let Err(error) = cascade.sync_tasks_from_store(job_id).await {
                tracing::warn!(%error, "reconcile: could not read tasks");
                if matches!(error, Error::ShutDown) {
                    return;
                }
                break;
            }
        }
    }
}

/// The runner count: `CASCADE_WORKERS` (given as `from_env`) wins over the
/// builder, which wins over 2 × the CPU cores.
fn resolve_workers(configured: Option<usize>, from_env: Option<String>) -> Result<usize> {
    if let Some(value) = from_env {
        return match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::Config {
                reason: format!(
                    "CASCADE_WORKERS=`{value}` is not a positive whole number; set it to e.g. 8 or unset it"
                ),
            }),
        };
    }
    match configured {
        Some(0) => Err(Error::Config {
            reason: "workers(0) would never run a task; use at least 1".to_owned(),
        }),
        Some(n) => Ok(n),
        None => Ok(2 * std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// Resolves when `events` (of one job) says the job ended, missed events, or closed.
async fn job_ended(events: &mut EventStream) {
    use tokio_stream::StreamExt;
    while let Some(event) = events.next().await {
        match event {
            Event::Job(job) if job.status.is_terminal() => return,
            Event::Lagged { .. } => return,
            _ => {}
        }
    }
    // The bus closed (shutdown): the caller's next store read decides.
    std::future::pending::<()>().await;
}

/// The engine: register DAGs, trigger jobs, wait for them, watch their events.
///
/// Cheap to clone; every clone drives the same engine.
///
/// ```no_run
/// use cascade_core::{dag, Cascade, JobStatus, TaskContext, TaskResult};
/// use serde_json::json;
///
/// async fn hello(ctx: TaskContext) -> TaskResult {
///     Ok(json!({ "greeting": format!("hello {}", ctx.params()["name"]) }))
/// }
///
/// dag! {
///     name: greet,
///     tasks: { hello: { run: hello } }
/// }
///
/// # #[tokio::main] async fn main() -> cascade_core::Result<()> {
/// let cascade = Cascade::builder().build().await?;
/// let dag = cascade.register_dag(greet()).await?;
/// let job = cascade.trigger_job(dag.id, "manual", json!({ "name": "world" })).await?;
/// let job = cascade.wait_for_job(job.id).await?;
/// assert_eq!(job.status, JobStatus::Success);
/// cascade.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Cascade {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    store: Store,
    /// The jobs the scheduler runs now.
    active: ActiveJobs,
    reader: StoreReader,
    events: EventBus,
    commands: mpsc::Sender<Command>,
    registry: RwLock<HashMap<DagId, Arc<RegisteredDag>>>,
    worker_id: String,
    workers: usize,
    lease: Duration,
    shutdown_timeout: Duration,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    /// Stops the lease keeper and the cron loop.
    pub(crate) background: CancellationToken,
    /// Wakes the cron loop when schedules change (register, pause, unpause).
    pub(crate) cron_wakeup: Notify,
    role: Role,
    /// Wakes the worker loop: tasks were queued, or the listener reconnected.
    pub(crate) worker_wakeup: Notify,
    /// Jobs whose running attempts the worker must cancel.
    pub(crate) worker_cancels: mpsc::UnboundedSender<JobId>,
    /// Whether this engine fires cron ticks and reaps leases (always on SQLite).
    pub(crate) is_leader: AtomicBool,
    /// Completes when the worker loop has drained.
    worker_drained: Mutex<Option<oneshot::Receiver<()>>>,
    /// An all-in-one engine's registration in the `workers` table.
    membership: Mutex<Option<JoinHandle<()>>>,
    /// The background loops, the worker loop and the callbacks in flight,
    /// which the shutdown awaits.
    pub(crate) tasks: TaskTracker,
    /// Sends this engine's events to the other nodes (distributed mode).
    forwarder: Mutex<Option<JoinHandle<()>>>,
    /// Stops the event forwarder once it has sent what is queued.
    events_stop: CancellationToken,
    /// What task results and job params may be.
    pub(crate) limits: Limits,
    /// How often a task may be lost before the reaper fails it.
    pub(crate) max_lost: u32,
}

impl Drop for Inner {
    fn drop(&mut self) {
        owner::retire(&self.worker_id);
    }
}

impl Inner {
    /// Publishes an event that came from another node to local subscribers only.
    pub(crate) fn events_local(&self, event: Event) {
        self.events.publish_local(event);
    }
}

impl Cascade {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Cascade { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Publishes an event to local subscribers and, in distributed mode, to
    /// the other nodes.
    pub(crate) fn publish(&self, event: Event) {
        self.inner.events.publish(event);
    }

    pub(crate) async fn send_command(&self, command: Command) -> Result<()> {
        self.send(command).await
    }

    /// This engine's role.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Whether this engine leads: fires cron ticks and reaps lapsed leases.
    pub(crate) fn is_leader(&self) -> bool {
        self.inner.is_leader.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The jobs this engine's scheduler runs now.
    pub(crate) fn running_jobs(&self) -> Vec<JobId> {
        self.inner.active.ids()
    }

    /// The lease on the jobs this engine runs.
    pub(crate) fn lease(&self) -> Duration {
        self.inner.lease
    }

    fn lease_until(&self, now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
        now + chrono::Duration::from_std(self.inner.lease).unwrap_or(chrono::Duration::seconds(30))
    }

    /// Starts configuring an engine.
    pub fn builder() -> CascadeBuilder {
        CascadeBuilder::default()
    }

    /// The store, for queries: DAGs, jobs, task executions, attempts,
    /// workers. Read-only: every change goes through the engine's verbs.
    ///
    /// ```compile_fail
    /// # async fn f(cascade: cascade_core::Cascade, job_id: cascade_core::JobId) {
    /// // Writes are the engine's: the store it hands out has none.
    /// cascade.store().release_jobs("engine-a").await;
    /// # }
    /// ```
    pub fn store(&self) -> &StoreReader {
        &self.inner.reader
    }

    /// The store with its write verbs, for the engine's own parts.
    pub(crate) fn raw_store(&self) -> &Store {
        &self.inner.store
    }

    /// How many attempts run at once.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// This engine's worker id, as recorded on the task executions it runs.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// Stores the DAG (a new version when its IR changed) and makes its
    /// handlers available to this engine. Unfinished jobs of the DAG left by an
    /// earlier engine (a crash, a shutdown) are resumed.
    #[tracing::instrument(skip(self, dag), fields(dag = %dag.name()), err)]
    pub async fn register_dag(&self, dag: Dag) -> Result<DagRecord> {
        let missing = dag.missing_handlers();
        if !missing.is_empty() {
            return Err(Error::MissingHandlers {
                dag: dag.name().to_owned(),
                missing,
            });
        }
        let ir = dag.plan().ir();
        let record = self
            .inner
            .store
            .upsert_dag(NewDag {
                name: ir.name.clone(),
                description: ir.description.clone(),
                schedule: ir.schedule.clone(),
                definition: dag.ir_json().to_owned(),
                hash: dag.hash().to_owned(),
            })
            .await?;
        let registered = Arc::new(RegisteredDag::new(record.clone(), dag));
        self.registry_write().insert(record.id, Arc::clone(&registered));
        tracing::info!(dag.id = %record.id, version = record.version, "dag registered");
        if self.inner.role != Role::Worker {
            self.adopt_orphaned_jobs(&[record.id], true).await?;
            self.inner.cron_wakeup.notify_one();
        }
        Ok(record)
    }

    /// Takes over the unfinished jobs of these DAGs that no engine runs: left
    /// by a shutdown, by a process that died and whose lease lapsed, or by a
    /// process of this host that no longer exists (at once, whatever its
    /// lease says). Each is claimed in the store first, so two engines never
    /// both resume one. With `announce`, jobs still held by a lease of
    /// another engine are logged at `warn` with when they can be taken over.
    pub(crate) async fn adopt_orphaned_jobs(&self, dag_ids: &[DagId], announce: bool) -> Result<usize> {
        let store = &self.inner.store;
        let me = self.inner.worker_id.as_str();
        let mut adopted = 0;
        loop {
            let now = Utc::now();
            let jobs = store.list_claimable_jobs(dag_ids, now, ADOPT_PAGE).await?;
            let n = jobs.len();
            let mut progressed = false;
            for job in jobs {
                if self
                    .adopt(job, |job| store.claim_job(job.id, me, self.lease_until(now), now))
                    .await?
                {
                    progressed = true;
                    adopted += 1;
                }
            }
            if n < ADOPT_PAGE as usize || !progressed {
                break;
            }
        }
        // Jobs under another engine's live lease: taken over at once when
        // that engine is provably gone, otherwise left to their lease.
        let held = store
            .list_unfinished_jobs(Some(dag_ids), Some(me), ADOPT_PAGE)
            .await?;
        let mut waiting = 0usize;
        for job in held {
            let now = Utc::now();
            let (Some(owner), Some(lease_end)) = (job.owner.clone(), job.lease_expires_at) else {
                continue;
            };
            if lease_end < now {
                continue;
            }
            if owner::is_gone(&owner) {
                let job_id = job.id;
                if self
                    .adopt(job, |job| {
                        store.take_over_job(job.id, &owner, me, self.lease_until(now))
                    })
                    .await?
                {
                    tracing::info!(job.id = %job_id, previous_owner = %owner, "took the job over at once: its owner, a process of this host, no longer exists");
                    adopted += 1;
                }
            } else if announce {
                waiting += 1;
                if waiting <= ANNOUNCE_MAX {
                    let secs = (lease_end - now).num_seconds().max(0);
                    tracing::warn!(job.id = %job.id, owner = %owner, "job {} is owned by {owner}, whose lease ends in {secs} s; if that engine is gone, the job will be taken over then", job.id);
                }
            }
        }
        if waiting > ANNOUNCE_MAX {
            tracing::warn!(
                more = waiting - ANNOUNCE_MAX,
                "more unfinished jobs of these DAGs are owned by other engines; they are taken over when their leases end"
            );
        }
        Ok(adopted)
    }

    /// Claims `job` with `claim` (unless it is unregistered or already active
    /// here) and resumes it; whether it was resumed.
    async fn adopt<F, Fut>(&self, job: Job, claim: F) -> Result<bool>
    where
        F: FnOnce(&Job) -> Fut,
        Fut: std::future::Future<Output = cascade_store::Result<bool>>,
    {
        let Some(current) = self.registered(job.dag_id) else {
            return Ok(false);
        };
        if self.is_active(job.id).await? || !claim(&job).await? {
            return Ok(false);
        }
        let dag = self.dag_for_version(&current, job.dag_version).await?;
        let tasks = self.inner.store.list_task_executions_for_job(job.id).await?;
        tracing::info!(job.id = %job.id, previous_owner = ?job.owner, "resuming an unfinished job");
        let (job_id, cancel_requested) = (job.id, job.cancel_requested_at.is_some());
        self.send(Command::Resume { job, dag, tasks }).await?;
        if cancel_requested {
            // Its cancel was requested while its previous owner ran it.
            self.cancel_if_active(job_id).await;
        }
        Ok(true)
    }

    /// Unfinished jobs, of any DAG, that no engine runs: unowned (their
    /// engine shut down), whose owner's lease ended, or whose owner was a
    /// process of this host that no longer exists. An engine resumes such a
    /// job when it registers the job's DAG; a program that runs once can
    /// report or adopt them before it exits. At most 10,000, oldest first.
    pub async fn orphaned_jobs(&self) -> Result<Vec<OrphanedJob>> {
        let now = Utc::now();
        let jobs = self
            .inner
            .store
            .list_unfinished_jobs(None, Some(&self.inner.worker_id), 10_000)
            .await?;
        Ok(jobs
            .into_iter()
            .filter_map(|job| owner::orphan_reason(&job, now).map(|reason| OrphanedJob { job, reason }))
            .collect())
    }

    /// The ids of the DAGs registered in this engine.
    pub(crate) fn registered_ids(&self) -> Vec<DagId> {
        let registry = self
            .inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.keys().copied().collect()
    }

    /// The registered DAGs that have a cron schedule.
    pub(crate) fn scheduled_dags(&self) -> Vec<Arc<RegisteredDag>> {
        let registry = self
            .inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry
            .values()
            .filter(|d| d.plan.schedule().is_some())
            .cloned()
            .collect()
    }

    /// The registered DAG for the version a job was created with: the
    /// current one, or the stored older definition with today's handlers.
    pub(crate) async fn dag_for_version(
        &self,
        current: &Arc<RegisteredDag>,
        version: i32,
    ) -> Result<Arc<RegisteredDag>> {
        if version == current.record.version {
            return Ok(Arc::clone(current));
        }
        let stored = self
            .inner
            .store
            .get_dag_version(current.record.id, version)
            .await?;
        let plan = Dag::from_ir_json(&stored.definition)?.plan_arc();
        Ok(Arc::new(RegisteredDag::with_plan(
            current.record.clone(),
            plan,
            current.dag.clone(),
        )))
    }

    async fn is_active(&self, job_id: JobId) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::State { job_id, reply }).await?;
        Ok(answer.await.ok().flatten().is_some())
    }

    fn registry_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<DagId, Arc<RegisteredDag>>> {
        self.inner
            .registry
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn registered(&self, dag_id: DagId) -> Option<Arc<RegisteredDag>> {
        let registry = self
            .inner
            .registry
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.get(&dag_id).cloned()
    }

    async fn send(&self, command: Command) -> Result<()> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| Error::ShutDown)
    }

    /// Creates a job of a registered DAG and starts it. `trigger` says what
    /// started it (`"manual"`, `"cron"`, `"api"`…); `params` reach every task
    /// as [`TaskContext::params`](crate::TaskContext::params).
    #[tracing::instrument(skip(self, params), err)]
    pub async fn trigger_job(&self, dag_id: DagId, trigger: &str, params: Value) -> Result<Job> {
        self.trigger(dag_id, trigger, params, None).await
    }

    /// Like [`Cascade::trigger_job`], but triggering twice with the same
    /// `idempotency_key` returns the job of the first call and starts nothing.
    #[tracing::instrument(skip(self, params), err)]
    pub async fn trigger_job_with_key(
        &self,
        dag_id: DagId,
        trigger: &str,
        params: Value,
        idempotency_key: &str,
    ) -> Result<Job> {
        self.trigger(dag_id, trigger, params, Some(idempotency_key.to_owned()))
            .await
    }

    pub(crate) async fn trigger(
        &self,
        dag_id: DagId,
        trigger: &str,
        params: Value,
        key: Option<String>,
    ) -> Result<Job> {
        if self.inner.commands.is_closed() {
            return Err(Error::ShutDown);
        }
        limits::check_value(&params, self.inner.limits)
            .map_err(|violation| Error::InvalidParams { violation })?;
        let Some(dag) = self.registered(dag_id) else {
            return Err(match self.inner.store.get_dag(dag_id).await {
                Ok(record) => Error::DagNotRegistered {
                    dag_id,
                    name: record.name,
                },
                Err(error) if error.kind() == ErrorKind::NotFound => Error::DagNotFound { dag_id },
                Err(error) => Error::Store(error),
            });
        };
        let tasks = dag
            .plan
            .tasks()
            .iter()
            .map(|task| NewTask {
                task_id: task.id.clone(),
                queue: task.queue.clone(),
                status: TaskStatus::Pending,
                attempt: 0,
                fencing_token: 0,
                started_at: None,
                priority: task.priority,
                labels: task.labels.clone(),
            })
            .collect();
        let schedules = self.inner.role != Role::Worker;
        let created = self
            .inner
            .store
            .create_job(NewJob {
                dag_id,
                dag_version: dag.record.version,
                status: JobStatus::Pending,
                trigger: trigger.to_owned(),
                params,
                idempotency_key: key,
                tasks,
                owner: schedules.then(|| self.inner.worker_id.clone()),
                lease_expires_at: schedules.then(|| self.lease_until(Utc::now())),
            })
            .await?;
        if created.created && !schedules {
            // A worker schedules nothing: a scheduler takes the job over.
            if let Err(error) = self
                .inner
                .store
                .notify(bridge::JOBS_CHANNEL, &created.job.id.to_string())
                .await
            {
                tracing::warn!(%error, "could not announce the job; a scheduler finds it by polling");
            }
        } else if created.created {
            self.send(Command::Start {
                job: created.job.clone(),
                dag,
            })
            .await?;
        }
        Ok(created.job)
    }

    /// Waits until the job is terminal (success, failed or cancelled) and
    /// returns it as committed.
    ///
    /// A job this engine runs is awaited in memory. A job run elsewhere (by
    /// another process, or not yet taken over after a crash) costs next to
    /// nothing while it runs: the wait wakes on the job's events, which cross
    /// processes in distributed mode, and otherwise re-reads the store with a
    /// backoff that grows to [`WAIT_POLL_MAX`].
    #[tracing::instrument(skip(self), err)]
    pub async fn wait_for_job(&self, job_id: JobId) -> Result<Job> {
        // Subscribed before the first read, so an end in between is not missed.
        let mut events = self.subscribe(Topic::Job(job_id));
        let mut delay = WAIT_POLL_MIN;
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(Command::Wait { job_id, reply }).await?;
            // `true` once a job run here ended; `false` at once when it is not run here.
            let ran_here = answer.await.unwrap_or(false);
            let job = self.get_job(job_id).await?;
            if job.status.is_terminal() {
                return Ok(job);
            }
            if ran_here {
                delay = WAIT_POLL_MIN;
                continue;
            }
            tokio::select! {
                () = job_ended(&mut events) => {}
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(WAIT_POLL_MAX);
        }
    }

    async fn get_job(&self, job_id: JobId) -> Result<Job> {
        self.inner
            .store
            .get_job(job_id)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => Error::JobNotFound { job_id },
                _ => Error::Store(error),
            })
    }

    /// The state of a job: from memory while this engine runs it, else from the store.
    pub async fn job_state(&self, job_id: JobId) -> Result<JobState> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::State { job_id, reply }).await?;
        if let Ok(Some(state)) = answer.await {
            return Ok(state);
        }
        let details = self
            .inner
            .store
            .get_job_with_details(job_id)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => Error::JobNotFound { job_id },
                _ => Error::Store(error),
            })?;
        Ok(JobState {
            job_id,
            dag_id: details.job.dag_id,
            status: details.job.status,
            active: false,
            cancelling: false,
            tasks: details
                .tasks
                .into_iter()
                .map(|t| TaskState {
                    task_id: t.task_id,
                    status: t.status,
                    attempt: t.attempt,
                })
                .collect(),
        })
    }

    /// Cancels a job: running tasks get their cancellation signal, handlers
    /// that ignore it are dropped after the grace period, and every unfinished
    /// task and the job become `cancelled`. Returns once that is committed.
    ///
    /// Idempotent: cancelling a job that is cancelled or being cancelled is
    /// `Ok`. A job that already succeeded or failed is left as it is and
    /// [`Error::JobAlreadyFinished`] says so.
    #[tracing::instrument(skip(self), err)]
    pub async fn cancel_job(&self, job_id: JobId) -> Result<()> {
        // The request is stored first: whichever node runs the job, a worker
        // whose notifications are down included, finds it in the job's row.
        self.inner
            .store
            .request_cancel(job_id)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => Error::JobNotFound { job_id },
                _ => Error::Store(error),
            })?;
        self.sync_before_cancel(job_id).await;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Cancel { job_id, reply }).await?;
        match answer.await.unwrap_or(CancelReply::NotActive) {
            CancelReply::Cancelled => Ok(()),
            CancelReply::AlreadyFinished(status) => Err(Error::JobAlreadyFinished { job_id, status }),
            CancelReply::NotActive => self.cancel_elsewhere(job_id).await,
        }
    }

    /// Tells this engine's scheduler what workers committed for a job's tasks
    /// (claims, outcomes), as read from the store: the fallback for
    /// notifications that were lost or have not arrived yet.
    pub(crate) async fn sync_tasks_from_store(&self, job_id: JobId) -> Result<()> {
        let rows = self.inner.store.list_task_executions_for_job(job_id).await?;
        for row in rows {
            if matches!(row.status, TaskStatus::Pending) {
                continue;
            }
            self.send(Command::Remote(RemoteTaskUpdate::from_row(row)))
                .await?;
        }
        Ok(())
    }

    /// Before a scheduler cancels a job, it learns of claims whose
    /// announcement has not reached it yet, so that it cancels those tasks
    /// as running (on their workers) rather than as queued.
    async fn sync_before_cancel(&self, job_id: JobId) {
        if self.inner.role == Role::Scheduler
            && let Err(error) = self.sync_tasks_from_store(job_id).await
        {
            tracing::warn!(%error, job.id = %job_id, "could not read the job's tasks before cancelling");
        }
    }

    /// Cancels a job this engine runs, for a request that came from another node.
    pub(crate) async fn cancel_if_active(&self, job_id: JobId) {
        self.sync_before_cancel(job_id).await;
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Cancel { job_id, reply }).await.is_ok() {
            // The requester watches the store; nothing to report back here.
            drop(answer);
        }
    }

    /// Cancels a job this engine does not run: asks its owner if another live
    /// engine owns it, and otherwise cancels it in the store directly.
    async fn cancel_elsewhere(&self, job_id: JobId) -> Result<()> {
        let job = self.get_job(job_id).await?;
        let now = Utc::now();
        let owned_elsewhere = job.owner.as_deref().is_some_and(|o| o != self.inner.worker_id)
            && job.lease_expires_at.is_some_and(|lease| lease > now)
            && self.inner.store.backend() == Backend::Postgres;
        if !owned_elsewhere || job.status.is_terminal() {
            return self.cancel_in_store(job_id).await;
        }
        self.inner
            .store
            .notify(bridge::CANCEL_CHANNEL, &job_id.to_string())
            .await?;
        // The owner cancels within its grace period; wait for the stored outcome.
        let deadline = tokio::time::Instant::now() + self.inner.lease + DEFAULT_CANCEL_GRACE * 2;
        loop {
            let job = self.get_job(job_id).await?;
            match job.status {
                JobStatus::Cancelled => return Ok(()),
                status @ (JobStatus::Success | JobStatus::Failed) => {
                    return Err(Error::JobAlreadyFinished { job_id, status });
                }
                _ if tokio::time::Instant::now() > deadline => {
                    // The owner did not answer: it is gone or stuck.
                    return self.cancel_in_store(job_id).await;
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    /// Cancels a job that no engine here is running, directly in the store:
    /// its unfinished tasks and the job in one batch. A task that moved
    /// meanwhile (a worker claimed or finished it) makes the job's
    /// transition lose, as a job never finishes with an unfinished task:
    /// the job is then read again and the cancel tried again.
    async fn cancel_in_store(&self, job_id: JobId) -> Result<()> {
        const TRIES: u32 = 10;
        for _ in 0..TRIES {
            if self.try_cancel_in_store(job_id).await? {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(Error::CancelContended { job_id })
    }

    /// One try of [`Cascade::cancel_in_store`]; `Ok(false)` if the job's
    /// transition lost its compare-and-set.
    async fn try_cancel_in_store(&self, job_id: JobId) -> Result<bool> {
        let details = self
            .inner
            .store
            .get_job_with_details(job_id)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => Error::JobNotFound { job_id },
                _ => Error::Store(error),
            })?;
        match details.job.status {
            JobStatus::Cancelled => return Ok(true),
            status @ (JobStatus::Success | JobStatus::Failed) => {
                return Err(Error::JobAlreadyFinished { job_id, status });
            }
            JobStatus::Pending | JobStatus::Running => {}
        }
        let now = Utc::now();
        let batch = TransitionBatch {
            tasks: details
                .tasks
                .iter()
                .filter(|t| !t.status.is_terminal())
                .map(|t| TaskTransition {
                    job_id,
                    task_id: t.task_id.clone(),
                    from: t.status,
                    fencing_token: t.fencing_token,
                    to: TaskStatus::Cancelled,
                    changes: TaskChanges {
                        error: Some("cancelled".to_owned()),
                        completed_at: Some(now),
                        ..TaskChanges::default()
                    },
                })
                .collect(),
            jobs: vec![JobTransition {
                job_id,
                from: details.job.status,
                to: JobStatus::Cancelled,
                error: Some("cancelled".to_owned()),
                at: now,
                owner: None,
            }],
            ..TransitionBatch::default()
        };
        let outcome = self.inner.store.commit_transitions(&batch).await?;
        Ok(outcome.jobs.first() == Some(&true))
    }

    /// Re-runs a failed job from the point of failure (Airflow's "clear"):
    /// its failed, upstream-failed, skipped and cancelled tasks run again with
    /// a fresh retry budget, while succeeded tasks keep their results and do
    /// not run again. Returns the job, running again.
    ///
    /// The fresh budget is stored with each task, so it holds on whichever
    /// node runs the task and across restarts. The re-run job is run by this
    /// engine, or on a worker-only node ([`Role::Worker`]) by one of the
    /// schedulers, like a triggered job.
    #[tracing::instrument(skip(self), err)]
    pub async fn retry_job(&self, job_id: JobId) -> Result<Job> {
        let details = self
            .inner
            .store
            .get_job_with_details(job_id)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => Error::JobNotFound { job_id },
                _ => Error::Store(error),
            })?;
        if details.job.status != JobStatus::Failed {
            return Err(Error::JobNotFailed {
                job_id,
                status: details.job.status,
            });
        }
        let dag_id = details.job.dag_id;
        let Some(current) = self.registered(dag_id) else {
            return Err(Error::DagNotRegistered {
                dag_id,
                name: details.dag.name,
            });
        };
        let now = Utc::now();
        let batch = TransitionBatch {
            tasks: details
                .tasks
                .iter()
                .filter(|t| t.status != TaskStatus::Success)
                .map(|t| TaskTransition {
                    job_id,
                    task_id: t.task_id.clone(),
                    from: t.status,
                    fencing_token: t.fencing_token,
                    to: TaskStatus::Pending,
                    changes: TaskChanges {
                        clear_outcome: true,
                        // The retry budget starts again from here, on
                        // whichever node runs the task and across restarts.
                        retry_base: Some(t.attempt),
                        ..TaskChanges::default()
                    },
                })
                .collect(),
            jobs: vec![JobTransition {
                job_id,
                from: JobStatus::Failed,
                to: JobStatus::Running,
                error: None,
                at: now,
                owner: None,
            }],
            ..TransitionBatch::default()
        };
        let outcome = self.inner.store.commit_transitions(&batch).await?;
        if outcome.jobs.first() != Some(&true) {
            let job = self.get_job(job_id).await?;
            return Err(Error::JobNotFailed {
                job_id,
                status: job.status,
            });
        }
        tracing::info!(job.id = %job_id, rerun_tasks = batch.tasks.len(), "re-running a failed job");
        // The job is running again and unowned (a finished job releases its
        // owner). A worker-only node leaves it to the schedulers; any other
        // runs it itself unless a scheduler adopted it first.
        if self.inner.role == Role::Worker {
            self.inner
                .store
                .notify(bridge::JOBS_CHANNEL, &job_id.to_string())
                .await?;
            return self.get_job(job_id).await;
        }
        let won = self
            .inner
            .store
            .claim_job(job_id, &self.inner.worker_id, self.lease_until(now), now)
            .await?;
        let job = self.get_job(job_id).await?;
        if won {
            let tasks = self.inner.store.list_task_executions_for_job(job_id).await?;
            let dag = self.dag_for_version(&current, job.dag_version).await?;
            self.send(Command::Resume {
                job: job.clone(),
                dag,
                tasks,
            })
            .await?;
        }
        Ok(job)
    }

    /// Pauses a DAG's cron schedule: no tick fires until it is unpaused.
    /// Manual triggers still work.
    pub async fn pause_dag(&self, dag_id: DagId) -> Result<DagRecord> {
        self.set_paused(dag_id, true).await
    }

    /// Unpauses a DAG's cron schedule. Missed ticks fire as the DAG's
    /// `catchup` setting says: only the latest one by default, all with
    /// `catchup: true`.
    pub async fn unpause_dag(&self, dag_id: DagId) -> Result<DagRecord> {
        self.set_paused(dag_id, false).await
    }

    async fn set_paused(&self, dag_id: DagId, paused: bool) -> Result<DagRecord> {
        let record = self
            .inner
            .store
            .set_dag_paused(dag_id, paused)
            .await
            .map_err(|error| match error.kind() {
                ErrorKind::NotFound => Error::DagNotFound { dag_id },
                _ => Error::Store(error),
            })?;
        tracing::info!(dag.id = %dag_id, paused, "dag schedule paused state changed");
        self.inner.cron_wakeup.notify_one();
        Ok(record)
    }

    /// A stream of the events of a topic: a job, a DAG, workers, or all.
    /// Events are published after the state they report is committed, in
    /// commit order.
    pub fn subscribe(&self, topic: Topic) -> EventStream {
        self.inner.events.subscribe(topic)
    }

    /// Stops the engine: no new attempts start, running ones may finish for up
    /// to the shutdown timeout and their results are committed. Attempts still
    /// running then are stopped and stay `running` in the store; the next
    /// engine that registers their DAG resumes them.
    ///
    /// The cron loop, the lease keeper, the leader's reaper and the
    /// notification listener stop at once, even in the middle of a round, and
    /// callbacks already running are awaited (again up to the shutdown
    /// timeout): once this returns, nothing of this engine fires, adopts or
    /// calls back.
    #[tracing::instrument(skip(self), err)]
    pub async fn shutdown(&self) -> Result<()> {
        let handle = {
            let mut guard = self
                .inner
                .scheduler
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            guard.take()
        };
        let Some(handle) = handle else { return Ok(()) };
        self.inner.background.cancel();
        let drained = self
            .inner
            .worker_drained
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(drained) = drained
            && tokio::time::timeout(self.inner.shutdown_timeout, drained)
                .await
                .is_err()
        {
            tracing::warn!(
                "worker did not drain within the shutdown timeout; its tasks return to the queue when their leases lapse"
            );
        }
        let (reply, answer) = oneshot::channel();
        if self
            .send(Command::Shutdown {
                timeout: self.inner.shutdown_timeout,
                reply,
            })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
        if let Err(error) = handle.await {
            tracing::error!(%error, "scheduler task ended abnormally");
        }
        // The background loops have stopped or are stopping; callbacks of
        // the last commits may still run. Jobs are released only after this,
        // so that no loop can take one up again behind the release.
        self.inner.tasks.close();
        if tokio::time::timeout(self.inner.shutdown_timeout, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = self.inner.tasks.len(),
                "callbacks still running after the shutdown timeout are left behind"
            );
        }
        // Unfinished jobs are free for the next engine at once, without waiting
        // for their leases to lapse.
        match self.inner.store.release_jobs(&self.inner.worker_id).await {
            Ok(released) if released > 0 => tracing::info!(
                released,
                "released unfinished jobs; an engine that registers their DAG resumes them (Cascade::orphaned_jobs lists them)"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not release jobs; they resume once their leases lapse")
            }
        }
        let membership = self
            .inner
            .membership
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(membership) = membership {
            // Its last heartbeat has finished, so none can follow the deregistration.
            let _ = tokio::time::timeout(self.inner.shutdown_timeout, membership).await;
            if let Err(error) = self.inner.store.deregister_worker(&self.inner.worker_id).await {
                tracing::warn!(%error, "could not deregister the worker");
            }
        }
        if self.inner.role == Role::All {
            self.inner.events.publish(Event::Worker(WorkerEvent {
                kind: WorkerEventKind::Left,
                worker: self.inner.worker_id.clone(),
                timestamp: Utc::now(),
            }));
        }
        self.inner.events_stop.cancel();
        let forwarder = self
            .inner
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(forwarder) = forwarder
            && tokio::time::timeout(self.inner.shutdown_timeout, forwarder)
                .await
                .is_err()
        {
            tracing::warn!("could not share the last events with other nodes in time");
        }
        owner::retire(&self.inner.worker_id);
        tracing::info!(worker = %self.inner.worker_id, "cascade engine stopped");
        Ok(())
    }

    /// Runs until the process gets SIGTERM or Ctrl-C, then shuts down
    /// gracefully: what a worker or scheduler process's `main` ends with.
    pub async fn run_until_shutdown(&self) -> Result<()> {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        self.shutdown().await
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_count_resolution() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(resolve_workers(None, None).ok(), Some(2 * cores));
        assert_eq!(resolve_workers(Some(3), None).ok(), Some(3));
        assert_eq!(resolve_workers(Some(3), Some("12".into())).ok(), Some(12));
        assert_eq!(resolve_workers(None, Some(" 5 ".into())).ok(), Some(5));
        for bad in ["0", "-1", "many", ""] {
            let error = resolve_workers(Some(3), Some(bad.into()))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(error.contains("CASCADE_WORKERS"), "{error}");
        }
        assert!(matches!(
            resolve_workers(Some(0), None),
            Err(Error::Config { .. })
        ));
    }
}
