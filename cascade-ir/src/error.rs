//! Errors of the IR parser and validator.

use std::fmt;

use crate::template::TemplateError;

/// Where in a DAG definition a problem is: the task (by declaration index),
/// the key, and for list values the position in the list.
///
/// The `dag!` macro maps a location back to the token that the user wrote, so
/// every compile error points at the offending token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Index of the task in `tasks`, or `None` for a DAG-level key.
    pub task: Option<usize>,
    /// The key, as written: `"depends_on"`, `"timeout"`, `"id"`, `"defaults.queue"`…
    pub key: &'static str,
    /// Position within a list value (a `depends_on` entry).
    pub position: Option<usize>,
}

impl Location {
    pub(crate) fn dag(key: &'static str) -> Self {
        Location {
            task: None,
            key,
            position: None,
        }
    }

    pub(crate) fn task(task: usize, key: &'static str) -> Self {
        Location {
            task: Some(task),
            key,
            position: None,
        }
    }

    pub(crate) fn dependency(task: usize, position: usize) -> Self {
        Location {
            task: Some(task),
            key: "depends_on",
            position: Some(position),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.task, self.position) {
            (Some(task), Some(position)) => write!(f, "tasks[{task}].{}[{position}]", self.key),
            (Some(task), None) => write!(f, "tasks[{task}].{}", self.key),
            (None, _) => f.write_str(self.key),
        }
    }
}

/// One problem the validator found in a DAG definition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// `ir_version` is not one this crate reads.
    #[error("unsupported ir_version {found}: this version of Cascade reads ir_version {supported}")]
    UnsupportedVersion {
        /// The version found.
        found: u32,
        /// The version supported.
        supported: u32,
    },
    /// The DAG name is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid dag name `{name}`: {reason}")]
    InvalidDagName {
        /// The name as written.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The DAG has no tasks.
    #[error("dag `{dag}` has no tasks: add at least one task")]
    NoTasks {
        /// The DAG name.
        dag: String,
    },
    /// A task id is empty, too long or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid task id `{task}`: {reason}")]
    InvalidTaskId {
        /// The id as written.
        task: String,
        /// What is wrong with it.
        reason: &'static str,
        /// Where.
        location: Location,
    },
    /// Two tasks share an id.
    #[error("duplicate task id `{task}`: task ids must be unique within a dag")]
    DuplicateTask {
        /// The repeated id.
        task: String,
        /// The second declaration.
        location: Location,
    },
    /// A task depends on a task the DAG does not have.
    #[error("task `{task}` depends on unknown task `{dependency}`")]
    UnknownDependency {
        /// The task with the bad dependency.
        task: String,
        /// The missing task.
        dependency: String,
        /// The `depends_on` entry.
        location: Location,
    },
    /// A task lists the same dependency twice.
    #[error("task `{task}` lists dependency `{dependency}` twice")]
    DuplicateDependency {
        /// The task.
        task: String,
        /// The repeated dependency.
        dependency: String,
        /// The second entry.
        location: Location,
    },
    /// A task depends on itself.
    #[error("task `{task}` depends on itself")]
    SelfDependency {
        /// The task.
        task: String,
        /// The `depends_on` entry.
        location: Location,
    },
    /// The dependencies form a cycle.
    #[error("dependency cycle: {}", path.join(" -> "))]
    Cycle {
        /// The cycle in run order, first task repeated at the end:
        /// `alpha -> beta -> gamma -> alpha` means beta depends on alpha, and so on.
        path: Vec<String>,
        /// The `depends_on` entry that closes the cycle.
        location: Location,
    },
    /// A numeric setting is out of range.
    #[error("{}invalid {key} {value}: {expected}", task_prefix(task))]
    InvalidValue {
        /// The task, or `None` for a DAG-level default.
        task: Option<String>,
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
        /// Where.
        location: Location,
    },
    /// A trigger rule that does not exist.
    #[error(
        "{}unknown trigger rule `{value}`: expected one of all_success, all_done, all_failed, one_success, one_failed, none_failed",
        task_prefix(task)
    )]
    UnknownTriggerRule {
        /// The task, or `None` for a DAG-level default.
        task: Option<String>,
        /// The value as written.
        value: String,
        /// Where.
        location: Location,
    },
    /// A task type that does not exist.
    #[error("task `{task}`: unknown task type `{value}`: expected `local` or `shell`")]
    UnknownTaskType {
        /// The task.
        task: String,
        /// The value as written.
        value: String,
        /// Where.
        location: Location,
    },
    /// A local task without a handler.
    #[error("task `{task}` has no `run` handler: a local task needs `run: path::to::async_fn`")]
    MissingHandler {
        /// The task.
        task: String,
        /// The task id.
        location: Location,
    },
    /// A shell task without a command.
    #[error("task `{task}` has no `command`: a shell task needs `command: \"...\"`")]
    MissingCommand {
        /// The task.
        task: String,
        /// The task id.
        location: Location,
    },
    /// A key that the task's type does not use.
    #[error("task `{task}`: `{key}` is not allowed on a {kind} task")]
    KeyNotAllowed {
        /// The task.
        task: String,
        /// The key.
        key: &'static str,
        /// The task type.
        kind: &'static str,
        /// Where.
        location: Location,
    },
    /// A shell task's `env` value with an invalid `${...}` reference.
    #[error("task `{task}`: env `{variable}`: {error}")]
    InvalidEnvReference {
        /// The task.
        task: String,
        /// The environment variable whose value holds the reference.
        variable: String,
        /// What is wrong with the reference.
        error: TemplateError,
        /// The task's `env`.
        location: Location,
    },
    /// A queue or callback name that is empty or blank.
    #[error("{}`{key}` must not be empty", task_prefix(task))]
    Empty {
        /// The task, or `None` for a DAG-level key.
        task: Option<String>,
        /// The key.
        key: &'static str,
        /// Where.
        location: Location,
    },
    /// A cron expression that does not parse or never fires.
    #[error("invalid cron schedule `{expression}`: {reason}")]
    InvalidCron {
        /// The expression.
        expression: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `topological_order` was given and differs from the computed one.
    #[error("topological_order does not match the tasks: remove it or recompute it")]
    OrderMismatch,
    /// `hash` was given and differs from the content hash.
    #[error("hash `{found}` does not match the content hash `{expected}`: remove it or recompute it")]
    HashMismatch {
        /// The hash given.
        found: String,
        /// The computed hash.
        expected: String,
    },
}

fn task_prefix(task: &Option<String>) -> String {
    match task {
        Some(task) => format!("task `{task}`: "),
        None => "defaults: ".to_owned(),
    }
}

impl ValidationError {
    /// Where the problem is.
    pub fn location(&self) -> Location {
        use ValidationError::*;
        match self {
            UnsupportedVersion { .. } => Location::dag("ir_version"),
            InvalidDagName { .. } => Location::dag("name"),
            NoTasks { .. } => Location::dag("tasks"),
            InvalidCron { .. } => Location::dag("schedule"),
            OrderMismatch => Location::dag("topological_order"),
            HashMismatch { .. } => Location::dag("hash"),
            InvalidTaskId { location, .. }
            | DuplicateTask { location, .. }
            | UnknownDependency { location, .. }
            | DuplicateDependency { location, .. }
            | SelfDependency { location, .. }
            | Cycle { location, .. }
            | InvalidValue { location, .. }
            | UnknownTriggerRule { location, .. }
            | UnknownTaskType { location, .. }
            | MissingHandler { location, .. }
            | MissingCommand { location, .. }
            | KeyNotAllowed { location, .. }
            | InvalidEnvReference { location, .. }
            | Empty { location, .. } => *location,
        }
    }
}

/// Everything wrong with one DAG definition; never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationErrors {
    /// The DAG's name as written.
    pub dag: String,
    /// The problems, in the order the validator found them.
    pub errors: Vec<ValidationError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid dag `{}`", self.dag)?;
        for (i, error) in self.errors.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{error} (at {})", error.location())?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Why [`DagIr::from_json`](crate::DagIr::from_json) or
/// [`ValidDag::from_json`](crate::ValidDag::from_json) rejected a document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IrError {
    /// The text is not JSON, or not the shape of IR v1 (wrong types, unknown keys,
    /// missing fields).
    #[error("malformed dag IR at line {line}, column {column}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        #[source]
        source: serde_json::Error,
    },
    /// `ir_version` is missing or not a version this crate reads.
    #[error("unsupported ir_version {found}: this version of Cascade reads ir_version {supported}")]
    UnsupportedVersion {
        /// The version found (`null` or the number).
        found: String,
        /// The version supported.
        supported: u32,
    },
    /// The document parsed but describes a DAG that cannot run.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl IrError {
    pub(crate) fn malformed(source: serde_json::Error) -> Self {
        IrError::Malformed {
            line: source.line(),
            column: source.column(),
            source,
        }
    }
}
