//! Tuning knobs for [`Store::open_with`](crate::Store::open_with).

use std::fmt;
use std::time::Duration;

/// SQLite's `PRAGMA synchronous` level.
///
/// With WAL (which the store always uses for files), `Normal` loses at most
/// the last transactions on power loss but never corrupts the database;
/// `Full` also survives power loss at the cost of an fsync per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SqliteSynchronous {
    /// No fsync at all: fastest, unsafe on OS crash or power loss.
    Off,
    /// fsync at WAL checkpoints only (the default).
    #[default]
    Normal,
    /// fsync on every commit.
    Full,
    /// Like `Full`, and also syncs the directory after deleting the journal.
    Extra,
}

impl SqliteSynchronous {
    /// The pragma value.
    pub fn as_str(self) -> &'static str {
        match self {
            SqliteSynchronous::Off => "OFF",
            SqliteSynchronous::Normal => "NORMAL",
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Extra => "EXTRA",
        }
    }
}

impl fmt::Display for SqliteSynchronous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options for opening a [`Store`](crate::Store).
///
/// ```
/// use cascade_store::{SqliteSynchronous, StoreOptions};
///
/// let options = StoreOptions {
///     sqlite_synchronous: SqliteSynchronous::Full,
///     connect_retries: 2,
///     ..StoreOptions::default()
/// };
/// assert_eq!(options.pg_pool_size, 8);
/// assert_eq!(options.statement_timeout, std::time::Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Maximum PostgreSQL connections in the pool (default 8).
    pub pg_pool_size: usize,
    /// Maximum SQLite read connections (default 4). Writes always go through
    /// one dedicated connection, so SQLite never reports "database is locked"
    /// for contention inside one process.
    pub sqlite_read_pool_size: usize,
    /// `PRAGMA synchronous` for SQLite files (default [`SqliteSynchronous::Normal`]).
    pub sqlite_synchronous: SqliteSynchronous,
    /// How long SQLite waits for a lock held by another process (default 5 s).
    pub busy_timeout: Duration,
    /// How many times acquiring a connection is retried after a failure
    /// before [`StoreError::Unavailable`](crate::StoreError::Unavailable) (default 5).
    pub connect_retries: u32,
    /// First retry delay; doubled after each failure (default 100 ms).
    pub connect_backoff: Duration,
    /// Upper bound of the retry delay (default 2 s).
    pub connect_backoff_max: Duration,
    /// Time allowed to establish one connection (default 10 s).
    pub connect_timeout: Duration,
    /// Time to wait for a free pooled connection (default 30 s).
    pub acquire_timeout: Duration,
    /// Longest time one SQL statement may run (default 30 s).
    ///
    /// PostgreSQL connections enforce it on the server (`SET
    /// statement_timeout`), which cancels the statement and rolls its
    /// transaction back. Every store call is also bounded on the client, on
    /// both backends, by this time plus a margin (the time itself, at most
    /// five seconds), once per thousand rows for calls whose work grows with
    /// their input (`create_job`, `commit_transitions`); a call still
    /// running then fails with [`StoreError::Timeout`](crate::StoreError::Timeout).
    /// That bound covers what the server cannot see: waiting for a
    /// connection, a server or network that stopped answering. Reads
    /// retried after a transient error stay within the same bound.
    ///
    /// `Duration::ZERO` turns both off.
    pub statement_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pg_pool_size: 8,
            sqlite_read_pool_size: 4,
            sqlite_synchronous: SqliteSynchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            connect_retries: 5,
            connect_backoff: Duration::from_millis(100),
            connect_backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl StoreOptions {
    /// The client-side bound on one store call doing `units` thousand rows'
    /// worth of work (at least one), or `None` when timeouts are off.
    pub(crate) fn call_deadline(&self, units: usize) -> Option<Duration> {
        if self.statement_timeout.is_zero() {
            return None;
        }
        // The server's own timeout should fire first and leave a clean error
        // and a usable connection; the margin covers the round trip and a
        // busy machine.
        let one = self.statement_timeout + self.statement_timeout.min(Duration::from_secs(5));
        Some(one.saturating_mul(u32::try_from(units.max(1)).unwrap_or(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_deadlines() {
        let options = StoreOptions::default();
        assert_eq!(options.call_deadline(0), Some(Duration::from_secs(35)));
        assert_eq!(options.call_deadline(1), Some(Duration::from_secs(35)));
        assert_eq!(options.call_deadline(3), Some(Duration::from_secs(105)));
        let short = StoreOptions {
            statement_timeout: Duration::from_millis(200),
            ..StoreOptions::default()
        };
        assert_eq!(short.call_deadline(1), Some(Duration::from_millis(400)));
        let off = StoreOptions {
            statement_timeout: Duration::ZERO,
            ..StoreOptions::default()
        };
        assert_eq!(off.call_deadline(5), None);
    }
}
