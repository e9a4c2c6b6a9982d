//! The store's error type.

use std::path::PathBuf;
use std::time::Duration;

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
    /// A uniqueness or constraint conflict; retrying the same input fails again.
    Conflict,
    /// The database could not be reached, went away, was too slow, or asked
    /// for the transaction to be retried; retrying later may work (see
    /// [`StoreError::is_transient`]).
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

    /// A store call did not finish within its deadline (derived from
    /// [`StoreOptions::statement_timeout`](crate::StoreOptions::statement_timeout)).
    ///
    /// Transient. For a write the outcome is unknown: it may have been
    /// committed just before the deadline. Compare-and-set writes can be
    /// retried as they are (a second application loses its compare-and-set);
    /// read the state back to learn which.
    #[error(
        "database operation `{operation}` did not finish within {after:?}: the database is slow \
         or unreachable; a write may or may not have been applied"
    )]
    Timeout {
        /// The store method that timed out.
        operation: &'static str,
        /// The deadline that passed.
        after: Duration,
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
    /// The coarse class of this error. Every [transient](StoreError::is_transient)
    /// error is [`ErrorKind::Unavailable`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::DagNotFound { .. }
            | StoreError::DagVersionNotFound { .. }
            | StoreError::JobNotFound { .. }
            | StoreError::WorkerNotFound { .. } => ErrorKind::NotFound,
            StoreError::Unavailable { .. } | StoreError::Timeout { .. } => ErrorKind::Unavailable,
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

    /// Whether the same call may succeed if tried again a little later:
    /// the database could not be reached ([`StoreError::Unavailable`]), the
    /// call ran out of time ([`StoreError::Timeout`]), or a statement failed
    /// because the connection was lost, the server is shutting down,
    /// restarting or recovering (SQLSTATE `57P01`, `57P02`, `57P03`, class
    /// `08`), the transaction lost a serialization check or a deadlock
    /// (`40001`, `40P01`), a statement was cancelled by a server timeout, or
    /// SQLite found the database locked by another process (`SQLITE_BUSY`).
    ///
    /// Reads are retried inside the store already (briefly); writes are not,
    /// since a lost connection may hide a commit that happened: the caller
    /// decides. Constraint violations, missing rows, bad URLs and corrupt data
    /// are never transient.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cascade_store::{ErrorKind, StoreError};
    ///
    /// let error = StoreError::Timeout { operation: "get_job", after: Duration::from_secs(31) };
    /// assert!(error.is_transient());
    /// assert_eq!(error.kind(), ErrorKind::Unavailable);
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } | StoreError::Timeout { .. } => true,
            StoreError::Database { source, .. } => diesel_is_transient(source),
            _ => false,
        }
    }

    /// Names the store operation on a [`StoreError::Database`] or
    /// [`StoreError::Timeout`] error.
    pub(crate) fn during(mut self, name: &'static str) -> Self {
        if let StoreError::Database { operation, .. } | StoreError::Timeout { operation, .. } = &mut self {
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
    if diesel_is_transient(error) {
        return ErrorKind::Unavailable;
    }
    match error {
        DieselError::NotFound => ErrorKind::NotFound,
        DieselError::DatabaseError(
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::NotNullViolation,
            _,
        ) => ErrorKind::Conflict,
        _ => ErrorKind::Other,
    }
}

/// Whether a diesel error is worth retrying.
///
/// diesel-async maps a PostgreSQL error to a [`DatabaseErrorKind`] only for
/// a few SQLSTATEs (`40001` is `SerializationFailure`); every other code
/// becomes `Unknown` and the code itself is not kept. An error without a
/// SQLSTATE (an I/O error, a connection that closed, a background
/// connection task that ended) becomes `UnableToSendCommand`. So the kind
/// covers lost connections and serialization failures, and the server's
/// primary message identifies the rest: the codes of class `57P` and
/// `40P01` have fixed English texts. (A server whose `lc_messages` is not
/// English translates them; those connections still end, and the next
/// statement on them fails as `UnableToSendCommand`.) SQLite reports
/// `SQLITE_BUSY` and `SQLITE_LOCKED` only as text as well.
fn diesel_is_transient(error: &DieselError) -> bool {
    match error {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::SerializationFailure => true,
            _ => transient_message(info.message()),
        },
        DieselError::BrokenTransactionManager => true,
        DieselError::RollbackErrorOnCommit { commit_error, .. } => diesel_is_transient(commit_error),
        _ => false,
    }
}

/// Primary messages of transient server errors, lowercase.
const TRANSIENT_MESSAGES: &[&str] = &[
    // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P05 idle_session_timeout,
    // and conflicts with recovery on a standby.
    "terminating connection",
    // 57P03 cannot_connect_now: starting up, shutting down, in recovery,
    // not (yet) accepting connections.
    "the database system is",
    // 40P01 deadlock_detected.
    "deadlock detected",
    // 40001 serialization_failure, should it ever arrive without its kind.
    "could not serialize access",
    // 57014 query_canceled (statement_timeout) and 55P03 (lock_timeout).
    "canceling statement due to",
    // 08xxx raised by the server, and I/O failures as text.
    "connection reset",
    "broken pipe",
    "connection closed",
    "server closed the connection",
    // SQLite: SQLITE_BUSY ("database is locked"), SQLITE_LOCKED
    // ("database table is locked"), and the wording of older versions.
    "is locked",
    "database is busy",
];

fn transient_message(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    TRANSIENT_MESSAGES.iter().any(|text| message.contains(text))
}

impl From<DieselError> for StoreError {
    fn from(source: DieselError) -> Self {
        StoreError::Database {
            operation: "query",
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(kind: DatabaseErrorKind, message: &str) -> StoreError {
        StoreError::Database {
            operation: "test",
            source: DieselError::DatabaseError(kind, Box::new(message.to_owned())),
        }
    }

    #[test]
    fn transient_errors() {
        let transient = [
            // What diesel-async makes of tokio-postgres errors without a SQLSTATE.
            database(DatabaseErrorKind::UnableToSendCommand, "connection closed"),
            database(
                DatabaseErrorKind::UnableToSendCommand,
                "error communicating with the server: Connection reset by peer (os error 104)",
            ),
            database(
                DatabaseErrorKind::ClosedConnection,
                "the listening connection closed",
            ),
            // 40001.
            database(
                DatabaseErrorKind::SerializationFailure,
                "could not serialize access due to concurrent update",
            ),
            // 57P01 (fast and immediate shutdown, pg_terminate_backend).
            database(
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
            ),
            database(
                DatabaseErrorKind::Unknown,
                "terminating connection due to immediate shutdown command",
            ),
            // 57P02.
            database(
                DatabaseErrorKind::Unknown,
                "terminating connection because of crash of another server process",
            ),
            // 57P03.
            database(DatabaseErrorKind::Unknown, "the database system is starting up"),
            database(DatabaseErrorKind::Unknown, "the database system is shutting down"),
            database(
                DatabaseErrorKind::Unknown,
                "the database system is in recovery mode",
            ),
            // 40P01.
            database(DatabaseErrorKind::Unknown, "deadlock detected"),
            // 57014 from statement_timeout.
            database(
                DatabaseErrorKind::Unknown,
                "canceling statement due to statement timeout",
            ),
            // SQLITE_BUSY and SQLITE_LOCKED.
            database(DatabaseErrorKind::Unknown, "database is locked"),
            database(DatabaseErrorKind::Unknown, "database table is locked"),
            StoreError::Database {
                operation: "test",
                source: DieselError::BrokenTransactionManager,
            },
            StoreError::Database {
                operation: "test",
                source: DieselError::RollbackErrorOnCommit {
                    rollback_error: Box::new(DieselError::BrokenTransactionManager),
                    commit_error: Box::new(DieselError::DatabaseError(
                        DatabaseErrorKind::UnableToSendCommand,
                        Box::new("connection closed".to_owned()),
                    )),
                },
            },
            StoreError::Timeout {
                operation: "test",
                after: Duration::from_secs(31),
            },
            StoreError::Unavailable {
                url: "postgres://u@h/db".to_owned(),
                attempts: 6,
                source: "connection refused".into(),
            },
        ];
        for error in transient {
            assert!(error.is_transient(), "{error:?}");
            assert_eq!(error.kind(), ErrorKind::Unavailable, "{error:?}");
        }
    }

    #[test]
    fn permanent_errors() {
        let permanent = [
            (
                database(
                    DatabaseErrorKind::UniqueViolation,
                    "duplicate key value violates unique constraint",
                ),
                ErrorKind::Conflict,
            ),
            (
                database(DatabaseErrorKind::ForeignKeyViolation, "violates foreign key"),
                ErrorKind::Conflict,
            ),
            (
                database(DatabaseErrorKind::Unknown, "relation \"jobs\" does not exist"),
                ErrorKind::Other,
            ),
            (
                database(DatabaseErrorKind::Unknown, "syntax error at or near \"SELEC\""),
                ErrorKind::Other,
            ),
            (
                StoreError::Database {
                    operation: "test",
                    source: DieselError::NotFound,
                },
                ErrorKind::NotFound,
            ),
            (StoreError::JobNotFound { job_id: JobId(7) }, ErrorKind::NotFound),
            (
                StoreError::Corrupt {
                    column: "jobs.status",
                    value: "sleeping".to_owned(),
                },
                ErrorKind::Other,
            ),
        ];
        for (error, kind) in permanent {
            assert!(!error.is_transient(), "{error:?}");
            assert_eq!(error.kind(), kind, "{error:?}");
        }
    }

    #[test]
    fn during_names_timeouts_and_database_errors() {
        let timeout = StoreError::Timeout {
            operation: "query",
            after: Duration::from_secs(2),
        }
        .during("list_jobs");
        assert!(matches!(
            timeout,
            StoreError::Timeout {
                operation: "list_jobs",
                ..
            }
        ));
        assert!(timeout.to_string().contains("`list_jobs`"), "{timeout}");
        let database = database(DatabaseErrorKind::Unknown, "x").during("get_job");
        assert!(matches!(
            database,
            StoreError::Database {
                operation: "get_job",
                ..
            }
        ));
    }
}
