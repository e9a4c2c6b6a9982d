//! The Cascade DAG intermediate representation (JSON IR, version 1) and its
//! validator.
//!
//! The IR is the contract between the `dag!` macro, the store and the runtime,
//! and the way DAGs written elsewhere (JSON files, other languages, an API)
//! enter Cascade. This crate holds the one validator: the macro runs it at
//! compile time, and the runtime runs it on IR that arrives as JSON. It depends
//! only on serde, serde_json and thiserror.
//!
//! ```
//! use cascade_ir::ValidDag;
//!
//! let dag = ValidDag::from_json(r#"{
//!     "ir_version": 1,
//!     "name": "etl",
//!     "tasks": [
//!         { "id": "extract", "handler": "extract" },
//!         { "id": "load", "handler": "load", "depends_on": ["extract"], "retries": 3 }
//!     ]
//! }"#)?;
//! assert_eq!(dag.tasks()[1].retry.retries, 3);
//! assert_eq!(dag.topological_order(), &[0, 1]);
//! assert_eq!(dag.hash().len(), 64);
//! # Ok::<(), cascade_ir::IrError>(())
//! ```
//!
//! The format, every field and every rule are documented in `docs/ir.md`.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cron;
mod error;
mod model;
mod sha256;
mod template;
mod validate;

pub use cron::{CronError, CronSchedule};
pub use error::{IrError, Location, ValidationError, ValidationErrors};
pub use model::{DagIr, IR_VERSION, TaskDefaults, TaskIr};
pub use template::{EnvTemplate, RenderError, TemplateError};
pub use validate::{
    DEFAULT_QUEUE, DEFAULT_RETRY_FACTOR, DEFAULT_RETRY_MAX_DELAY_SECS, MAX_RETRIES, MAX_RETRY_DELAY_SECS,
    MAX_RETRY_MAX_DELAY_SECS, MAX_TIMEOUT_SECS, RetryPolicy, TaskKind, TaskPlan, TriggerRule,
    UnknownTriggerRule, ValidDag, validate,
};
