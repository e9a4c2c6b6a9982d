//! The one validator: the `dag!` macro runs it at compile time, the runtime on
//! IR that arrives as JSON. Linear in tasks + edges.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cron::CronSchedule;
use crate::error::{IrError, Location, ValidationError, ValidationErrors};
use crate::model::{DagIr, IR_VERSION, TaskIr};
use crate::sha256;
use crate::template::EnvTemplate;

/// Largest accepted timeout: 30 days.
pub const MAX_TIMEOUT_SECS: i64 = 30 * 24 * 3600;
/// Largest accepted number of retries.
pub const MAX_RETRIES: i64 = 100;
/// Largest accepted initial retry delay: one day.
pub const MAX_RETRY_DELAY_SECS: i64 = 24 * 3600;
/// Largest accepted retry delay cap: seven days.
pub const MAX_RETRY_MAX_DELAY_SECS: i64 = 7 * 24 * 3600;
/// Default backoff factor.
pub const DEFAULT_RETRY_FACTOR: f64 = 2.0;
/// Default cap on a retry delay: one hour.
pub const DEFAULT_RETRY_MAX_DELAY_SECS: i64 = 3600;
/// The queue a task uses when neither it nor the defaults name one.
pub const DEFAULT_QUEUE: &str = "default";

/// When a task may run, given the outcomes of its dependencies (Airflow's
/// trigger rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    /// Every dependency succeeded (the default).
    #[default]
    AllSuccess,
    /// Every dependency finished, whatever its outcome.
    AllDone,
    /// Every dependency failed or was upstream-failed.
    AllFailed,
    /// At least one dependency succeeded.
    OneSuccess,
    /// At least one dependency failed or was upstream-failed.
    OneFailed,
    /// No dependency failed or was upstream-failed (skipped ones are fine).
    NoneFailed,
}

impl TriggerRule {
    /// The rule's name as written in the IR.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AllFailed => "all_failed",
            TriggerRule::OneSuccess => "one_success",
            TriggerRule::OneFailed => "one_failed",
            TriggerRule::NoneFailed => "none_failed",
        }
    }
}

impl fmt::Display for TriggerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown trigger rule name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown trigger rule `{0}`: expected one of all_success, all_done, all_failed, one_success, one_failed, none_failed"
)]
pub struct UnknownTriggerRule(pub String);

impl FromStr for TriggerRule {
    type Err = UnknownTriggerRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "all_success" => TriggerRule::AllSuccess,
            "all_done" => TriggerRule::AllDone,
            "all_failed" => TriggerRule::AllFailed,
            "one_success" => TriggerRule::OneSuccess,
            "one_failed" => TriggerRule::OneFailed,
            "none_failed" => TriggerRule::NoneFailed,
            other => return Err(UnknownTriggerRule(other.to_owned())),
        })
    }
}

/// How a failed task is retried: exponential backoff with a cap and optional
/// jitter.
///
/// ```
/// use std::time::Duration;
/// use cascade_ir::RetryPolicy;
///
/// let policy = RetryPolicy {
///     retries: 5,
///     initial_delay: Duration::from_secs(10),
///     factor: 2.0,
///     max_delay: Duration::from_secs(60),
///     jitter: true,
/// };
/// assert_eq!(policy.backoff(1), Duration::from_secs(10));
/// assert_eq!(policy.backoff(4), Duration::from_secs(60)); // 80 s, capped
/// // Equal jitter: somewhere in the upper half of the backoff.
/// assert_eq!(policy.delay(1, 0.0), Duration::from_secs(5));
/// assert!(policy.delay(1, 0.999) <= Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; a task runs at most `retries + 1` times.
    pub retries: u32,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Each further retry waits `factor` times longer.
    pub factor: f64,
    /// No delay is longer than this.
    pub max_delay: Duration,
    /// Equal jitter: the actual delay is uniform in `[delay / 2, delay]`, so
    /// retries of many tasks that failed together spread out, yet none comes
    /// sooner than half the configured delay.
    pub jitter: bool,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based) before jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let secs = self.initial_delay.as_secs_f64() * self.factor.powi(exponent);
        let capped = secs.min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(capped.max(0.0))
    }

    /// The delay before retry number `retry` (1-based): the
    /// [`backoff`](Self::backoff) `d`, and with jitter `d / 2 + roll × d / 2`,
    /// where `roll` is a uniform random number in `[0, 1)` (clamped to it).
    pub fn delay(&self, retry: u32, roll: f64) -> Duration {
        let backoff = self.backoff(retry);
        if !self.jitter {
            return backoff;
        }
        let roll = if roll.is_finite() {
            roll.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = backoff / 2;
        half + (backoff - half).mul_f64(roll)
    }
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// A Rust handler registered under this name.
    Local {
        /// The handler name.
        handler: String,
    },
    /// A command line run by `/bin/sh -c` in its own process group.
    Shell {
        /// The command line.
        command: String,
        /// Extra environment variables; values may hold `${...}` references
        /// (checked by the validator, see [`EnvTemplate`](crate::EnvTemplate)).
        env: BTreeMap<String, String>,
        /// The working directory.
        cwd: Option<String>,
        /// Start from a clean environment rather than the engine's.
        clean_env: bool,
    },
}

/// One task of a validated DAG, with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    /// The task id.
    pub id: String,
    /// What the task runs.
    pub kind: TaskKind,
    /// Indices (into [`ValidDag::tasks`]) of the tasks this one depends on.
    pub dependencies: Vec<usize>,
    /// Indices of the tasks that depend on this one.
    pub dependents: Vec<usize>,
    /// The timeout, if any.
    pub timeout: Option<Duration>,
    /// The retry policy.
    pub retry: RetryPolicy,
    /// The trigger rule.
    pub trigger_rule: TriggerRule,
    /// The queue.
    pub queue: String,
    /// Priority among tasks waiting for a runner (higher starts first).
    pub priority: i32,
    /// Labels a worker must all have to claim the task.
    pub labels: Vec<String>,
    /// Failure callback name.
    pub on_failure: Option<String>,
    /// Success callback name.
    pub on_success: Option<String>,
    /// Retry callback name.
    pub on_retry: Option<String>,
}

/// A DAG that passed validation: the normalized IR, its canonical JSON, its
/// content hash, and the execution plan (indices, dependents, order).
#[derive(Debug, Clone)]
pub struct ValidDag {
    ir: DagIr,
    json: String,
    hash: String,
    tasks: Vec<TaskPlan>,
    order: Vec<usize>,
    index: HashMap<String, usize>,
    schedule: Option<CronSchedule>,
}

impl ValidDag {
    /// Parses and validates an IR document.
    pub fn from_json(json: &str) -> Result<Self, IrError> {
        validate(DagIr::from_json(json)?).map_err(IrError::Invalid)
    }

    /// The normalized IR.
    pub fn ir(&self) -> &DagIr {
        &self.ir
    }

    /// The canonical JSON of the normalized IR (the bytes the `dag!` macro bakes).
    pub fn ir_json(&self) -> &str {
        &self.json
    }

    /// The DAG name.
    pub fn name(&self) -> &str {
        &self.ir.name
    }

    /// The content hash (SHA-256 of the canonical IR without the hash, in hex).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The tasks in declaration order.
    pub fn tasks(&self) -> &[TaskPlan] {
        &self.tasks
    }

    /// Task indices in topological order; ties keep declaration order.
    pub fn topological_order(&self) -> &[usize] {
        &self.order
    }

    /// The index of a task by id.
    pub fn task_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The parsed cron schedule, if the DAG has one.
    pub fn schedule(&self) -> Option<&CronSchedule> {
        self.schedule.as_ref()
    }
}

impl DagIr {
    /// Parses an IR document without validating the DAG it describes.
    ///
    /// A missing or unsupported `ir_version` is reported as such, before any
    /// complaint about the rest of the document.
    pub fn from_json(json: &str) -> Result<Self, IrError> {
        // The common case parses once; only a document that fails to parse is
        // read again to tell a wrong version apart from other problems.
        let parsed: Result<DagIr, _> = serde_json::from_str(json);
        let version_ok = |ir_version: Option<&serde_json::Value>| matches!(ir_version, Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(IR_VERSION)));
        match parsed {
            Ok(ir) if ir.ir_version == IR_VERSION => Ok(ir),
            Ok(ir) => Err(IrError::UnsupportedVersion {
                found: ir.ir_version.to_string(),
                supported: IR_VERSION,
            }),
            Err(error) => {
                let value: serde_json::Value = serde_json::from_str(json).map_err(IrError::malformed)?;
                match value.get("ir_version") {
                    found if !version_ok(found) && value.is_object() => Err(IrError::UnsupportedVersion {
                        found: found.map_or_else(|| "(missing)".to_owned(), ToString::to_string),
                        supported: IR_VERSION,
                    }),
                    _ => Err(IrError::malformed(error)),
                }
            }
        }
    }
}

/// Validates a DAG definition, returning every problem found, not only the first.
pub fn validate(ir: DagIr) -> Result<ValidDag, ValidationErrors> {
    let mut errors = Vec::new();
    if ir.ir_version != IR_VERSION {
        errors.push(ValidationError::UnsupportedVersion {
            found: ir.ir_version,
            supported: IR_VERSION,
        });
    }
    if let Err(reason) = check_name(&ir.name) {
        errors.push(ValidationError::InvalidDagName {
            name: ir.name.clone(),
            reason,
        });
    }
    if ir.tasks.is_empty() {
        errors.push(ValidationError::NoTasks { dag: ir.name.clone() });
    }
    let schedule = ir.schedule.as_deref().and_then(|expression| {
        CronSchedule::parse(expression)
            .map_err(|e| {
                errors.push(ValidationError::InvalidCron {
                    expression: expression.to_owned(),
                    reason: e.to_string(),
                })
            })
            .ok()
    });
    check_defaults(&ir, &mut errors);
    for (field, value) in [("on_failure", &ir.on_failure), ("on_success", &ir.on_success)] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            errors.push(ValidationError::Empty {
                task: None,
                key: field,
                location: Location::dag(field),
            });
        }
    }

    // Index the tasks; the first declaration of a repeated id wins.
    let mut index = HashMap::with_capacity(ir.tasks.len());
    for (i, task) in ir.tasks.iter().enumerate() {
        if let Err(reason) = check_name(&task.id) {
            errors.push(ValidationError::InvalidTaskId {
                task: task.id.clone(),
                reason,
                location: Location::task(i, "id"),
            });
        }
        match index.entry(task.id.clone()) {
            Entry::Occupied(_) => errors.push(ValidationError::DuplicateTask {
                task: task.id.clone(),
                location: Location::task(i, "id"),
            }),
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
    }

    let mut tasks = Vec::with_capacity(ir.tasks.len());
    let mut listed_by = vec![usize::MAX; ir.tasks.len()];
    for (i, task) in ir.tasks.iter().enumerate() {
        tasks.push(plan_task(&ir, i, task, &index, &mut listed_by, &mut errors));
    }
    for i in 0..tasks.len() {
        for d in 0..tasks[i].dependencies.len() {
            let dep = tasks[i].dependencies[d];
            tasks[dep].dependents.push(i);
        }
    }
    let order = topological_order(&ir, &tasks, &mut errors);

    if !errors.is_empty() {
        return Err(ValidationErrors { dag: ir.name, errors });
    }

    let given_order = ir.topological_order.clone();
    let given_hash = ir.hash.clone();
    let mut normalized = normalize(ir, &tasks, &order);
    if let Some(given) = given_order
        && Some(&given) != normalized.topological_order.as_ref()
    {
        errors.push(ValidationError::OrderMismatch);
    }
    let unhashed = to_canonical_json(&normalized);
    let hash = sha256::hex_digest(unhashed.as_bytes());
    if let Some(found) = given_hash
        && found != hash
    {
        errors.push(ValidationError::HashMismatch {
            found,
            expected: hash.clone(),
        });
    }
    if !errors.is_empty() {
        return Err(ValidationErrors {
            dag: normalized.name,
            errors,
        });
    }
    normalized.hash = Some(hash.clone());
    let json = to_canonical_json(&normalized);
    Ok(ValidDag {
        ir: normalized,
        json,
        hash,
        tasks,
        order,
        index,
        schedule,
    })
}

fn to_canonical_json(ir: &DagIr) -> String {
    // Struct fields serialize in declaration order and maps are BTreeMaps, so
    // the output is deterministic.
    serde_json::to_string(ir).expect("BUG: the IR types always serialize")
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it must not be empty");
    }
    if name.len() > 128 {
        return Err("it must be at most 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err("use only letters, digits, `_`, `-` and `.`");
    }
    Ok(())
}

fn check_defaults(ir: &DagIr, errors: &mut Vec<ValidationError>) {
    let d = &ir.defaults;
    check_range(
        None,
        "defaults.timeout",
        d.timeout,
        1,
        MAX_TIMEOUT_SECS,
        TIMEOUT_EXPECTED,
        None,
        errors,
    );
    check_range(
        None,
        "defaults.retries",
        d.retries,
        0,
        MAX_RETRIES,
        RETRIES_EXPECTED,
        None,
        errors,
    );
    check_range(
        None,
        "defaults.retry_delay",
        d.retry_delay,
        0,
        MAX_RETRY_DELAY_SECS,
        DELAY_EXPECTED,
        None,
        errors,
    );
    check_range(
        None,
        "defaults.retry_max_delay",
        d.retry_max_delay,
        0,
        MAX_RETRY_MAX_DELAY_SECS,
        MAX_DELAY_EXPECTED,
        None,
        errors,
    );
    check_factor(None, "defaults.retry_factor", d.retry_factor, None, errors);
    if let Some(rule) = &d.trigger_rule
        && rule.parse::<TriggerRule>().is_err()
    {
        errors.push(ValidationError::UnknownTriggerRule {
            task: None,
            value: rule.clone(),
            location: Location::dag("defaults.trigger_rule"),
        });
    }
    if d.queue.as_deref().is_some_and(|q| q.trim().is_empty()) {
        errors.push(ValidationError::Empty {
            task: None,
            key: "defaults.queue",
            location: Location::dag("defaults.queue"),
        });
    }
}

const TIMEOUT_EXPECTED: &str = "expected whole seconds from 1 to 2592000 (30 days)";
const RETRIES_EXPECTED: &str = "expected a count from 0 to 100";
const DELAY_EXPECTED: &str = "expected whole seconds from 0 to 86400 (one day)";
const MAX_DELAY_EXPECTED: &str = "expected whole seconds from 0 to 604800 (seven days), at least retry_delay";
const FACTOR_EXPECTED: &str = "expected a number from 1.0 to 10.0";
const PRIORITY_EXPECTED: &str = "expected a whole number from -1000 to 1000";

#[allow(clippy::too_many_arguments)]
fn check_range(
    task: Option<&str>,
    key: &'static str,
    value: Option<i64>,
    min: i64,
    max: i64,
    expected: &'static str,
    task_index: Option<usize>,
    errors: &mut Vec<ValidationError>,
) -> bool {
    match value {
        Some(v) if v < min || v > max => {
            errors.push(ValidationError::InvalidValue {
                task: task.map(str::to_owned),
                key: key.trim_start_matches("defaults."),
                value: v.to_string(),
                expected,
                location: match task_index {
                    Some(i) => Location::task(i, key),
                    None => Location::dag(key),
                },
            });
            false
        }
        _ => true,
    }
}

fn check_factor(
    task: Option<&str>,
    key: &'static str,
    value: Option<f64>,
    task_index: Option<usize>,
    errors: &mut Vec<ValidationError>,
) {
    if let Some(v) = value
        && !(1.0..=10.0).contains(&v)
    {
        errors.push(ValidationError::InvalidValue {
            task: task.map(str::to_owned),
            key: key.trim_start_matches("defaults."),
            value: v.to_string(),
            expected: FACTOR_EXPECTED,
            location: match task_index {
                Some(i) => Location::task(i, key),
                None => Location::dag(key),
            },
        });
    }
}

/// Checks one task and resolves its defaults and dependencies.
///
/// `listed_by[j] == i` once task `i` has listed task `j` as a dependency:
/// one vector shared by all tasks makes the duplicate check O(1) per edge
/// without a set per task.
fn plan_task(
    ir: &DagIr,
    i: usize,
    task: &TaskIr,
    index: &HashMap<String, usize>,
    listed_by: &mut [usize],
    errors: &mut Vec<ValidationError>,
) -> TaskPlan {
    let d = &ir.defaults;
    let id = task.id.as_str();
    let kind = match task.kind.as_deref().unwrap_or("local") {
        "local" => {
            for (key, present) in [
                ("command", task.command.is_some()),
                ("env", !task.env.is_empty()),
                ("cwd", task.cwd.is_some()),
                ("clean_env", task.clean_env),
            ] {
                if present {
                    errors.push(ValidationError::KeyNotAllowed {
                        task: id.to_owned(),
                        key,
                        kind: "local",
                        location: Location::task(i, key),
                    });
                }
            }
            match &task.handler {
                Some(handler) if !handler.trim().is_empty() => TaskKind::Local {
                    handler: handler.clone(),
                },
                _ => {
                    errors.push(ValidationError::MissingHandler {
                        task: id.to_owned(),
                        location: Location::task(i, "id"),
                    });
                    TaskKind::Local {
                        handler: String::new(),
                    }
                }
            }
        }
        "shell" => {
            if task.handler.is_some() {
                errors.push(ValidationError::KeyNotAllowed {
                    task: id.to_owned(),
                    key: "run",
                    kind: "shell",
                    location: Location::task(i, "handler"),
                });
            }
            let command = match &task.command {
                Some(command) if !command.trim().is_empty() => command.clone(),
                _ => {
                    errors.push(ValidationError::MissingCommand {
                        task: id.to_owned(),
                        location: Location::task(i, "id"),
                    });
                    String::new()
                }
            };
            let dependencies: Vec<&str> = task.depends_on.iter().map(String::as_str).collect();
            for (variable, value) in &task.env {
                if let Err(error) = EnvTemplate::parse(value, &dependencies) {
                    errors.push(ValidationError::InvalidEnvReference {
                        task: id.to_owned(),
                        variable: variable.clone(),
                        error,
                        location: Location::task(i, "env"),
                    });
                }
            }
            TaskKind::Shell {
                command,
                env: task.env.clone(),
                cwd: task.cwd.clone(),
                clean_env: task.clean_env,
            }
        }
        other => {
            errors.push(ValidationError::UnknownTaskType {
                task: id.to_owned(),
                value: other.to_owned(),
                location: Location::task(i, "type"),
            });
            TaskKind::Local {
                handler: String::new(),
            }
        }
    };

    let timeout = task.timeout.or(d.timeout);
    let retries = task.retries.or(d.retries).unwrap_or(0);
    let delay = task.retry_delay.or(d.retry_delay).unwrap_or(0);
    let factor = task
        .retry_factor
        .or(d.retry_factor)
        .unwrap_or(DEFAULT_RETRY_FACTOR);
    let max_delay = task
        .retry_max_delay
        .or(d.retry_max_delay)
        .unwrap_or(DEFAULT_RETRY_MAX_DELAY_SECS.max(delay));
    let some = Some(id);
    let timeout_ok = check_range(
        some,
        "timeout",
        task.timeout,
        1,
        MAX_TIMEOUT_SECS,
        TIMEOUT_EXPECTED,
        Some(i),
        errors,
    );
    check_range(
        some,
        "retries",
        task.retries,
        0,
        MAX_RETRIES,
        RETRIES_EXPECTED,
        Some(i),
        errors,
    );
    let delay_ok = check_range(
        some,
        "retry_delay",
        task.retry_delay,
        0,
        MAX_RETRY_DELAY_SECS,
        DELAY_EXPECTED,
        Some(i),
        errors,
    );
    let max_ok = check_range(
        some,
        "retry_max_delay",
        task.retry_max_delay,
        0,
        MAX_RETRY_MAX_DELAY_SECS,
        MAX_DELAY_EXPECTED,
        Some(i),
        errors,
    );
    check_factor(some, "retry_factor", task.retry_factor, Some(i), errors);
    if delay_ok && max_ok && (0..=MAX_RETRY_MAX_DELAY_SECS).contains(&max_delay) && max_delay < delay {
        errors.push(ValidationError::InvalidValue {
            task: Some(id.to_owned()),
            key: "retry_max_delay",
            value: max_delay.to_string(),
            expected: MAX_DELAY_EXPECTED,
            location: Location::task(
                i,
                if task.retry_max_delay.is_some() {
                    "retry_max_delay"
                } else {
                    "retry_delay"
                },
            ),
        });
    }

    let trigger_rule = match &task.trigger_rule {
        Some(rule) => rule.parse().unwrap_or_else(|_| {
            errors.push(ValidationError::UnknownTriggerRule {
                task: Some(id.to_owned()),
                value: rule.clone(),
                location: Location::task(i, "trigger_rule"),
            });
            TriggerRule::default()
        }),
        None => d
            .trigger_rule
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or_default(),
    };
    if task.queue.as_deref().is_some_and(|q| q.trim().is_empty()) {
        errors.push(ValidationError::Empty {
            task: Some(id.to_owned()),
            key: "queue",
            location: Location::task(i, "queue"),
        });
    }
    check_range(
        some,
        "priority",
        task.priority,
        -1000,
        1000,
        PRIORITY_EXPECTED,
        Some(i),
        errors,
    );
    let mut seen_labels = HashSet::with_capacity(task.labels.len());
    for label in &task.labels {
        if label.trim().is_empty() || !seen_labels.insert(label.as_str()) {
            errors.push(ValidationError::InvalidValue {
                task: Some(id.to_owned()),
                key: "labels",
                value: format!("{label:?}"),
                expected: "non-empty labels, each listed once",
                location: Location::task(i, "labels"),
            });
        }
    }
    for (key, value) in [
        ("on_failure", &task.on_failure),
        ("on_success", &task.on_success),
        ("on_retry", &task.on_retry),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            errors.push(ValidationError::Empty {
                task: Some(id.to_owned()),
                key,
                location: Location::task(i, key),
            });
        }
    }

    let mut dependencies = Vec::with_capacity(task.depends_on.len());
    for (position, dep) in task.depends_on.iter().enumerate() {
        let location = Location::dependency(i, position);
        match index.get(dep) {
            None => errors.push(ValidationError::UnknownDependency {
                task: id.to_owned(),
                dependency: dep.clone(),
                location,
            }),
            Some(&j) if j == i || dep == id => errors.push(ValidationError::SelfDependency {
                task: id.to_owned(),
                location,
            }),
            Some(&j) if listed_by[j] == i => errors.push(ValidationError::DuplicateDependency {
                task: id.to_owned(),
                dependency: dep.clone(),
                location,
            }),
            Some(&j) => {
                listed_by[j] = i;
                dependencies.push(j);
            }
        }
    }

    TaskPlan {
        id: id.to_owned(),
        kind,
        dependencies,
        dependents: Vec::new(),
        timeout: timeout
            .filter(|_| timeout_ok)
            .filter(|t| (1..=MAX_TIMEOUT_SECS).contains(t))
            .map(|t| Duration::from_secs(t.unsigned_abs())),
        retry: RetryPolicy {
            retries: u32::try_from(retries.clamp(0, MAX_RETRIES)).unwrap_or(0),
            initial_delay: Duration::from_secs(delay.clamp(0, MAX_RETRY_DELAY_SECS).unsigned_abs()),
            factor,
            max_delay: Duration::from_secs(max_delay.clamp(0, MAX_RETRY_MAX_DELAY_SECS).unsigned_abs()),
            jitter: task.retry_jitter.or(d.retry_jitter).unwrap_or(true),
        },
        trigger_rule,
        queue: task
            .queue
            .clone()
            .or_else(|| d.queue.clone())
            .unwrap_or_else(|| DEFAULT_QUEUE.to_owned()),
        priority: task.priority.map_or(0, |p| p.clamp(-1000, 1000) as i32),
        labels: task.labels.clone(),
        on_failure: task.on_failure.clone(),
        on_success: task.on_success.clone(),
        on_retry: task.on_retry.clone(),
    }
}

/// Kahn's algorithm with a FIFO queue seeded in declaration order: linear and
/// deterministic. Tasks left over sit on or behind a cycle; one cycle among
/// them is reported.
fn topological_order(ir: &DagIr, tasks: &[TaskPlan], errors: &mut Vec<ValidationError>) -> Vec<usize> {
    let n = tasks.len();
    let mut in_degree: Vec<usize> = tasks.iter().map(|t| t.dependencies.len()).collect();
    let mut order: Vec<usize> = (0..n).filter(|&i| in_degree[i] == 0).collect();
    let mut head = 0;
    while head < order.len() {
        let i = order[head];
        head += 1;
        for &j in &tasks[i].dependents {
            in_degree[j] -= 1;
            if in_degree[j] == 0 {
                order.push(j);
            }
        }
    }
    if order.len() < n
        && let Some((path, closing)) = find_cycle(tasks, &in_degree)
    {
        let (task, dep) = closing;
        let position = ir.tasks[task]
            .depends_on
            .iter()
            .position(|d| *d == tasks[dep].id)
            .unwrap_or(0);
        errors.push(ValidationError::Cycle {
            path: path.into_iter().map(|i| tasks[i].id.clone()).collect(),
            location: Location::dependency(task, position),
        });
    }
    order
}

/// Finds one cycle among the tasks Kahn's algorithm could not order, walking
/// dependency edges with an iterative DFS (linear). Returns the cycle in run
/// order, starting and ending at its earliest-declared task, and the closing
/// edge as `(task, dependency)`.
fn find_cycle(tasks: &[TaskPlan], in_degree: &[usize]) -> Option<(Vec<usize>, (usize, usize))> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; tasks.len()];
    for start in 0..tasks.len() {
        if in_degree[start] == 0 || color[start] != WHITE {
            continue;
        }
        // Stack of (task, next dependency position).
        let mut stack = vec![(start, 0usize)];
        color[start] = GREY;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = tasks[node].dependencies.get(*next) {
                *next += 1;
                if in_degree[dep] == 0 {
                    continue;
                }
                match color[dep] {
                    WHITE => {
                        color[dep] = GREY;
                        stack.push((dep, 0));
                    }
                    GREY => {
                        // The stack from `dep` to `node` is a dependency chain;
                        // reversed, it is the cycle in run order.
                        let from = stack.iter().position(|&(t, _)| t == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = stack[from..].iter().map(|&(t, _)| t).collect();
                        cycle.reverse();
                        let min_at = cycle
                            .iter()
                            .enumerate()
                            .min_by_key(|&(_, &t)| t)
                            .map_or(0, |(k, _)| k);
                        cycle.rotate_left(min_at);
                        let first = cycle[0];
                        let last = cycle[cycle.len() - 1];
                        cycle.push(first);
                        // The edge `last -> first` closes the cycle: `first` depends on `last`.
                        return Some((cycle, (first, last)));
                    }
                    _ => {}
                }
            } else {
                color[node] = BLACK;
                stack.pop();
            }
        }
    }
    None
}

fn normalize(ir: DagIr, tasks: &[TaskPlan], order: &[usize]) -> DagIr {
    let normalized_tasks = ir
        .tasks
        .into_iter()
        .zip(tasks)
        .map(|(task, plan)| {
            let (kind, handler, command, env, cwd, clean_env) = match &plan.kind {
                TaskKind::Local { handler } => {
                    ("local", Some(handler.clone()), None, BTreeMap::new(), None, false)
                }
                TaskKind::Shell {
                    command,
                    env,
                    cwd,
                    clean_env,
                } => (
                    "shell",
                    None,
                    Some(command.clone()),
                    env.clone(),
                    cwd.clone(),
                    *clean_env,
                ),
            };
            TaskIr {
                id: task.id,
                kind: Some(kind.to_owned()),
                handler,
                command,
                env,
                cwd,
                clean_env,
                depends_on: task.depends_on,
                timeout: plan.timeout.map(|t| t.as_secs() as i64),
                retries: Some(i64::from(plan.retry.retries)),
                retry_delay: Some(plan.retry.initial_delay.as_secs() as i64),
                retry_factor: Some(plan.retry.factor),
                retry_max_delay: Some(plan.retry.max_delay.as_secs() as i64),
                retry_jitter: Some(plan.retry.jitter),
                trigger_rule: Some(plan.trigger_rule.as_str().to_owned()),
                queue: Some(plan.queue.clone()),
                priority: (plan.priority != 0).then_some(i64::from(plan.priority)),
                labels: plan.labels.clone(),
                on_failure: task.on_failure,
                on_success: task.on_success,
                on_retry: task.on_retry,
            }
        })
        .collect::<Vec<_>>();
    let topological_order = order.iter().map(|&i| normalized_tasks[i].id.clone()).collect();
    DagIr {
        ir_version: ir.ir_version,
        name: ir.name,
        description: ir.description,
        schedule: ir.schedule,
        catchup: ir.catchup,
        defaults: ir.defaults,
        on_failure: ir.on_failure,
        on_success: ir.on_success,
        tasks: normalized_tasks,
        topological_order: Some(topological_order),
        hash: None,
    }
}
