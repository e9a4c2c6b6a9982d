//! Lease times on the database's clock.
//!
//! A lease is stamped by one machine and judged by another (a worker renews,
//! the leading scheduler reaps), so the machines' clocks must not matter:
//! every lease time and every "has it lapsed" comparison is computed with
//! PostgreSQL's `now()`. Callers still speak in their own clock's terms
//! (`lease_until`, `now`); [`DbTime`] keeps only the distance from the
//! caller's present and applies it to the server's. On SQLite every process
//! shares one host and its clock, which is the database's: the time is
//! written as given.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::QueryResult;
use diesel::expression::{AppearsOnTable, Expression, SelectableExpression, ValidGrouping, is_aggregate};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Timestamp};
use diesel::sqlite::Sqlite;

use crate::rows::naive;

/// A point in time given on the caller's clock, read on the database's: on
/// PostgreSQL `now() AT TIME ZONE 'UTC'` moved by the distance between `at`
/// and the caller's present when the value was made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbTime {
    /// As given (what SQLite writes).
    at: NaiveDateTime,
    /// `at` minus the caller's present, in microseconds (what PostgreSQL adds
    /// to its own present).
    offset_us: i64,
}

impl DbTime {
    /// `at`, on the caller's clock.
    pub(crate) fn at(at: DateTime<Utc>) -> Self {
        DbTime {
            at: naive(at),
            offset_us: offset_micros(at, Utc::now()),
        }
    }

    /// The microseconds to add to the database's present.
    pub(crate) fn offset_micros(self) -> i64 {
        self.offset_us
    }
}

/// `at - now` in microseconds, saturating (a century is far beyond any lease).
pub(crate) fn offset_micros(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    const CENTURY_US: i64 = 100 * 366 * 24 * 3600 * 1_000_000;
    (at - now)
        .num_microseconds()
        .unwrap_or(CENTURY_US)
        .clamp(-CENTURY_US, CENTURY_US)
}

impl Expression for DbTime {
    type SqlType = Timestamp;
}

impl<QS> AppearsOnTable<QS> for DbTime {}

impl<QS> SelectableExpression<QS> for DbTime {}

impl<G> ValidGrouping<G> for DbTime {
    type IsAggregate = is_aggregate::Never;
}

impl QueryId for DbTime {
    type QueryId = DbTime;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for DbTime {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("((now() AT TIME ZONE 'UTC') + ");
        out.push_bind_param::<BigInt, _>(&self.offset_us)?;
        out.push_sql("::int8 * interval '1 microsecond')");
        Ok(())
    }
}

impl QueryFragment<Sqlite> for DbTime {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_bind_param::<Timestamp, _>(&self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::offset_micros;
    use chrono::{Duration, Utc};

    #[test]
    fn offsets_are_the_distance_from_the_present_and_saturate() {
        let now = Utc::now();
        assert_eq!(offset_micros(now + Duration::seconds(30), now), 30_000_000);
        assert_eq!(offset_micros(now - Duration::milliseconds(5), now), -5_000);
        let far = offset_micros(now + Duration::days(365 * 1000), now);
        assert_eq!(far, 100 * 366 * 24 * 3600 * 1_000_000);
    }
}
