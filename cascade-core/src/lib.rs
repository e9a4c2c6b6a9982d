//! Cascade: an embedded, durable workflow (DAG) orchestrator.
//!
//! Write a DAG with [`dag!`]; the macro validates it at compile time and bakes
//! it into JSON IR plus a table of handler function pointers. Register it with
//! a [`Cascade`] engine, trigger jobs from code, and Cascade runs the tasks in
//! dependency order, hands each task its dependencies' results, retries,
//! times out and cancels, and commits every state change to SQLite (the
//! zero-setup default, `./cascade.db`) or PostgreSQL before acting on it.
//!
//! ```no_run
//! use cascade_core::{dag, Cascade, JobStatus, TaskContext, TaskError, TaskResult, Topic};
//! use serde_json::json;
//!
//! async fn extract(ctx: TaskContext) -> TaskResult {
//!     Ok(json!({ "rows": [1, 2, 3], "env": ctx.params()["environment"] }))
//! }
//!
//! async fn transform(ctx: TaskContext) -> TaskResult {
//!     let rows = ctx.upstream_result("extract")?.and_then(|r| r["rows"].as_array().cloned())
//!         .ok_or_else(|| TaskError::fatal("extract produced no rows"))?;
//!     Ok(json!({ "sum": rows.iter().filter_map(|v| v.as_i64()).sum::<i64>() }))
//! }
//!
//! dag! {
//!     name: pub etl_pipeline,
//!     description: "Extract and transform",
//!     tasks: {
//!         extract:   { run: extract, timeout: 300 },
//!         transform: { run: transform, depends_on: [extract], retries: 3 },
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> cascade_core::Result<()> {
//! let cascade = Cascade::builder().build().await?;
//! let dag = cascade.register_dag(etl_pipeline()).await?;
//! // Subscribe before triggering, or the job's first events may be missed.
//! let _events = cascade.subscribe(Topic::Dag(dag.id)); // a Stream of Event
//! let job = cascade.trigger_job(dag.id, "manual", json!({ "environment": "dev" })).await?;
//! let job = cascade.wait_for_job(job.id).await?;
//! assert_eq!(job.status, JobStatus::Success);
//! let details = cascade.store().get_job_with_details(job.id).await?;
//! assert_eq!(details.tasks.len(), 2);
//! cascade.shutdown().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
#![doc(test(attr(deny(warnings))))]

mod bridge;
mod cron;
mod dag;
mod engine;
mod error;
mod events;
mod leader;
mod leases;
mod limits;
mod owner;
mod runner;
mod scheduler;
#[cfg(unix)]
mod shell;
mod state;
mod task;
mod worker;

pub use cascade_ir::{IrError, RetryPolicy, TriggerRule, ValidDag, ValidationError, ValidationErrors};
pub use cascade_macros::dag;
pub use cascade_store::{
    AttemptSummary, Backend, DagId, DagRecord, DagVersion, ErrorKind, Job, JobDetails, JobFilter, JobId,
    JobStatus, SqliteSynchronous, Store, StoreError, StoreOptions, StoreReader, TaskAttempt, TaskExecution,
    TaskStatus, WorkerRecord, WorkerRole, WorkerState,
};
pub use dag::{Callback, CallbackFn, Dag, Handler, HandlerFn};
pub use engine::{
    Cascade, CascadeBuilder, DEFAULT_CANCEL_GRACE, DEFAULT_EVENT_CAPACITY, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LEASE, DEFAULT_MAX_LOST, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STORE_OUTAGE_TIMEOUT, Role,
    WAIT_POLL_MAX,
};
pub use error::{Error, Result};
pub use events::{
    Event, EventStream, JobEvent, JobEventKind, TaskEvent, TaskEventKind, Topic, WorkerEvent, WorkerEventKind,
};
pub use limits::{DEFAULT_MAX_RESULT_BYTES, LimitViolation, MAX_JSON_DEPTH};
pub use owner::{OrphanReason, OrphanedJob};
pub use state::{JobState, TaskState};
pub use task::{
    BoxFuture, CallbackContext, CallbackEvent, CallbackResult, ContextError, TaskContext, TaskError,
    TaskErrorKind, TaskResult,
};

#[doc(hidden)]
pub use dag::__private;
