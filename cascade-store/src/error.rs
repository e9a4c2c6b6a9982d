//! The store's error type.

use std::path::PathBuf;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::ids::{DagId, JobId};
use crate::store::Backend;

/// A boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`StoreError`] as the default error.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Coarse classification of a [`StoreError`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The requested DAG, version or job does not exist.
    NotFound,
    /// A uniqueness or concurrency conflict; retrying the same input fails again.
    Conflict,
    /// The database could not be reached or went away; retrying later may work.
    Unavailable,
    /// Anything else (configuration, schema, corrupt data, bugs).
    Other,
}

/// Everything that can go wrong in the store.
///
/// URLs in messages and fields always have their password masked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL's scheme is neither PostgreSQL nor SQLite.
    #[error(
        "unsupported database url scheme `{scheme}` in `{url}`: use postgres://user@host/db, \
         sqlite://path/to/file.db, sqlite::memory: or no url for ./cascade.db"
    )]
    UnknownScheme {
        /// The scheme that was given.
        scheme: String,
        /// The URL, password masked.
        url: String,
    },

    /// The URL could not be parsed.
    #[error("malformed database url `{url}`: {problem}")]
    MalformedUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong with it.
        problem: &'static str,
        /// The parser's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The database server could not be reached, even after retrying.
    #[error(
        "database at `{url}` is unavailable after {attempts} attempt(s): check that the server \
         is running and reachable, then retry"
    )]
    Unavailable {
        /// The URL, password masked.
        url: String,
        /// How many connection attempts were made.
        attempts: u32,
        /// The last connection error.
        #[source]
        source: BoxError,
    },

    /// A SQLite database file could not be created or opened.
    #[error(
        "cannot open sqlite database `{}`: check that its directory exists (or can be created) \
         and is writable",
        path.display()
    )]
    SqliteOpen {
        /// The file path.
        path: PathBuf,
        /// The file system or SQLite error.
        #[source]
        source: BoxError,
    },

    /// The database was migrated by a newer version of Cascade.
    #[error(
        "database at `{url}` has schema version {applied}, newer than the latest this build knows \
         ({known}): upgrade cascade or point it at another database"
    )]
    SchemaTooNew {
        /// The URL, password masked.
        url: String,
        /// The unknown migration version found in the database.
        applied: String,
        /// The newest migration version this build knows.
        known: String,
    },

    /// Running the embedded migrations failed.
    #[error("migrating the database at `{url}` failed")]
    Migration {
        /// The URL, password masked.
        url: String,
        /// The migration error.
        #[source]
        source: BoxError,
    },

    /// No DAG has this id.
    #[error("dag {dag_id} not found")]
    DagNotFound {
        /// The requested id.
        dag_id: DagId,
    },

    /// The DAG exists but has no such version.
    #[error("dag {dag_id} has no version {version}")]
    DagVersionNotFound {
        /// The DAG.
        dag_id: DagId,
        /// The requested version.
        version: i32,
    },

    /// No job has this id.
    #[error("job {job_id} not found")]
    JobNotFound {
        /// The requested id.
        job_id: JobId,
    },

    /// No worker is registered with this id (it was never registered, or its
    /// row was deleted).
    #[error("worker `{worker_id}` is not registered")]
    WorkerNotFound {
        /// The requested id.
        worker_id: String,
    },

    /// The operation needs a backend feature this database lacks.
    #[error(
        "`{operation}` is not supported on {backend}: distributed mode (workers claiming tasks, \
         LISTEN/NOTIFY, leader election) needs PostgreSQL"
    )]
    Unsupported {
        /// The store method that was called.
        operation: &'static str,
        /// The backend it was called on.
        backend: Backend,
    },

    /// A stored value could not be decoded (for example an unknown status text).
    #[error("stored {column} value `{value}` is not valid: the database was modified outside cascade")]
    Corrupt {
        /// `table.column` of the bad value.
        column: &'static str,
        /// The stored text.
        value: String,
    },

    /// A value given to the store cannot be stored as it is: text with a NUL
    /// character (PostgreSQL refuses it, and it would cut the text short for
    /// tools that read the SQLite file), or JSON nested deeper than it could
    /// be read back. Nothing of the write it came with was applied.
    #[error("cannot store {column}{}: {problem}", location(job_id.as_ref(), task_id.as_deref()))]
    InvalidValue {
        /// `table.column` the value was meant for.
        column: &'static str,
        /// The job it belongs to, if it has one yet.
        job_id: Option<JobId>,
        /// The task it belongs to, if any.
        task_id: Option<String>,
        /// What is wrong with it.
        problem: String,
    },

    /// A database statement failed.
    #[error("database operation `{operation}` failed")]
    Database {
        /// The store method that failed.
        operation: &'static str,
        /// Diesel's error.
        #[source]
        source: DieselError,
    },
}

impl StoreError {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::DagNotFound { .. }
            | StoreError::DagVersionNotFound { .. }
            | StoreError::JobNotFound { .. }
            | StoreError::WorkerNotFound { .. } => ErrorKind::NotFound,
            StoreError::Unavailable { .. } => ErrorKind::Unavailable,
            StoreError::Database { source, .. } => diesel_kind(source),
            StoreError::UnknownScheme { .. }
            | StoreError::MalformedUrl { .. }
            | StoreError::SqliteOpen { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Migration { .. }
            | StoreError::Corrupt { .. }
            | StoreError::InvalidValue { .. }
            | StoreError::Unsupported { .. } => ErrorKind::Other,
        }
    }

    /// Names the store operation on a [`StoreError::Database`] error.
    pub(crate) fn during(mut self, name: &'static str) -> Self {
        if let StoreError::Database { operation, .. } = &mut self {
            *operation = name;
        }
        self
    }
}

/// ` of job 3, task `t`` (or less) for [`StoreError::InvalidValue`].
fn location(job_id: Option<&JobId>, task_id: Option<&str>) -> String {
    match (job_id, task_id) {
        (Some(job), Some(task)) => format!(" of job {job}, task `{task}`"),
        (Some(job), None) => format!(" of job {job}"),
        (None, Some(task)) => format!(" of task `{task}`"),
        (None, None) => String::new(),
    }
}

fn diesel_kind(error: &DieselError) -> ErrorKind {
    match error {
        DieselError::NotFound => ErrorKind::NotFound,
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::NotNullViolation => ErrorKind::Conflict,
            DatabaseErrorKind::ClosedConnection => ErrorKind::Unavailable,
            _ => {
                // SQLite reports contention from other processes only as text.
                let message = info.message();
                if message.contains("database is locked") || message.contains("database is busy") {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Other
                }
            }
        },
        DieselError::BrokenTransactionManager => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

impl From<DieselError> for StoreError {
    fn from(source: DieselError) -> Self {
        StoreError::Database {
            operation: "query",
            source,
        }
    }
}
