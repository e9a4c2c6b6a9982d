//! What a task handler sees and returns: [`TaskContext`], [`TaskResult`],
//! [`TaskError`], and the context of callbacks.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cascade_ir::ValidDag;
use cascade_store::{Store, StoreError};
use serde::de::DeserializeOwned;
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

    /// An error of the given kind whose [`source`](Self::source) is `source`.
    fn caused_by(
        kind: TaskErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TaskError {
            source: Some(Box::new(source)),
            ..Self::with_kind(kind, message)
        }
    }

    /// A [`ContextError`] as a task error: fatal when the task asked for
    /// something that cannot exist, retryable when the store failed.
    fn context(error: ContextError) -> Self {
        let kind = match error {
            ContextError::Store { .. } => TaskErrorKind::Retryable,
            _ => TaskErrorKind::Fatal,
        };
        let mut message = error.to_string();
        if let Some(cause) = std::error::Error::source(&error) {
            message.push_str(": ");
            message.push_str(&cause.to_string());
        }
        Self::caused_by(kind, message, error)
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

/// Why a [`TaskContext`] could not give what a handler asked for.
///
/// The context's methods return a [`TaskError`] (so `?` works in a handler)
/// whose [`source`](TaskError::source) is this error; downcast it to tell the
/// cases apart:
///
/// ```
/// # use cascade_core::{ContextError, TaskError};
/// fn is_typo(error: &TaskError) -> bool {
///     error
///         .source()
///         .and_then(|source| source.downcast_ref::<ContextError>())
///         .is_some_and(|e| matches!(e, ContextError::NotADependency { .. }))
/// }
/// # let _ = is_typo;
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// [`TaskContext::upstream_result`] was asked for a task that is not a
    /// direct dependency.
    #[error(
        "task `{task}` asked for the result of `{requested}`, which is not one of its dependencies (they are: {})",
        name_list(dependencies)
    )]
    NotADependency {
        /// The task asking.
        task: String,
        /// The task asked for.
        requested: String,
        /// The asking task's direct dependencies.
        dependencies: Vec<String>,
    },
    /// [`TaskContext::ancestor_result`] was asked for a task that this task
    /// does not run after, directly or transitively.
    #[error(
        "task `{task}` asked for the result of `{requested}`, which is not one of its ancestors (they are: {})",
        name_list(ancestors)
    )]
    NotAnAncestor {
        /// The task asking.
        task: String,
        /// The task asked for.
        requested: String,
        /// Every task the asking task runs after, in declaration order.
        ancestors: Vec<String>,
    },
    /// A context built with [`TaskContext::new`] knows only the results it
    /// was given, not the rest of the DAG.
    #[error(
        "task `{task}` cannot read the result of `{requested}`: this context was built with TaskContext::new and knows only the upstream results it was given"
    )]
    NoAncestry {
        /// The task asking.
        task: String,
        /// The task asked for.
        requested: String,
    },
    /// Reading an ancestor's result from the store failed.
    #[error("could not read the result of task `{requested}`")]
    Store {
        /// The task asked for.
        requested: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The job's params do not deserialize into the type asked for.
    #[error("the job params do not fit the expected type at `{path}`")]
    InvalidParams {
        /// Where in the params: `params`, `params.limits.max`, `params.items[2]`.
        path: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

/// `a`, `b`, `c`, the first 20 names of a list, or `none`.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.is_empty() {
        return "none".to_owned();
    }
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}

/// Everything a task handler gets: ids, the attempt number, the job's
/// parameters, its dependencies' results (and on demand its ancestors'), a
/// stable idempotency key and a cancellation signal. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<ContextInner>,
}

/// Where a task sits in its DAG, so that its context can name its
/// dependencies and read its ancestors' results on demand. Contexts built by
/// the engine have one; those from [`TaskContext::new`] do not.
#[derive(Clone)]
pub(crate) struct Lineage {
    pub(crate) plan: Arc<ValidDag>,
    pub(crate) task: usize,
    pub(crate) store: Store,
}

#[derive(Clone)]
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
    lineage: Option<Lineage>,
}

impl TaskContext {
    /// Builds a context; the engine does this for every attempt. Public so
    /// that handlers can be unit-tested without an engine.
    ///
    /// Such a context knows nothing of the DAG beyond what it is given: the
    /// keys of `upstream` are taken as the task's direct dependencies, and
    /// [`ancestor_result`](Self::ancestor_result) answers only for them.
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
                lineage: None,
            }),
        }
    }

    /// Gives the context its place in the DAG: the engine does this for every
    /// attempt it starts.
    pub(crate) fn with_lineage(self, lineage: Lineage) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.lineage = Some(lineage);
        TaskContext {
            inner: Arc::new(inner),
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

    /// The job's parameters deserialized into `T`.
    ///
    /// A mismatch is a fatal [`TaskError`] (no retry can fix the params)
    /// naming the field, e.g. `params.agg_delay_secs: invalid type: string
    /// "3", expected u64`; its [`source`](TaskError::source) is a
    /// [`ContextError::InvalidParams`].
    ///
    /// ```
    /// use cascade_core::{TaskContext, TaskResult};
    /// use serde::Deserialize;
    ///
    /// #[derive(Deserialize)]
    /// struct Params {
    ///     region: String,
    ///     #[serde(default)]
    ///     dry_run: bool,
    /// }
    ///
    /// async fn report(ctx: TaskContext) -> TaskResult {
    ///     let params: Params = ctx.params_as()?;
    ///     Ok(serde_json::json!({ "region": params.region, "dry_run": params.dry_run }))
    /// }
    /// # let _ = report;
    /// ```
    pub fn params_as<T: DeserializeOwned>(&self) -> Result<T, TaskError> {
        serde_path_to_error::deserialize(&*self.inner.params).map_err(|error| {
            let path = match error.path().to_string() {
                root if root == "." => "params".to_owned(),
                index if index.starts_with('[') => format!("params{index}"),
                field => format!("params.{field}"),
            };
            let source = error.into_inner();
            TaskError::caused_by(
                TaskErrorKind::Fatal,
                format!("{path}: {source}"),
                ContextError::InvalidParams { path, source },
            )
        })
    }

    /// The result of a direct dependency, by task id; `None` if `task_id` is
    /// not a dependency of this task or produced no result.
    ///
    /// Prefer [`upstream_result`](Self::upstream_result), which tells the two
    /// apart: a misspelt task id is then an error naming the dependencies
    /// rather than a silent `None`.
    pub fn upstream(&self, task_id: &str) -> Option<&Value> {
        self.inner.upstream.get(task_id).map(|v| &**v)
    }

    /// The result of a direct dependency, by task id.
    ///
    /// `Ok(None)` means the dependency has no result: it was skipped or
    /// failed (a trigger rule such as `all_done` lets this task run anyway),
    /// or, under `one_success`, has not finished yet. Asking for a task that
    /// is not a direct dependency is a fatal [`TaskError`] naming the
    /// dependencies (its source is [`ContextError::NotADependency`]).
    ///
    /// ```
    /// use cascade_core::{TaskContext, TaskError, TaskResult};
    ///
    /// async fn transform(ctx: TaskContext) -> TaskResult {
    ///     let extracted = ctx
    ///         .upstream_result("extract")?
    ///         .ok_or_else(|| TaskError::fatal("extract produced no result"))?;
    ///     Ok(serde_json::json!({ "rows": extracted["rows"] }))
    /// }
    /// # let _ = transform;
    /// ```
    pub fn upstream_result(&self, task_id: &str) -> Result<Option<&Value>, TaskError> {
        if let Some(result) = self.inner.upstream.get(task_id) {
            return Ok(Some(result));
        }
        let dependencies = self.dependency_ids();
        if dependencies.contains(&task_id) {
            Ok(None)
        } else {
            Err(TaskError::context(ContextError::NotADependency {
                task: self.task_id().to_owned(),
                requested: task_id.to_owned(),
                dependencies: dependencies.into_iter().map(str::to_owned).collect(),
            }))
        }
    }

    /// The result of any ancestor of this task in the same job: a task it
    /// runs after, directly or through other tasks (like Airflow's XCom
    /// pull).
    ///
    /// A direct dependency's result is answered from memory; any other is
    /// read from the store when asked for, so tasks that never call this pay
    /// nothing for it. `Ok(None)` means the ancestor has no result (it was
    /// skipped or failed, or has not finished: possible under trigger rules
    /// such as `one_success`). Asking for a task that is not an ancestor is a
    /// fatal [`TaskError`] naming the ancestors ([`ContextError::NotAnAncestor`]);
    /// a store failure is retryable ([`ContextError::Store`]). A context built
    /// with [`TaskContext::new`] knows only the upstream results it was given
    /// ([`ContextError::NoAncestry`] for any other task).
    ///
    /// ```
    /// use cascade_core::{TaskContext, TaskError, TaskResult};
    ///
    /// // extract -> transform -> load: load reads extract's result too.
    /// async fn load(ctx: TaskContext) -> TaskResult {
    ///     let extracted = ctx
    ///         .ancestor_result("extract")
    ///         .await?
    ///         .ok_or_else(|| TaskError::fatal("extract produced no result"))?;
    ///     Ok(serde_json::json!({ "source_rows": extracted["rows"] }))
    /// }
    /// # let _ = load;
    /// ```
    pub async fn ancestor_result(&self, task_id: &str) -> Result<Option<Value>, TaskError> {
        if let Some(result) = self.inner.upstream.get(task_id) {
            return Ok(Some(Value::clone(result)));
        }
        let Some(lineage) = &self.inner.lineage else {
            if self.dependency_ids().contains(&task_id) {
                return Ok(None);
            }
            return Err(TaskError::context(ContextError::NoAncestry {
                task: self.task_id().to_owned(),
                requested: task_id.to_owned(),
            }));
        };
        let tasks = lineage.plan.tasks();
        let is_ancestor = ancestors(&lineage.plan, lineage.task);
        let known = lineage.plan.task_index(task_id).is_some_and(|i| is_ancestor[i]);
        if !known {
            return Err(TaskError::context(ContextError::NotAnAncestor {
                task: self.task_id().to_owned(),
                requested: task_id.to_owned(),
                ancestors: tasks
                    .iter()
                    .zip(&is_ancestor)
                    .filter(|&(_, &a)| a)
                    .map(|(t, _)| t.id.clone())
                    .collect(),
            }));
        }
        if tasks[lineage.task]
            .dependencies
            .iter()
            .any(|&d| tasks[d].id == task_id)
        {
            // A direct dependency without a result in memory has none.
            return Ok(None);
        }
        let rows = lineage
            .store
            .upstream_results(self.job_id(), &[task_id.to_owned()])
            .await
            .map_err(|source| {
                TaskError::context(ContextError::Store {
                    requested: task_id.to_owned(),
                    source,
                })
            })?;
        Ok(rows.into_iter().find_map(|(_, result)| result))
    }

    /// The ids of this task's direct dependencies: from the DAG when the
    /// engine built the context, else the upstream results it was given.
    pub(crate) fn dependency_ids(&self) -> Vec<&str> {
        match &self.inner.lineage {
            Some(lineage) => {
                let tasks = lineage.plan.tasks();
                tasks[lineage.task]
                    .dependencies
                    .iter()
                    .map(|&d| tasks[d].id.as_str())
                    .collect()
            }
            None => {
                let mut ids: Vec<&str> = self.inner.upstream.keys().map(|k| &**k).collect();
                ids.sort_unstable();
                ids
            }
        }
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

/// Marks every task that `task` runs after, directly or transitively.
fn ancestors(plan: &ValidDag, task: usize) -> Vec<bool> {
    let tasks = plan.tasks();
    let mut seen = vec![false; tasks.len()];
    let mut stack: Vec<usize> = tasks[task].dependencies.clone();
    while let Some(t) = stack.pop() {
        if !std::mem::replace(&mut seen[t], true) {
            stack.extend(&tasks[t].dependencies);
        }
    }
    seen
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
