//! The worker: claims queued tasks from PostgreSQL (one `FOR UPDATE SKIP
//! LOCKED` statement, up to its free capacity), runs them on its runner pool
//! under a lease that its heartbeat extends, and commits each outcome with a
//! compare-and-set on the attempt's fencing token.
//!
//! A worker never decides what runs next: the job's scheduler does, from the
//! outcomes workers commit. A worker that cannot reach the database stops
//! claiming, and once its lease has surely lapsed it stops its attempts,
//! because the reaper will have handed them to someone else. The outcomes it
//! already has are held and committed when the database answers again (for
//! up to the store outage timeout): the fencing token decides whether they
//! still count.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cascade_ir::TaskKind;
use cascade_store::{
    ClaimRequest, ClaimedTask, Notification, TaskAttempt, TaskChanges, TaskStatus, TaskTransition,
    TransitionBatch, WorkerInfo, WorkerRole,
};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, DONE_CHANNEL};
use crate::engine::{Cascade, Inner};
use crate::events::{Event, TaskEvent, TaskEventKind, WorkerEvent, WorkerEventKind};
use crate::runner::{self, Attempt, Completion, Outcome};
use crate::scheduler::{Command, RegisteredDag, RemoteTaskUpdate, retry_decision};
use crate::shell;
use crate::state::{RowCommit, StateManager};
use crate::task::{Lineage, TaskContext};
use crate::{DagId, JobId};

/// A worker's settings.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    pub(crate) queues: Vec<String>,
    pub(crate) labels: Vec<String>,
    pub(crate) capacity: usize,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) poll_interval: Duration,
    /// How long a claim lasts without a heartbeat.
    pub(crate) task_lease: Duration,
    pub(crate) cancel_grace: Duration,
    /// How long outcomes are held and committed again while the store is away.
    pub(crate) store_outage_timeout: Duration,
}

struct Running {
    /// The task execution's row id, whose lease the heartbeat extends.
    row_id: i64,
    dag: Arc<RegisteredDag>,
    task: usize,
    token: i64,
    attempt: u32,
    /// Attempts made before the latest re-run, outside the retry budget.
    retry_base: u32,
    started_at: DateTime<Utc>,
    cancellation: CancellationToken,
    abort: AbortHandle,
    /// Its job was cancelled: whatever the attempt returns, it ends `cancelled`.
    job_cancelled: bool,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(30))
}

/// Runs the worker until `stop` fires (then drains) or the engine is gone.
pub(crate) async fn run_worker(
    engine: Weak<Inner>,
    config: WorkerConfig,
    mut cancels: mpsc::UnboundedReceiver<JobId>,
    stop: CancellationToken,
    drained: tokio::sync::oneshot::Sender<()>,
) {
    let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
        return;
    };
    let id = cascade.worker_id().to_owned();
    let info = worker_info(
        &id,
        config.queues.clone(),
        config.labels.clone(),
        config.capacity,
        WorkerRole::Worker,
    );
    if let Err(error) = cascade.raw_store().register_worker(&info).await {
        tracing::error!(%error, "could not register the worker; it will retry with its heartbeat");
    }
    cascade.publish(Event::Worker(WorkerEvent {
        kind: WorkerEventKind::Joined,
        worker: id.clone(),
        timestamp: Utc::now(),
    }));
    tracing::info!(worker = %id, queues = ?config.queues, capacity = config.capacity, "worker started");
    let wakeup = Arc::clone(cascade.inner());
    let state = StateManager::with_outage_timeout(cascade.raw_store().clone(), config.store_outage_timeout);
    drop(cascade);

    let (reports, mut completions) = mpsc::channel::<Command>(1024);
    let mut running: HashMap<(JobId, usize), Running> = HashMap::new();
    // Outcomes being committed, each batch in a task of its own that holds it
    // through a store outage; the heartbeat keeps their rows' leases (by row
    // id) meanwhile, so that nobody takes back a task whose outcome is known.
    let mut committing: JoinSet<()> = JoinSet::new();
    let mut committing_rows: HashMap<tokio::task::Id, Vec<i64>> = HashMap::new();
    let mut versions: HashMap<(DagId, i32), Arc<RegisteredDag>> = HashMap::new();
    let mut last_heartbeat = Instant::now();
    let mut database_ok = true;
    let mut stopping = false;
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    let mut poll = tokio::time::interval(config.poll_interval);
    let mut rng = Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64 | 1;
    loop {
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        if !stopping && database_ok && running.len() < config.capacity {
            // Bounded, so that a database that stops answering cannot hold the
            // loop (and the heartbeat that watches the lease) hostage. Each
            // attempt is tracked as soon as it starts, so one that started
            // before the bound cut the claim short is still watched.
            let claimed = tokio::time::timeout(
                config.task_lease,
                claim(&cascade, &config, &id, &mut running, &mut versions, &reports),
            )
            .await
            .unwrap_or_else(|_| {
                database_ok = false;
                Ok(())
            });
            if let Err(error) = claimed {
                tracing::warn!(%error, "claiming failed; retrying after the next poll");
            }
        }
        if stopping && running.is_empty() && committing.is_empty() {
            break;
        }
        drop(cascade);
        tokio::select! {
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                tracing::info!(running = running.len(), "worker draining");
            }
            Some(command) = completions.recv() => {
                // Every attempt that has finished by now is committed in one batch.
                let mut finished = Vec::new();
                let mut next = Some(command);
                while let Some(command) = next.take() {
                    if let Command::Completed(completion) = command {
                        let key = (completion.job_id, completion.task);
                        if running.get(&key).is_some_and(|r| r.token == completion.token)
                            && let Some(attempt) = running.remove(&key)
                        {
                            finished.push((attempt, completion));
                        }
                    }
                    next = completions.try_recv().ok();
                }
                let rows = outcomes(&id, finished, &mut rng);
                if !rows.is_empty()
                    && let Some(cascade) = engine.upgrade().map(Cascade::from_inner)
                {
                    let row_ids = rows.iter().map(|(row_id, ..)| *row_id).collect();
                    let rows = rows.into_iter().map(|(_, dag_id, number, t)| (dag_id, number, t)).collect();
                    let state = state.clone();
                    let task = committing.spawn(async move { finish(&cascade, &state, rows).await });
                    committing_rows.insert(task.id(), row_ids);
                }
            }
            Some(done) = committing.join_next_with_id(), if !committing.is_empty() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(error) => {
                        tracing::error!(%error, "committing outcomes ended abnormally; the tasks return to the queue when their leases lapse");
                        error.id()
                    }
                };
                committing_rows.remove(&task);
            }
            Some(job_id) = cancels.recv() => {
                for ((job, _), attempt) in &mut running {
                    if *job == job_id {
                        attempt.job_cancelled = true;
                        attempt.cancellation.cancel();
                        let abort = attempt.abort.clone();
                        let grace = config.cancel_grace;
                        tokio::spawn(async move {
                            tokio::time::sleep(grace).await;
                            abort.abort();
                        });
                    }
                }
            }
            () = wakeup.worker_wakeup.notified() => {}
            _ = poll.tick() => {}
            _ = heartbeat.tick() => {
                let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else { return };
                let now = Utc::now();
                // A heartbeat that cannot finish within its interval counts as
                // failed: the lease clock keeps running while the network is down.
                let beat = tokio::time::timeout(
                    config.heartbeat_interval,
                    // Only the attempts running here keep their leases: a row
                    // whose claim or outcome got lost lapses and is re-queued.
                    cascade.raw_store().heartbeat_worker_tasks(
                        &id,
                        now,
                        now + chrono(config.task_lease),
                        &running
                            .values()
                            .map(|r| r.row_id)
                            .chain(committing_rows.values().flatten().copied())
                            .collect::<Vec<_>>(),
                    ),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(cascade_store::StoreError::Unavailable {
                        url: cascade.raw_store().url().to_owned(),
                        attempts: 1,
                        source: "heartbeat timed out".into(),
                    })
                });
                match beat {
                    Ok(_) => {
                        last_heartbeat = Instant::now();
                        // Cancels are stored requests: found here even when
                        // their notification never arrived.
                        let mut jobs: Vec<JobId> = running.keys().map(|(job, _)| *job).collect();
                        jobs.sort_unstable();
                        jobs.dedup();
                        // Bounded like the heartbeat: a connection that dies
                        // now must not hold up the lease watch.
                        let requests = tokio::time::timeout(
                            config.heartbeat_interval,
                            cascade.raw_store().jobs_with_cancel_requests(&jobs),
                        )
                        .await;
                        match requests.unwrap_or_else(|_| Ok(Vec::new())) {
                            Ok(cancelled) => {
                                for job_id in cancelled {
                                    if running.iter().any(|((job, _), r)| *job == job_id && !r.job_cancelled) {
                                        let _ = cascade.inner().worker_cancels.send(job_id);
                                    }
                                }
                            }
                            Err(error) => tracing::warn!(%error, "could not read cancel requests"),
                        }
                        if !database_ok {
                            tracing::info!("database reachable again; claiming resumes");
                        }
                        database_ok = true;
                    }
                    Err(error) if error.kind() == cascade_store::ErrorKind::NotFound => {
                        // Declared lost while we were away: register again.
                        let _ = cascade.raw_store().register_worker(&info).await;
                    }
                    Err(error) => {
                        database_ok = false;
                        tracing::warn!(%error, "heartbeat failed; not claiming until the database answers");
                        if last_heartbeat.elapsed() > config.task_lease && !running.is_empty() {
                            tracing::error!(
                                running = running.len(),
                                "lease lapsed without a heartbeat; stopping attempts that others now own"
                            );
                            for (_, attempt) in running.drain() {
                                attempt.cancellation.cancel();
                                attempt.abort.abort();
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(cascade) = engine.upgrade().map(Cascade::from_inner) {
        if let Err(error) = cascade.raw_store().deregister_worker(&id).await {
            tracing::warn!(%error, "could not deregister the worker");
        }
        cascade.publish(Event::Worker(WorkerEvent {
            kind: WorkerEventKind::Left,
            worker: id.clone(),
            timestamp: Utc::now(),
        }));
    }
    tracing::info!(worker = %id, "worker stopped");
    let _ = drained.send(());
}

/// How this process describes itself in the `workers` table.
pub(crate) fn worker_info(
    id: &str,
    queues: Vec<String>,
    labels: Vec<String>,
    capacity: usize,
    role: WorkerRole,
) -> WorkerInfo {
    WorkerInfo {
        id: id.to_owned(),
        host: id.split(':').next().unwrap_or("localhost").to_owned(),
        pid: i64::from(std::process::id()),
        queues,
        labels,
        capacity: i32::try_from(capacity).unwrap_or(i32::MAX),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        role,
    }
}

/// Keeps an all-in-one engine ([`Role::All`](crate::Role::All)) registered
/// in the `workers` table until `stop` fires: registers, then heartbeats every
/// `interval`, and registers again if its row was removed. The heartbeat
/// extends no task lease: the tasks of an all-in-one engine run under its job
/// leases. The engine deregisters on shutdown.
pub(crate) async fn keep_registered(
    engine: Weak<Inner>,
    info: WorkerInfo,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut registered = false;
    loop {
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let store = cascade.raw_store();
        let beat = if registered {
            let now = Utc::now();
            store
                .heartbeat_worker_tasks(&info.id, now, now, &[])
                .await
                .map(drop)
        } else {
            store.register_worker(&info).await.map(drop)
        };
        match beat {
            Ok(()) => registered = true,
            Err(error) if error.kind() == cascade_store::ErrorKind::NotFound => {
                tracing::info!("worker row gone; registering again");
                registered = false;
                continue;
            }
            Err(error) => tracing::warn!(%error, registered, "worker heartbeat failed; retrying"),
        }
        drop(cascade);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Claims up to the free capacity and starts what it got, adding each
/// attempt to `running` as it starts.
async fn claim(
    cascade: &Cascade,
    config: &WorkerConfig,
    id: &str,
    running: &mut HashMap<(JobId, usize), Running>,
    versions: &mut HashMap<(DagId, i32), Arc<RegisteredDag>>,
    reports: &mpsc::Sender<Command>,
) -> crate::Result<()> {
    let dag_ids = cascade.registered_ids();
    if dag_ids.is_empty() {
        return Ok(());
    }
    let busy = running.len();
    let now = Utc::now();
    let claimed = cascade
        .raw_store()
        .claim_tasks(&ClaimRequest {
            worker: id.to_owned(),
            queues: config.queues.clone(),
            dag_ids,
            limit: i64::try_from(config.capacity - busy).unwrap_or(0),
            now,
            lease_until: now + chrono(config.task_lease),
            labels: config.labels.clone(),
        })
        .await?;
    let mut announce = TransitionBatch::default();
    for task in claimed {
        match start(cascade, task, versions, reports, &mut announce).await {
            Ok(Some((key, attempt))) => {
                running.insert(key, attempt);
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "could not start a claimed task; its lease will return it"),
        }
    }
    if !announce.notifications.is_empty()
        && let Err(error) = cascade.raw_store().commit_transitions(&announce).await
    {
        tracing::warn!(%error, "could not announce claims; schedulers learn of them by polling");
    }
    Ok(())
}

async fn start(
    cascade: &Cascade,
    claimed: ClaimedTask,
    versions: &mut HashMap<(DagId, i32), Arc<RegisteredDag>>,
    reports: &mpsc::Sender<Command>,
    announce: &mut TransitionBatch,
) -> crate::Result<Option<((JobId, usize), Running)>> {
    let execution = claimed.execution;
    let Some(current) = cascade.registered(claimed.dag_id) else {
        return Ok(None);
    };
    let dag = match versions.get(&(claimed.dag_id, claimed.dag_version)) {
        Some(dag) => Arc::clone(dag),
        None => {
            let dag = cascade.dag_for_version(&current, claimed.dag_version).await?;
            versions.insert((claimed.dag_id, claimed.dag_version), Arc::clone(&dag));
            dag
        }
    };
    let Some(t) = dag.plan.task_index(&execution.task_id) else {
        tracing::error!(task.id = %execution.task_id, "claimed a task its dag version does not have");
        return Ok(None);
    };
    let plan_task = &dag.plan.tasks()[t];
    let dependencies: Vec<String> = plan_task
        .dependencies
        .iter()
        .map(|&d| plan_task_id(&dag, d))
        .collect();
    let upstream = if dependencies.is_empty() {
        std::collections::HashMap::new()
    } else {
        cascade
            .raw_store()
            .upstream_results(execution.job_id, &dependencies)
            .await?
            .into_iter()
            .filter_map(|(task, result)| result.map(|r| (Arc::from(task.as_str()), Arc::new(r))))
            .collect()
    };
    let attempt = execution.attempt.max(1);
    let cancellation = CancellationToken::new();
    let context = TaskContext::new(
        execution.job_id,
        claimed.dag_id,
        Arc::clone(&dag.name),
        Arc::clone(&dag.task_ids[t]),
        attempt,
        Arc::new(claimed.params),
        upstream,
        cancellation.clone(),
    )
    .with_lineage(Lineage {
        plan: Arc::clone(&dag.plan),
        task: t,
        store: cascade.raw_store().clone(),
    });
    let handler = dag.handler_at(t);
    let started_at = execution.started_at.unwrap_or_else(Utc::now);
    let abort = runner::spawn(
        Attempt {
            job_id: execution.job_id,
            task: t,
            token: execution.fencing_token,
            handler,
            context,
            timeout: plan_task.timeout,
            cancellation: cancellation.clone(),
            limits: cascade.inner().limits,
        },
        reports.clone(),
    );
    tracing::info!(job.id = %execution.job_id, task.id = %execution.task_id, attempt, token = execution.fencing_token, "task claimed and started");
    let update = RemoteTaskUpdate {
        job_id: execution.job_id,
        task_id: execution.task_id.clone(),
        token: execution.fencing_token,
        attempt,
        status: TaskStatus::Running,
        error: None,
        next_attempt_at: None,
    };
    announce.notifications.push(Notification {
        channel: DONE_CHANNEL.to_owned(),
        payload: bridge::done_payload(&update),
        after_task: None,
    });
    cascade.publish(Event::Task(TaskEvent {
        kind: TaskEventKind::Started,
        job_id: execution.job_id,
        dag_id: claimed.dag_id,
        task_id: execution.task_id,
        status: TaskStatus::Running,
        attempt,
        error: None,
        timestamp: started_at,
    }));
    Ok(Some((
        (execution.job_id, t),
        Running {
            row_id: execution.id,
            dag,
            task: t,
            token: execution.fencing_token,
            attempt,
            retry_base: execution.retry_base,
            started_at,
            cancellation,
            abort,
            job_cancelled: false,
        },
    )))
}

fn plan_task_id(dag: &RegisteredDag, index: usize) -> String {
    dag.task_ids[index].to_string()
}

/// The transitions that record the outcomes of finished attempts, each with
/// its task's row id, DAG and attempt number. An attempt stopped by a lapsed
/// lease or a shutdown has none: the reaper settles its row.
fn outcomes(
    worker: &str,
    finished: Vec<(Running, Completion)>,
    rng: &mut u64,
) -> Vec<(i64, DagId, u32, TaskTransition)> {
    let mut rows = Vec::new();
    for (attempt, completion) in finished {
        let Running {
            row_id,
            dag,
            task: t,
            token,
            attempt: number,
            retry_base,
            started_at,
            job_cancelled,
            ..
        } = attempt;
        let plan_task = &dag.plan.tasks()[t];
        let task_id = dag.task_ids[t].to_string();
        let job_id = completion.job_id;
        let finished_at = completion.finished_at;
        let (to, result, error, output, next_attempt_at) = match completion.outcome {
            // Its job was cancelled: the attempt ends cancelled, as on an
            // all-in-one engine, and this worker settles its own row.
            _ if job_cancelled => (
                TaskStatus::Cancelled,
                None,
                Some("cancelled".to_owned()),
                None,
                None,
            ),
            Outcome::Success(value) => {
                let output =
                    matches!(plan_task.kind, TaskKind::Shell { .. }).then(|| shell::success_output(&value));
                (TaskStatus::Success, Some(value), None, output, None)
            }
            Outcome::Failed(error) => {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                let roll = (*rng >> 11) as f64 / (1u64 << 53) as f64;
                let (to, next) = retry_decision(plan_task, &error, number, retry_base, finished_at, roll);
                (
                    to,
                    None,
                    Some(error.message().to_owned()),
                    error.output().map(str::to_owned),
                    next,
                )
            }
            // Stopped by a lapsed lease or a shutdown: the reaper settles the row.
            Outcome::Aborted => continue,
        };
        let transition = TaskTransition {
            job_id,
            task_id: task_id.clone(),
            from: TaskStatus::Running,
            fencing_token: token,
            to,
            changes: TaskChanges {
                result,
                error: error.clone(),
                completed_at: (to != TaskStatus::UpForRetry).then_some(finished_at),
                next_attempt_at,
                record_attempt: Some(TaskAttempt {
                    job_id,
                    task_id,
                    attempt: number,
                    status: to,
                    worker: Some(worker.to_owned()),
                    error,
                    output,
                    started_at: Some(started_at),
                    finished_at: Some(finished_at),
                }),
                ..TaskChanges::default()
            },
        };
        rows.push((row_id, dag.record.id, number, transition));
    }
    rows
}

/// Commits the outcomes of finished attempts in one transaction; each is
/// applied only if this worker still holds its task (fencing token). While
/// the store is away the batch is held and tried again, for up to the store
/// outage timeout. If the store refuses the batch for a reason that belongs
/// to one row (a value it cannot hold), each outcome is committed on its own
/// instead and the refused one becomes a failure of its task, so that the
/// others stand and no task goes back to the queue over it. A success
/// refused because the job's cancel was requested meanwhile is committed as
/// `cancelled`.
async fn finish(cascade: &Cascade, state: &StateManager, rows: Vec<(DagId, u32, TaskTransition)>) {
    let committed = commit_outcomes(state, rows).await;
    let refused = publish_outcomes(cascade, committed);
    if refused.is_empty() {
        return;
    }
    // A success the store refused with the current fencing token: the job's
    // cancel was requested while the attempt ran (and before this worker
    // heard of it). The attempt ends cancelled, settled by this worker.
    let mut job_ids: Vec<JobId> = refused.iter().map(|(_, _, t)| t.job_id).collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    let requested = match cascade.raw_store().jobs_with_cancel_requests(&job_ids).await {
        Ok(requested) => requested,
        Err(error) => {
            tracing::warn!(%error, "could not read the cancel requests of refused outcomes; their tasks return when their leases lapse");
            return;
        }
    };
    let rows: Vec<(DagId, u32, TaskTransition)> = refused
        .into_iter()
        .filter_map(|(dag_id, number, transition)| {
            if requested.contains(&transition.job_id) {
                Some((dag_id, number, cancelled_instead(transition)))
            } else {
                tracing::warn!(
                    job.id = %transition.job_id, task.id = %transition.task_id, token = transition.fencing_token,
                    "late completion rejected: this worker lost the task (its fencing token is stale); the newer attempt stands"
                );
                None
            }
        })
        .collect();
    if !rows.is_empty() {
        let committed = commit_outcomes(state, rows).await;
        publish_outcomes(cascade, committed);
    }
}

/// The outcome of an attempt whose success the store refused because its
/// job's cancel was requested: the same attempt, ended `cancelled`.
fn cancelled_instead(mut transition: TaskTransition) -> TaskTransition {
    let error = Some("cancelled".to_owned());
    transition.to = TaskStatus::Cancelled;
    transition.changes.result = None;
    transition.changes.error = error.clone();
    if let Some(record) = &mut transition.changes.record_attempt {
        record.status = TaskStatus::Cancelled;
        record.error = error;
        record.output = None;
    }
    transition
}

/// Commits outcomes in one batch, held through a store outage; each is
/// applied only if this worker still holds its task (fencing token), and
/// announced only if it was.
async fn commit_outcomes(
    state: &StateManager,
    rows: Vec<(DagId, u32, TaskTransition)>,
) -> Vec<(DagId, u32, TaskTransition, bool)> {
    // Each outcome is announced only if its compare-and-set wins: a worker
    // that lost its lease never announces a change the database refused.
    let announce = |index: usize, number: u32, transition: &TaskTransition| {
        Notification::after_task(
            DONE_CHANNEL,
            bridge::done_payload(&update_of(number, transition)),
            index,
        )
    };
    let batch = TransitionBatch {
        tasks: rows.iter().map(|(_, _, t)| t.clone()).collect(),
        jobs: Vec::new(),
        notifications: rows
            .iter()
            .enumerate()
            .map(|(i, (_, n, t))| announce(i, *n, t))
            .collect(),
    };
    match state.commit_whole(&batch).await {
        Ok(outcome) => rows
            .into_iter()
            .zip(outcome.tasks)
            .map(|((dag_id, number, transition), won)| (dag_id, number, transition, won))
            .collect(),
        Err(error) if error.is_transient() || error.kind() == cascade_store::ErrorKind::Unavailable => {
            tracing::error!(
                %error, tasks = batch.tasks.len(),
                "could not commit outcomes before the store outage timeout; the tasks return to the queue when their leases lapse"
            );
            Vec::new()
        }
        Err(error) => {
            tracing::warn!(
                error = %crate::state::error_chain(&error), tasks = batch.tasks.len(),
                "the store refused a batch of outcomes; committing each on its own"
            );
            let numbers: HashMap<(JobId, String), (DagId, u32)> = rows
                .iter()
                .map(|(dag_id, number, t)| ((t.job_id, t.task_id.clone()), (*dag_id, *number)))
                .collect();
            let results = state
                .commit_each(rows.into_iter().map(|(_, _, t)| t).collect(), |t| {
                    let number = numbers.get(&(t.job_id, t.task_id.clone())).map_or(0, |n| n.1);
                    vec![announce(0, number, t)]
                })
                .await;
            results
                .into_iter()
                .flatten()
                .filter_map(|RowCommit { transition, won, .. }| {
                    let &(dag_id, number) = numbers.get(&(transition.job_id, transition.task_id.clone()))?;
                    Some((dag_id, number, transition, won))
                })
                .collect()
        }
    }
}

/// Publishes the events of the outcomes that won. Returns the successes the
/// store refused, for the caller to find out why; other losers are logged.
fn publish_outcomes(
    cascade: &Cascade,
    committed: Vec<(DagId, u32, TaskTransition, bool)>,
) -> Vec<(DagId, u32, TaskTransition)> {
    let mut refused = Vec::new();
    for (dag_id, number, transition, won) in committed {
        let update = update_of(number, &transition);
        if !won {
            if transition.to == TaskStatus::Success {
                refused.push((dag_id, number, transition));
            } else {
                tracing::warn!(
                    job.id = %update.job_id, task.id = %update.task_id, token = update.token,
                    "late completion rejected: this worker lost the task (its fencing token is stale); the newer attempt stands"
                );
            }
            continue;
        }
        let kind = match update.status {
            TaskStatus::Success => TaskEventKind::Succeeded,
            TaskStatus::UpForRetry => TaskEventKind::RetryScheduled,
            TaskStatus::Cancelled => TaskEventKind::Cancelled,
            _ => TaskEventKind::Failed,
        };
        tracing::info!(job.id = %update.job_id, task.id = %update.task_id, attempt = update.attempt, status = %update.status, "task finished");
        cascade.publish(Event::Task(TaskEvent {
            kind,
            job_id: update.job_id,
            dag_id,
            task_id: update.task_id,
            status: update.status,
            attempt: update.attempt,
            error: update.error,
            timestamp: transition
                .changes
                .record_attempt
                .as_ref()
                .and_then(|a| a.finished_at)
                .unwrap_or_else(Utc::now),
        }));
    }
    refused
}

/// What the job's scheduler is told of a committed outcome.
fn update_of(attempt: u32, transition: &TaskTransition) -> RemoteTaskUpdate {
    RemoteTaskUpdate {
        job_id: transition.job_id,
        task_id: transition.task_id.clone(),
        token: transition.fencing_token,
        attempt,
        status: transition.to,
        error: transition.changes.error.clone(),
        next_attempt_at: transition.changes.next_attempt_at,
    }
}
