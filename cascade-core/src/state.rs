//! The StateManager: commits the scheduler's transitions to the store, many
//! per transaction (group commit), and the public snapshot types of active
//! jobs.

use std::time::Duration;

use cascade_store::{
    BatchOutcome, ErrorKind, JobId, Notification, Store, StoreError, TaskAttempt, TaskChanges,
    TaskTransition, TransitionBatch, UncommittedJobs,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::limits::{self, MAX_ERROR_BYTES};
use crate::{DagId, JobStatus, TaskStatus};

/// The longest pause between two tries of a commit while the store is away.
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a continuing outage is logged again.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Commits batches of transitions. The scheduler hands it everything that
/// happened while the previous commit was in flight, so under load one
/// transaction carries many transitions; nothing is acted on before its
/// commit returns.
#[derive(Debug, Clone)]
pub(crate) struct StateManager {
    store: Store,
    /// How long a commit is held and tried again while the store is away
    /// (transient errors) before it is given up.
    outage_timeout: Duration,
}

/// What a commit did: the compare-and-sets that won, and the jobs whose
/// transitions were not committed when the batch had to be split.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) outcome: BatchOutcome,
    pub(crate) failed: Vec<UncommittedJobs>,
}

/// A task transition committed on its own: as given, or, when the store
/// refused it, replaced by a failure of its attempt (`replaced`); `won` is
/// its compare-and-set.
#[derive(Debug)]
pub(crate) struct RowCommit {
    pub(crate) transition: TaskTransition,
    pub(crate) won: bool,
    pub(crate) replaced: bool,
}

impl StateManager {
    #[cfg(test)]
    pub(crate) fn new(store: Store) -> Self {
        Self::with_outage_timeout(store, crate::engine::DEFAULT_STORE_OUTAGE_TIMEOUT)
    }

    pub(crate) fn with_outage_timeout(store: Store, outage_timeout: Duration) -> Self {
        StateManager {
            store,
            outage_timeout,
        }
    }

    /// The store it commits to.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Commits one batch in one transaction, retrying with bounded backoff
    /// while the store is unavailable. If the store refuses the batch for
    /// another reason (a value it cannot hold, a constraint), that reason
    /// belongs to one job's rows: the batch is then committed job by job, the
    /// jobs that fail are reported in [`Committed::failed`], and the batch's
    /// notifications are sent on their own afterwards.
    pub(crate) async fn commit(&self, batch: &TransitionBatch) -> Result<Committed, StoreError> {
        if batch.tasks.is_empty() && batch.jobs.is_empty() {
            return Ok(Committed {
                outcome: BatchOutcome::default(),
                failed: Vec::new(),
            });
        }
        let error = match self.commit_whole(batch).await {
            Ok(outcome) => {
                return Ok(Committed {
                    outcome,
                    failed: Vec::new(),
                });
            }
            Err(error) if error.kind() == ErrorKind::Unavailable => return Err(error),
            Err(error) => error,
        };
        let mut job_ids: Vec<JobId> = batch
            .tasks
            .iter()
            .map(|t| t.job_id)
            .chain(batch.jobs.iter().map(|j| j.job_id))
            .collect();
        job_ids.sort_unstable();
        job_ids.dedup();
        let split = if job_ids.len() == 1 {
            Committed {
                outcome: BatchOutcome {
                    tasks: vec![false; batch.tasks.len()],
                    jobs: vec![false; batch.jobs.len()],
                },
                failed: vec![UncommittedJobs { job_ids, error }],
            }
        } else {
            tracing::warn!(
                error = %error_chain(&error), jobs = job_ids.len(),
                "the store refused a batch; committing it job by job to find the job at fault"
            );
            let split = self.store.commit_transitions_by_job(batch).await;
            Committed {
                outcome: split.outcome,
                failed: split.failed,
            }
        };
        if !batch.notifications.is_empty() {
            let notifications = TransitionBatch {
                notifications: batch.notifications.clone(),
                ..TransitionBatch::default()
            };
            if let Err(error) = self.store.commit_transitions(&notifications).await {
                tracing::warn!(%error, "could not send the notifications of a split batch; listeners poll");
            }
        }
        Ok(split)
    }

    /// Commits the batch in one transaction. While the store is away
    /// (transient errors: a restart, a failover, a dropped connection, a
    /// lock held by another process) the commit is held and tried again with
    /// backoff, for up to the outage timeout; nothing is acted on meanwhile.
    pub(crate) async fn commit_whole(&self, batch: &TransitionBatch) -> Result<BatchOutcome, StoreError> {
        let mut delay = Duration::from_millis(50);
        let mut outage: Option<(std::time::Instant, std::time::Instant)> = None;
        loop {
            match self.store.commit_transitions(batch).await {
                Ok(mut outcome) => {
                    if let Some((since, _)) = outage {
                        tracing::info!(after = ?since.elapsed(), "store reachable again; the held commit went through");
                        self.settle_ambiguous(batch, &mut outcome).await;
                    }
                    return Ok(outcome);
                }
                Err(error) if error.is_transient() => {
                    let now = std::time::Instant::now();
                    let (since, logged) = outage.get_or_insert((now, now));
                    if since.elapsed() >= self.outage_timeout {
                        tracing::error!(%error, outage = ?since.elapsed(), "the store stayed away longer than store_outage_timeout; giving the commit up");
                        return Err(error);
                    }
                    if *logged == now || logged.elapsed() >= OUTAGE_LOG_EVERY {
                        *logged = now;
                        tracing::warn!(%error, outage = ?since.elapsed(), timeout = ?self.outage_timeout, "store unavailable; holding the commit until it returns");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(OUTAGE_BACKOFF_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// After a try whose outcome is unknown (the connection dropped while it
    /// ran), a compare-and-set that now loses may have won in that earlier
    /// try: a row already in the transition's target state, with its token,
    /// is this batch's own write and counts as won.
    async fn settle_ambiguous(&self, batch: &TransitionBatch, outcome: &mut BatchOutcome) {
        for (i, transition) in batch.tasks.iter().enumerate() {
            if outcome.tasks.get(i).copied().unwrap_or(true) {
                continue;
            }
            let Ok(Some(row)) = self
                .store
                .get_task_execution(transition.job_id, &transition.task_id)
                .await
            else {
                continue;
            };
            let token = transition
                .changes
                .fencing_token
                .unwrap_or(transition.fencing_token);
            if row.status == transition.to
                && row.fencing_token == token
                && transition.changes.attempt.is_none_or(|a| a == row.attempt)
                && let Some(won) = outcome.tasks.get_mut(i)
            {
                *won = true;
            }
        }
        for (i, transition) in batch.jobs.iter().enumerate() {
            if outcome.jobs.get(i).copied().unwrap_or(true) {
                continue;
            }
            if let Ok(job) = self.store.get_job(transition.job_id).await
                && job.status == transition.to
                && let Some(won) = outcome.jobs.get_mut(i)
            {
                *won = true;
            }
        }
    }

    /// Commits task transitions one at a time, each with the notifications
    /// `notify` gives for it, so that one bad row fails only its own task: a
    /// transition out of `running` that the store refuses for a reason of
    /// its own is replaced by a failure of that attempt, whose error says
    /// why its outcome could not be stored. Once the store is unavailable
    /// the rest are not tried. `None` for a transition not committed (the
    /// store is unavailable, or refused the failure too).
    pub(crate) async fn commit_each(
        &self,
        transitions: Vec<TaskTransition>,
        notify: impl Fn(&TaskTransition) -> Vec<Notification>,
    ) -> Vec<Option<RowCommit>> {
        let mut results = Vec::with_capacity(transitions.len());
        let mut available = true;
        for transition in transitions {
            if !available {
                results.push(None);
                continue;
            }
            let alone = |transition: &TaskTransition| TransitionBatch {
                tasks: vec![transition.clone()],
                jobs: Vec::new(),
                notifications: notify(transition),
            };
            let error = match self.commit_whole(&alone(&transition)).await {
                Ok(outcome) => {
                    results.push(Some(RowCommit {
                        won: outcome.tasks.first().copied().unwrap_or(false),
                        transition,
                        replaced: false,
                    }));
                    continue;
                }
                Err(error) => error,
            };
            if error.kind() == ErrorKind::Unavailable {
                tracing::error!(%error, "store unavailable; the remaining transitions are not committed");
                available = false;
                results.push(None);
                continue;
            }
            let Some(failure) = failure_instead(&transition, &error) else {
                tracing::error!(
                    job.id = %transition.job_id, task.id = %transition.task_id, error = %error_chain(&error),
                    "the store refused a task transition; dropped"
                );
                results.push(None);
                continue;
            };
            tracing::error!(
                job.id = %transition.job_id, task.id = %transition.task_id, error = %error_chain(&error),
                "the store refused a task's outcome; failing the task instead"
            );
            match self.commit_whole(&alone(&failure)).await {
                Ok(outcome) => results.push(Some(RowCommit {
                    won: outcome.tasks.first().copied().unwrap_or(false),
                    transition: failure,
                    replaced: true,
                })),
                Err(error) => {
                    tracing::error!(
                        job.id = %transition.job_id, task.id = %transition.task_id, error = %error_chain(&error),
                        "could not record the failure either; the task is left as it was"
                    );
                    available = error.kind() != ErrorKind::Unavailable;
                    results.push(None);
                }
            }
        }
        results
    }
}

/// An error with its causes, `a: b: c`: the store's own message names only
/// the operation, the database's reason is in the source.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The failure of an attempt to record instead of an outcome the store
/// refused: same row, same fencing token, `failed` with the store's reason
/// and no result. Only for transitions that end an attempt (out of
/// `running`).
pub(crate) fn failure_instead(transition: &TaskTransition, error: &StoreError) -> Option<TaskTransition> {
    if transition.from != TaskStatus::Running || transition.to == TaskStatus::Running {
        return None;
    }
    let message = limits::sanitize_text(
        format!("the task's outcome could not be stored: {}", error_chain(error)),
        MAX_ERROR_BYTES,
    );
    let finished_at = transition.changes.completed_at.unwrap_or_else(Utc::now);
    let record_attempt = transition
        .changes
        .record_attempt
        .as_ref()
        .map(|attempt| TaskAttempt {
            status: TaskStatus::Failed,
            error: Some(message.clone()),
            output: None,
            finished_at: attempt.finished_at.or(Some(finished_at)),
            ..attempt.clone()
        });
    Some(TaskTransition {
        job_id: transition.job_id,
        task_id: transition.task_id.clone(),
        from: TaskStatus::Running,
        fencing_token: transition.fencing_token,
        to: TaskStatus::Failed,
        changes: TaskChanges {
            error: Some(message),
            completed_at: Some(finished_at),
            record_attempt,
            ..TaskChanges::default()
        },
    })
}

/// The in-memory state of a job, from [`Cascade::job_state`](crate::Cascade::job_state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// The job.
    pub job_id: JobId,
    /// Its DAG.
    pub dag_id: DagId,
    /// The job's status.
    pub status: JobStatus,
    /// Whether this engine is running the job now (otherwise the state was read
    /// from the store).
    pub active: bool,
    /// Whether cancellation was requested and is in progress.
    pub cancelling: bool,
    /// Every task, in declaration order.
    pub tasks: Vec<TaskState>,
}

/// One task in a [`JobState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    /// The task id.
    pub task_id: String,
    /// Its status.
    pub status: TaskStatus,
    /// The current or last attempt (0 before the first).
    pub attempt: u32,
}

#[cfg(test)]
mod tests {
    use cascade_store::{NewDag, NewJob, NewTask};
    use serde_json::json;

    use super::*;

    /// Jobs of one task `t`, each `running` its first attempt with token 1.
    async fn running_jobs(store: &Store, n: usize) -> Vec<JobId> {
        let dag = store
            .upsert_dag(NewDag {
                name: "d".into(),
                description: String::new(),
                schedule: None,
                definition: "{}".into(),
                hash: "h".into(),
            })
            .await
            .unwrap();
        let mut jobs = Vec::new();
        for _ in 0..n {
            let task = NewTask {
                task_id: "t".into(),
                queue: "default".into(),
                status: TaskStatus::Running,
                attempt: 1,
                fencing_token: 1,
                started_at: None,
                priority: 0,
                labels: Vec::new(),
            };
            let job = NewJob {
                dag_id: dag.id,
                dag_version: dag.version,
                status: JobStatus::Running,
                trigger: "manual".into(),
                params: json!({}),
                idempotency_key: None,
                owner: None,
                lease_expires_at: None,
                tasks: vec![task],
            };
            jobs.push(store.create_job(job).await.unwrap().job.id);
        }
        jobs
    }

    fn outcome(job_id: JobId, error: Option<&str>) -> TaskTransition {
        let to = if error.is_some() {
            TaskStatus::Failed
        } else {
            TaskStatus::Success
        };
        TaskTransition {
            job_id,
            task_id: "t".into(),
            from: TaskStatus::Running,
            fencing_token: 1,
            to,
            changes: TaskChanges {
                result: error.is_none().then(|| json!(1)),
                error: error.map(str::to_owned),
                completed_at: Some(Utc::now()),
                record_attempt: Some(TaskAttempt {
                    job_id,
                    task_id: "t".into(),
                    attempt: 1,
                    status: to,
                    worker: Some("w".into()),
                    error: error.map(str::to_owned),
                    output: None,
                    started_at: None,
                    finished_at: Some(Utc::now()),
                }),
                ..TaskChanges::default()
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_row_fails_only_its_own_task() {
        let db = cascade_store::testing::sqlite_url();
        let store = Store::open(Some(&db.url)).await.unwrap();
        let jobs = running_jobs(&store, 3).await;
        let state = StateManager::new(store.clone());
        let batch = TransitionBatch {
            tasks: vec![
                outcome(jobs[0], None),
                outcome(jobs[1], Some("bad\u{0}byte")),
                outcome(jobs[2], None),
            ],
            ..TransitionBatch::default()
        };
        let committed = state.commit(&batch).await.unwrap();
        assert_eq!(committed.outcome.tasks, [true, false, true]);
        assert_eq!(committed.failed.len(), 1);
        assert_eq!(committed.failed[0].job_ids, [jobs[1]]);

        // The refused outcome, committed on its own, becomes a failure of
        // its task that says why.
        let results = state
            .commit_each(vec![batch.tasks[1].clone()], |_| Vec::new())
            .await;
        let [
            Some(RowCommit {
                transition,
                won: true,
                replaced: true,
            }),
        ] = results.as_slice()
        else {
            panic!("{results:?}");
        };
        assert_eq!(transition.to, TaskStatus::Failed);
        let rows = store.list_task_executions_for_job(jobs[1]).await.unwrap();
        let error = rows[0].error.clone().unwrap_or_default();
        assert_eq!(rows[0].status, TaskStatus::Failed);
        assert!(
            error.starts_with(&format!(
                "the task's outcome could not be stored: cannot store task_executions.error of job {}, task `t`: it contains a NUL character",
                jobs[1]
            )),
            "{error}"
        );
        let attempts = store.list_task_attempts(jobs[1], "t").await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].status, TaskStatus::Failed);
        assert_eq!(attempts[0].error.as_deref(), Some(error.as_str()));
        for job_id in [jobs[0], jobs[2]] {
            let rows = store.list_task_executions_for_job(job_id).await.unwrap();
            assert_eq!(rows[0].status, TaskStatus::Success);
        }
    }
}
