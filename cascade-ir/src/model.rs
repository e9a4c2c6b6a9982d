//! The serde types of IR version 1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The IR version this crate reads and writes.
pub const IR_VERSION: u32 = 1;

/// A DAG in the JSON IR, as written by a person, a tool or the `dag!` macro.
///
/// The same type is the validator's input and its output: the validator
/// resolves `defaults` into every task, fills the `topological_order` and the
/// content `hash`, and serializes the result canonically (see
/// [`ValidDag::ir_json`](crate::ValidDag::ir_json)). Feeding that output back in
/// gives the same bytes again.
///
/// Unknown keys are rejected, so a misspelt key is an error rather than a
/// silently ignored setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagIr {
    /// The IR version; must be [`IR_VERSION`].
    pub ir_version: u32,
    /// The DAG's unique name: letters, digits, `_`, `-` and `.`, 1 to 128 characters.
    pub name: String,
    /// A human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A five-field cron expression (UTC), or an alias such as `@daily`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Whether missed cron ticks are backfilled; off by default.
    #[serde(default, skip_serializing_if = "is_false")]
    pub catchup: bool,
    /// Task settings that apply where a task does not set its own.
    #[serde(default, skip_serializing_if = "TaskDefaults::is_empty")]
    pub defaults: TaskDefaults,
    /// A callback named here runs when a job of this DAG fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// A callback named here runs when a job of this DAG succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    /// The tasks, in declaration order.
    pub tasks: Vec<TaskIr>,
    /// Task ids in a deterministic topological order (derived; checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topological_order: Option<Vec<String>>,
    /// The content hash, the DAG's version (derived; checked when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// Settings every task inherits unless it sets its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDefaults {
    /// Default timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Default number of retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Default initial retry delay in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<i64>,
    /// Default backoff factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_factor: Option<f64>,
    /// Default cap on the retry delay in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max_delay: Option<i64>,
    /// Default for jitter on retry delays (equal jitter: `[delay / 2, delay]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_jitter: Option<bool>,
    /// Default trigger rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_rule: Option<String>,
    /// Default queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl TaskDefaults {
    /// Whether no default is set.
    pub fn is_empty(&self) -> bool {
        *self == TaskDefaults::default()
    }
}

/// One task of a DAG.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskIr {
    /// The task id, unique in its DAG: letters, digits, `_`, `-` and `.`, 1 to 128 characters.
    pub id: String,
    /// `local` (the default) or `shell`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A local task's handler name (the `run:` path of `dag!`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// A shell task's command line, run by `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Extra environment variables for a shell task. A value may refer to
    /// the job's parameters and to the results of direct dependencies with
    /// `${params.<field>}` and `${upstream.<task>.<field>}` (see
    /// [`EnvTemplate`](crate::EnvTemplate)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory of a shell task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Whether a shell task starts from a clean environment (only `PATH`,
    /// `HOME` and similar basics, its `env` and Cascade's own variables)
    /// instead of the engine's environment without its secrets; off by default.
    #[serde(default, skip_serializing_if = "is_false")]
    pub clean_env: bool,
    /// Ids of the tasks this one runs after.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Timeout in seconds, 1 to 2,592,000 (30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Retries after the first attempt, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    /// Initial retry delay in seconds, 0 to 86,400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<i64>,
    /// Backoff factor, 1.0 to 10.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_factor: Option<f64>,
    /// Cap on the retry delay in seconds, at least `retry_delay`, at most 604,800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_max_delay: Option<i64>,
    /// Jitter on retry delays (equal jitter: the wait is uniform in `[delay / 2, delay]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_jitter: Option<bool>,
    /// When the task may run given its dependencies' outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_rule: Option<String>,
    /// The queue the task is dispatched on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Priority among tasks waiting for a runner, -1000 to 1000 (higher
    /// starts first; 0 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Labels a worker must all have to claim this task (distributed mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Callback run after the task's failure is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// Callback run after the task's success is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<String>,
    /// Callback run after a retry of the task is scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_retry: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}
