//! Identifiers and status enums.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                input.trim().parse::<i64>().map($name).map_err(|source| ParseIdError {
                    what: $what,
                    input: input.to_owned(),
                    source,
                })
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                $name(id)
            }
        }
    };
}

id_type!(
    /// The database identity of a registered DAG.
    ///
    /// Prints as a plain number and parses back from one, so an id printed by
    /// one process can be used by another:
    ///
    /// ```
    /// use cascade_store::DagId;
    /// let id: DagId = "42".parse()?;
    /// assert_eq!(id, DagId(42));
    /// assert_eq!(id.to_string(), "42");
    /// # Ok::<(), cascade_store::ParseIdError>(())
    /// ```
    DagId,
    "dag id"
);

id_type!(
    /// The database identity of a job (one run of a DAG).
    ///
    /// ```
    /// use cascade_store::JobId;
    /// let id: JobId = "7".parse()?;
    /// assert_eq!(serde_json::to_string(&id).unwrap(), "7");
    /// # Ok::<(), cascade_store::ParseIdError>(())
    /// ```
    JobId,
    "job id"
);

/// A string that is not a valid [`DagId`] or [`JobId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{input}`: expected a decimal integer such as 42")]
pub struct ParseIdError {
    /// Which kind of id was being parsed (`"dag id"` or `"job id"`).
    pub what: &'static str,
    /// The rejected input.
    pub input: String,
    /// Why the integer parse failed.
    #[source]
    pub source: ParseIntError,
}

/// A string that is not a known [`JobStatus`] or [`TaskStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{input}`: expected one of {expected}")]
pub struct ParseStatusError {
    /// Which kind of status was being parsed (`"job status"` or `"task status"`).
    pub what: &'static str,
    /// The rejected input.
    pub input: String,
    /// The accepted spellings, comma separated.
    pub expected: &'static str,
}

macro_rules! status_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal, terminal: [$($terminal:ident),*],
        { $($(#[$vmeta:meta])* $variant:ident => $text:literal),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every status, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The lowercase `snake_case` spelling stored in the database.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// Whether this status is final: no transition leaves it.
            pub fn is_terminal(self) -> bool {
                matches!(self, $($name::$terminal)|*)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStatusError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                match input {
                    $($text => Ok($name::$variant),)*
                    _ => Err(ParseStatusError {
                        what: $what,
                        input: input.to_owned(),
                        expected: concat!($($text, " "),*),
                    }),
                }
            }
        }
    };
}

status_enum!(
    /// The state of a job: `pending → running → success | failed | cancelled`.
    ///
    /// ```
    /// use cascade_store::JobStatus;
    /// assert_eq!(JobStatus::Running.as_str(), "running");
    /// assert_eq!("success".parse::<JobStatus>().unwrap(), JobStatus::Success);
    /// assert!(JobStatus::Cancelled.is_terminal());
    /// ```
    JobStatus, "job status", terminal: [Success, Failed, Cancelled],
    {
        /// Created, not started yet.
        Pending => "pending",
        /// At least one task has been dispatched.
        Running => "running",
        /// Every task finished successfully (or was skipped).
        Success => "success",
        /// A task failed and the job gave up.
        Failed => "failed",
        /// Cancelled by a user.
        Cancelled => "cancelled",
    }
);

status_enum!(
    /// The state of one task execution within a job.
    ///
    /// `pending → queued → running → success | failed | up_for_retry |
    /// upstream_failed | skipped | cancelled`; `up_for_retry` goes back to
    /// `queued` when the retry is due.
    ///
    /// ```
    /// use cascade_store::TaskStatus;
    /// assert_eq!(TaskStatus::UpForRetry.as_str(), "up_for_retry");
    /// assert!(!TaskStatus::UpForRetry.is_terminal());
    /// assert!(TaskStatus::UpstreamFailed.is_terminal());
    /// ```
    TaskStatus, "task status", terminal: [Success, Failed, UpstreamFailed, Skipped, Cancelled],
    {
        /// Waiting for its dependencies.
        Pending => "pending",
        /// Ready to run, waiting for a worker.
        Queued => "queued",
        /// A worker is running it.
        Running => "running",
        /// Finished successfully.
        Success => "success",
        /// Failed with no retries left.
        Failed => "failed",
        /// Failed; another attempt is scheduled at `next_attempt_at`.
        UpForRetry => "up_for_retry",
        /// Not run because a dependency failed.
        UpstreamFailed => "upstream_failed",
        /// Not run because its trigger rule was not met.
        Skipped => "skipped",
        /// Cancelled with its job.
        Cancelled => "cancelled",
        /// Only in attempt records ([`TaskAttempt::status`](crate::TaskAttempt::status)),
        /// never on a task row: the attempt's worker stopped renewing its
        /// lease (it died, hung or lost the database) and the reaper took the
        /// task back (see [`Store::reap_expired_tasks`](crate::Store::reap_expired_tasks)).
        Lost => "lost",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text_and_serde() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(*status));
            let json = serde_json::to_string(status).expect("serialize");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        for status in JobStatus::ALL {
            assert_eq!(status.to_string().parse::<JobStatus>(), Ok(*status));
        }
        let err = "done".parse::<JobStatus>().expect_err("unknown status");
        assert_eq!(err.input, "done");
    }

    #[test]
    fn ids_parse_with_typed_errors() {
        assert_eq!("12".parse::<JobId>(), Ok(JobId(12)));
        let err = "x12".parse::<DagId>().expect_err("not a number");
        assert_eq!(err.what, "dag id");
        assert_eq!(serde_json::from_str::<JobId>("5").expect("json"), JobId(5));
    }
}
