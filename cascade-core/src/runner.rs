//! The RunnerPool: runs one attempt of a task handler on the tokio runtime,
//! under its timeout, catching panics, and reports the outcome to the
//! scheduler. The scheduler owns the pool's capacity: it only starts an
//! attempt when a runner slot is free.

use std::any::Any;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::JobId;
use crate::dag::Handler;
use crate::limits::{self, Limits};
use crate::scheduler::Command;
use crate::task::{TaskContext, TaskError, TaskErrorKind};

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The handler returned a result.
    Success(Value),
    /// The handler returned an error or panicked.
    Failed(TaskError),
    /// The attempt was stopped from outside (cancellation, shutdown).
    Aborted,
}

/// The report of one finished attempt.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) job_id: JobId,
    pub(crate) task: usize,
    pub(crate) token: i64,
    pub(crate) outcome: Outcome,
    pub(crate) finished_at: DateTime<Utc>,
}

/// One attempt, ready to run.
pub(crate) struct Attempt {
    pub(crate) job_id: JobId,
    pub(crate) task: usize,
    pub(crate) token: i64,
    pub(crate) handler: Handler,
    pub(crate) context: TaskContext,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancellation: CancellationToken,
    /// What a result may be; checked here, where it enters the engine.
    pub(crate) limits: Limits,
}

/// Starts an attempt and returns the handle that aborts its handler.
pub(crate) fn spawn(attempt: Attempt, reports: mpsc::Sender<Command>) -> AbortHandle {
    let Attempt {
        job_id,
        task,
        token,
        handler,
        context,
        timeout,
        cancellation,
        limits,
    } = attempt;
    let span = tracing::info_span!(
        "task",
        job.id = %job_id,
        task.id = %context.task_id(),
        attempt = context.attempt()
    );
    // The handler is called and runs in a task of its own so that a panic —
    // while it builds its future (before its first `.await`) or while it
    // runs — is caught by its JoinHandle and fails this attempt only.
    let mut handle = tokio::spawn(async move { handler(context).await }.instrument(span.clone()));
    let abort = handle.abort_handle();
    tokio::spawn(
        async move {
            let joined = match timeout {
                Some(limit) => match tokio::time::timeout(limit, &mut handle).await {
                    Ok(joined) => Some(joined),
                    Err(_) => {
                        cancellation.cancel();
                        handle.abort();
                        None
                    }
                },
                None => Some((&mut handle).await),
            };
            let outcome = match joined {
                None => Outcome::Failed(TaskError::with_kind(
                    TaskErrorKind::TimedOut,
                    format!(
                        "timed out after {}s (the task's timeout)",
                        timeout.map_or(0, |t| t.as_secs())
                    ),
                )),
                // A result that breaks a limit fails here, on both the
                // all-in-one and the worker path, before any store sees it.
                Some(Ok(returned)) => match limits::check_outcome(returned, limits) {
                    Ok(value) => Outcome::Success(value),
                    Err(error) => Outcome::Failed(error),
                },
                Some(Err(join_error)) if join_error.is_panic() => {
                    Outcome::Failed(limits::sanitize_error(TaskError::with_kind(
                        TaskErrorKind::Panicked,
                        format!("handler panicked: {}", panic_message(join_error.into_panic())),
                    )))
                }
                Some(Err(_)) => Outcome::Aborted,
            };
            let completion = Completion {
                job_id,
                task,
                token,
                outcome,
                finished_at: Utc::now(),
            };
            if reports.send(Command::Completed(completion)).await.is_err() {
                tracing::debug!(
                    "scheduler gone; attempt outcome dropped (the task stays running for recovery)"
                );
            }
        }
        .instrument(span),
    );
    abort
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
