//! The StateManager: commits the scheduler's transitions to the store, many
//! per transaction (group commit), and the public snapshot types of active
//! jobs.

use std::time::Duration;

use cascade_store::{BatchOutcome, ErrorKind, Store, StoreError, TransitionBatch};
use serde::{Deserialize, Serialize};

use crate::{DagId, JobId, JobStatus, TaskStatus};

/// How often a commit that failed because the store was unavailable is tried
/// again before the batch is given up.
const COMMIT_ATTEMPTS: u32 = 6;

/// Commits batches of transitions. The scheduler hands it everything that
/// happened while the previous commit was in flight, so under load one
/// transaction carries many transitions; nothing is acted on before its
/// commit returns.
#[derive(Debug, Clone)]
pub(crate) struct StateManager {
    store: Store,
}

impl StateManager {
    pub(crate) fn new(store: Store) -> Self {
        StateManager { store }
    }

    /// The store it commits to.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Commits one batch in one transaction, retrying with bounded backoff while
    /// the store is unavailable.
    pub(crate) async fn commit(&self, batch: &TransitionBatch) -> Result<BatchOutcome, StoreError> {
        if batch.tasks.is_empty() && batch.jobs.is_empty() {
            return Ok(BatchOutcome {
                tasks: Vec::new(),
                jobs: Vec::new(),
            });
        }
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.store.commit_transitions(batch).await {
                Ok(outcome) => return Ok(outcome),
                Err(error) if error.kind() == ErrorKind::Unavailable && attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "store unavailable; retrying the commit");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
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
