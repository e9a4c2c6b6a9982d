//! Cascade persistence: DAGs, jobs and task executions over PostgreSQL or
//! embedded SQLite.
//!
//! A [`Store`] is a cheap, cloneable handle made of domain verbs
//! ([`Store::upsert_dag`], [`Store::create_job`], [`Store::transition_task`],
//! [`Store::commit_transitions`], …); callers never see SQL or connection types.
//! Every state change is a compare-and-set: a task transition applies only if
//! the row is still in the expected state with the expected fencing token, so
//! a stale writer cannot overwrite newer state.
//!
//! Backends:
//! - **PostgreSQL** (`postgres://user:password@host/db`): a pool of
//!   `AsyncPgConnection`s, everything in the `cascade` schema, no libpq.
//! - **SQLite** (`sqlite://path.db`, `sqlite:///abs/path.db`, `sqlite::memory:`,
//!   or no URL for `./cascade.db`): WAL, one writer connection that serialises
//!   every write, and a small read pool.
//!
//! Migrations are embedded and applied by [`Store::open`]. A database migrated
//! by a newer build is refused with [`StoreError::SchemaTooNew`].
//!
//! Faults: every call is bounded in time
//! ([`StoreOptions::statement_timeout`], [`StoreError::Timeout`]), and
//! [`StoreError::is_transient`] tells a database that restarted, went away or
//! asked for a retry from a request that will never succeed. Reads are
//! retried briefly inside the store; writes are not (a lost connection may
//! hide a commit), so the caller decides, typically by retrying the same
//! compare-and-set.
//!
//! ```no_run
//! use cascade_store::{JobStatus, NewDag, NewJob, NewTask, Store, TaskStatus};
//! use serde_json::json;
//!
//! # #[tokio::main]
//! # async fn main() -> cascade_store::Result<()> {
//! let store = Store::open(Some("sqlite://cascade.db")).await?;
//! let dag = store
//!     .upsert_dag(NewDag {
//!         name: "etl".into(),
//!         description: "extract, load".into(),
//!         schedule: None,
//!         definition: r#"{"ir_version":1}"#.into(),
//!         hash: "abc123".into(),
//!     })
//!     .await?;
//! let created = store
//!     .create_job(NewJob {
//!         dag_id: dag.id,
//!         dag_version: dag.version,
//!         status: JobStatus::Pending,
//!         trigger: "manual".into(),
//!         params: json!({ "environment": "dev" }),
//!         idempotency_key: Some("2026-11-26".into()),
//!         owner: None,
//!         lease_expires_at: None,
//!         tasks: vec![NewTask {
//!             task_id: "extract".into(),
//!             queue: "default".into(),
//!             status: TaskStatus::Queued,
//!             attempt: 0,
//!             fencing_token: 0,
//!             started_at: None,
//!             priority: 0,
//!             labels: vec![],
//!         }],
//!     })
//!     .await?;
//! let details = store.get_job_with_details(created.job.id).await?;
//! assert_eq!(details.tasks.len(), 1);
//! # Ok(())
//! # }
//! ```
#![doc(test(attr(deny(warnings))))]

mod batch;
mod clock;
mod connect;
mod error;
mod ids;
mod json;
mod model;
mod options;
mod reader;
mod rows;
mod schema;
mod store;
mod url;
mod values;

#[cfg(any(test, feature = "__test-util"))]
#[doc(hidden)]
pub mod testing;

pub use crate::error::{BoxError, ErrorKind, Result, StoreError};
pub use crate::ids::{DagId, JobId, JobStatus, ParseIdError, ParseStatusError, TaskStatus};
pub use crate::model::{
    AttemptSummary, BatchOutcome, ClaimRequest, ClaimedTask, CreatedJob, DagRecord, DagVersion, Job,
    JobDetails, JobFilter, JobTransition, NewDag, NewJob, NewTask, Notification, SplitOutcome, TaskAttempt,
    TaskChanges, TaskExecution, TaskTransition, TransitionBatch, UncommittedJobs, WorkerInfo, WorkerRecord,
    WorkerRole, WorkerState,
};
pub use crate::options::{SqliteSynchronous, StoreOptions};
pub use crate::reader::StoreReader;
pub use crate::store::{Backend, Leadership, NotificationStream, Store};
