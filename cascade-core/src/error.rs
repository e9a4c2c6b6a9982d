//! The engine's error type.

use cascade_ir::IrError;
use cascade_store::StoreError;

use crate::{DagId, JobId, JobStatus, LimitViolation};

/// What went wrong in a call to the [`Cascade`](crate::Cascade) engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No DAG with this id exists in the store.
    #[error("dag {dag_id} not found: register it first with Cascade::register_dag")]
    DagNotFound {
        /// The id asked for.
        dag_id: DagId,
    },
    /// The DAG exists in the store but this engine has no handlers for it.
    #[error(
        "dag `{name}` ({dag_id}) is not registered in this engine: call Cascade::register_dag with it first"
    )]
    DagNotRegistered {
        /// The DAG's id.
        dag_id: DagId,
        /// The DAG's name.
        name: String,
    },
    /// No job with this id exists.
    #[error("job {job_id} not found")]
    JobNotFound {
        /// The id asked for.
        job_id: JobId,
    },
    /// The job already finished, so it cannot be cancelled.
    #[error("job {job_id} already finished with status {status}: there is nothing to cancel")]
    JobAlreadyFinished {
        /// The job.
        job_id: JobId,
        /// Its final status.
        status: JobStatus,
    },
    /// The job's tasks kept changing (workers claiming or finishing them)
    /// while it was being cancelled in the store; nothing was lost, and
    /// cancelling again usually succeeds.
    #[error("job {job_id}'s tasks kept changing while it was being cancelled; cancel it again")]
    CancelContended {
        /// The job.
        job_id: JobId,
    },
    /// The job is not failed, so it cannot be re-run.
    #[error("job {job_id} has status {status}: only a failed job can be retried")]
    JobNotFailed {
        /// The job.
        job_id: JobId,
        /// Its status.
        status: JobStatus,
    },
    /// The DAG names handlers or callbacks that no function is bound to.
    #[error(
        "dag `{dag}` names handlers with no function bound: {}; bind them with Dag::with_handler / Dag::with_callback",
        missing.join(", ")
    )]
    MissingHandlers {
        /// The DAG's name.
        dag: String,
        /// The unbound names.
        missing: Vec<String>,
    },
    /// The DAG definition is invalid.
    #[error("invalid dag definition")]
    InvalidDag(#[from] IrError),
    /// The builder was given a setting that cannot work.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong and what to do.
        reason: String,
    },
    /// The job's params break a limit on what the store holds (see
    /// [`CascadeBuilder::max_result_bytes`](crate::CascadeBuilder::max_result_bytes));
    /// no job was created.
    #[error("job params rejected: their JSON {violation}; fix them and trigger again")]
    InvalidParams {
        /// Which limit, and by how much.
        violation: LimitViolation,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine was shut down.
    #[error("the engine has shut down: build a new Cascade to continue")]
    ShutDown,
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
