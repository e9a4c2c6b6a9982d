//! What a task handler sees and returns: [`TaskContext`], [`TaskResult`],
//! [`TaskError`], and the context of callbacks.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{DagId, JobId};

/// What a task handler returns: its result, handed to the tasks that depend on
/// it, or an error.
pub type TaskResult = Result<Value, TaskError>;

/// What a callback returns. An error is logged and never changes a job's outcome.
pub type CallbackResult = Result<(), TaskError>;

/// A boxed, sendable future, as stored in handler tables.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a task failed, which decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// A failure that may pass on another attempt; retried while retries remain.
    Retryable,
    /// A failure no retry can fix; the task fails at once.
    Fatal,
    /// The attempt ran past its timeout.
    TimedOut,
    /// The attempt was cancelled.
    Cancelled,
    /// The handler panicked.
    Panicked,
}

/// The error a task handler returns.
///
/// `TaskError::new` makes a retryable error, [`TaskError::fatal`] one that is
/// never retried. `?` converts any `std::error::Error + Send + Sync + 'static`
/// into a retryable `TaskError` that keeps the original as its source.
///
/// ```
/// use cascade_core::{TaskError, TaskResult};
///
/// fn parse(input: &str) -> TaskResult {
///     let n: i64 = input.parse()?; // ParseIntError becomes a TaskError
///     if n < 0 {
///         return Err(TaskError::fatal("negative input"));
///     }
///     Ok(serde_json::json!(n))
/// }
/// assert!(parse("x").is_err());
/// assert_eq!(parse("-1").unwrap_err().message(), "negative input");
/// ```
pub struct TaskError {
    kind: TaskErrorKind,
    message: String,
    output: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl TaskError {
    /// A retryable error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind(TaskErrorKind::Retryable, message)
    }

    /// An error that is never retried.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::with_kind(TaskErrorKind::Fatal, message)
    }

    /// An error of the given kind.
    pub fn with_kind(kind: TaskErrorKind, message: impl Into<String>) -> Self {
        TaskError {
            kind,
            message: message.into(),
            output: None,
            source: None,
        }
    }

    /// The kind.
    pub fn kind(&self) -> TaskErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Attaches captured output (a command's stdout and stderr), stored with
    /// the attempt.
    pub fn with_output(mut self, output: impl Into<String>) -> Self {
        self.output = Some(output.into());
        self
    }

    /// The captured output, if any.
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// Whether another attempt may help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            TaskErrorKind::Retryable | TaskErrorKind::TimedOut | TaskErrorKind::Panicked
        )
    }

    /// The underlying error, when this one was converted with `?`.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// The same error with its message and output rewritten (kind and source kept).
    pub(crate) fn map_text(
        mut self,
        message: impl FnOnce(String) -> String,
        output: impl FnOnce(String) -> String,
    ) -> Self {
        self.message = message(self.message);
        self.output = self.output.map(output);
        self
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E> From<E> for TaskError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        TaskError {
            kind: TaskErrorKind::Retryable,
            message,
            output: None,
            source: Some(Box::new(error)),
        }
    }
}

/// Everything a task handler gets: ids, the attempt number, the job's
/// parameters, its dependencies' results, a stable idempotency key and a
/// cancellation signal. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    job_id: JobId,
    dag_id: DagId,
    dag_name: Arc<str>,
    task_id: Arc<str>,
    attempt: u32,
    params: Arc<Value>,
    upstream: HashMap<Arc<str>, Arc<Value>>,
    idempotency_key: String,
    cancellation: CancellationToken,
}

impl TaskContext {
    /// Builds a context; the engine does this for every attempt. Public so
    /// that handlers can be unit-tested without an engine.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: JobId,
        dag_id: DagId,
        dag_name: Arc<str>,
        task_id: Arc<str>,
        attempt: u32,
        params: Arc<Value>,
        upstream: HashMap<Arc<str>, Arc<Value>>,
        cancellation: CancellationToken,
    ) -> Self {
        let idempotency_key = format!("{job_id}:{task_id}");
        TaskContext {
            inner: Arc::new(ContextInner {
                job_id,
                dag_id,
                dag_name,
                task_id,
                attempt,
                params,
                upstream,
                idempotency_key,
                cancellation,
            }),
        }
    }

    /// The job this task execution belongs to.
    pub fn job_id(&self) -> JobId {
        self.inner.job_id
    }

    /// The DAG of the job.
    pub fn dag_id(&self) -> DagId {
        self.inner.dag_id
    }

    /// The DAG's name.
    pub fn dag_name(&self) -> &str {
        &self.inner.dag_name
    }

    /// The task id within the DAG.
    pub fn task_id(&self) -> &str {
        &self.inner.task_id
    }

    /// The attempt number, 1 for the first attempt.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The job's parameters: the JSON given to `trigger_job`.
    pub fn params(&self) -> &Value {
        &self.inner.params
    }

    /// The result of a dependency, by task id; `None` if `task_id` is not a
    /// dependency of this task or produced no result (it was skipped or failed).
    pub fn upstream(&self, task_id: &str) -> Option<&Value> {
        self.inner.upstream.get(task_id).map(|v| &**v)
    }

    /// A key that is the same for every attempt of this task execution (also
    /// after a crash and recovery), for making side effects exactly-once.
    pub fn idempotency_key(&self) -> &str {
        &self.inner.idempotency_key
    }

    /// The cancellation signal: fired when the job is cancelled, the attempt
    /// times out, or the engine shuts down.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.inner.cancellation
    }

    /// Whether cancellation has been requested.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancellation.is_cancelled()
    }

    /// Completes when cancellation is requested.
    pub async fn cancelled(&self) {
        self.inner.cancellation.cancelled().await
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("job_id", &self.inner.job_id)
            .field("task_id", &self.inner.task_id)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

/// Which outcome a callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallbackEvent {
    /// The task or job succeeded.
    Success,
    /// The task or job failed.
    Failure,
    /// The task failed and a retry is scheduled.
    Retry,
}

/// What a callback (`on_failure`, `on_success`, `on_retry`) receives. It is
/// called after the state it reports has been committed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallbackContext {
    /// The job.
    pub job_id: JobId,
    /// The DAG.
    pub dag_id: DagId,
    /// The DAG's name.
    pub dag_name: String,
    /// The task, or `None` for a DAG-level callback.
    pub task_id: Option<String>,
    /// The outcome reported.
    pub event: CallbackEvent,
    /// The attempt of the task (0 for DAG-level callbacks).
    pub attempt: u32,
    /// The error, for failures and retries.
    pub error: Option<String>,
    /// The job's parameters.
    pub params: Arc<Value>,
}
