//! Applying a batch of compare-and-set transitions inside one transaction.
//!
//! On PostgreSQL a round of transitions is ONE `UPDATE … FROM unnest($1, $2,
//! …)` statement with the transitions bound as parallel arrays, so a batch
//! costs a handful of round trips whatever its size (one statement per
//! per-item `UPDATE` used to cost ~0.2 ms each: diesel prepares every
//! `UPDATE` anew). SQLite runs the whole batch in a single blocking call on
//! the writer connection instead of one thread hop per statement.
use std::collections::HashMap;
use std::hash::Hash;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp};
use diesel::{QueryResult, QueryableByName, SqliteConnection};
use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;

use crate::connect::SqliteConn;
use crate::error::Result;
use crate::model::{BatchOutcome, Notification};
use crate::rows::{JobCas, NewAttemptRow, NewTaskRow, TaskCas, job_cas_query, task_cas_query};
use crate::schema::{task_attempts, task_executions};

/// Multi-row inserts, which diesel builds differently per backend: SQLite's
/// single-statement form exists only on the synchronous connection.
pub(crate) trait InsertRows {
    /// Inserts task execution rows in one statement.
    fn insert_task_rows(&mut self, rows: Vec<NewTaskRow>) -> BoxFuture<'_, diesel::QueryResult<()>>;
}

impl InsertRows for AsyncPgConnection {
    fn insert_task_rows(&mut self, rows: Vec<NewTaskRow>) -> BoxFuture<'_, diesel::QueryResult<()>> {
        Box::pin(async move {
            diesel_async::RunQueryDsl::execute(
                diesel::insert_into(task_executions::table).values(&rows),
                self,
            )
            .await
            .map(drop)
        })
    }
}

impl InsertRows for SqliteConn {
    fn insert_task_rows(&mut self, rows: Vec<NewTaskRow>) -> BoxFuture<'_, diesel::QueryResult<()>> {
        // Runs on the same connection, inside the caller's open transaction.
        self.spawn_blocking(move |c| {
            diesel::insert_into(task_executions::table)
                .values(&rows)
                .execute(c)
                .map(drop)
        })
    }
}

/// Splits items into rounds so that no key appears twice in one round: the
/// n-th transition of a row goes into round n. One set-based statement sees
/// the rows as they were before it, so only independent rows may share a
/// round; the rounds run one after the other, and a later transition of a
/// row sees the earlier one.
fn rounds<K: Hash + Eq + Ord + Copy>(keys: impl Iterator<Item = K>) -> Vec<Vec<usize>> {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut rounds: Vec<Vec<(K, usize)>> = Vec::new();
    for (index, key) in keys.enumerate() {
        let round = seen.entry(key).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push((key, index));
        *round += 1;
    }
    rounds
        .into_iter()
        .map(|mut round| {
            // A stable row order keeps concurrent batches from deadlocking.
            round.sort_unstable();
            round.into_iter().map(|(_, index)| index).collect()
        })
        .collect()
}

/// One compare-and-set round of task transitions as a single statement: the
/// transitions travel as parallel arrays and `unnest` turns them back into
/// rows. The inner `SELECT … ORDER BY r.id FOR UPDATE` locks the matching rows
/// in id order, so concurrent batches cannot deadlock on each other. Each
/// `set_*` flag says whether its nullable column is written (NULL included)
/// or kept; the other optional columns keep their value when the array holds
/// NULL. `RETURNING` names the winners by input index.
const PG_TASK_ROUND: &str = "\
UPDATE task_executions AS t SET
    status = v.to_status,
    updated_at = v.updated_at,
    attempt = coalesce(v.attempt, t.attempt),
    fencing_token = coalesce(v.new_token, t.fencing_token),
    worker = coalesce(v.worker, t.worker),
    started_at = coalesce(v.started_at, t.started_at),
    lease_expires_at = coalesce(v.lease_expires_at, t.lease_expires_at),
    result = CASE WHEN v.set_result THEN v.result::jsonb ELSE t.result END,
    error = CASE WHEN v.set_error THEN v.error ELSE t.error END,
    completed_at = CASE WHEN v.set_completed_at THEN v.completed_at ELSE t.completed_at END,
    next_attempt_at = CASE WHEN v.set_next_attempt_at THEN v.next_attempt_at ELSE t.next_attempt_at END,
    priority = coalesce(v.priority, t.priority)
FROM (
    SELECT v.*, r.id AS row_id
    FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[],
                $7::timestamp[], $8::int4[], $9::int8[], $10::text[], $11::timestamp[],
                $12::timestamp[], $13::text[], $14::bool[], $15::text[], $16::bool[],
                $17::timestamp[], $18::bool[], $19::timestamp[], $20::bool[], $21::int4[])
        AS v(idx, job_id, task_id, from_status, token, to_status,
             updated_at, attempt, new_token, worker, started_at,
             lease_expires_at, result, set_result, error, set_error,
             completed_at, set_completed_at, next_attempt_at, set_next_attempt_at, priority)
    JOIN task_executions AS r
        ON r.job_id = v.job_id AND r.task_id = v.task_id
        AND r.status = v.from_status AND r.fencing_token = v.token
    ORDER BY r.id
    FOR UPDATE OF r
) AS v
WHERE t.id = v.row_id AND t.status = v.from_status AND t.fencing_token = v.token
RETURNING v.idx";

/// One compare-and-set round of job transitions (see [`PG_TASK_ROUND`]).
/// `keep_outcome` is false on a re-run, which drops `error` and `completed_at`.
const PG_JOB_ROUND: &str = "\
UPDATE jobs AS j SET
    status = v.to_status,
    updated_at = v.updated_at,
    error = coalesce(v.error, CASE WHEN v.keep_outcome THEN j.error END),
    started_at = coalesce(j.started_at, v.started_at),
    completed_at = coalesce(v.completed_at, CASE WHEN v.keep_outcome THEN j.completed_at END)
FROM (
    SELECT v.*
    FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[], $5::text[],
                $6::timestamp[], $7::timestamp[], $8::bool[], $9::timestamp[])
        AS v(idx, job_id, from_status, to_status, error,
             started_at, completed_at, keep_outcome, updated_at)
    JOIN jobs AS r ON r.id = v.job_id AND r.status = v.from_status
    ORDER BY r.id
    FOR UPDATE OF r
) AS v
WHERE j.id = v.job_id AND j.status = v.from_status
RETURNING v.idx";

/// Every attempt record of a batch in one statement.
const PG_INSERT_ATTEMPTS: &str = "\
INSERT INTO task_attempts (job_id, task_id, attempt, status, worker, error, output, started_at, finished_at)
SELECT * FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamp[], $9::timestamp[])";

/// Every notification of a batch in one statement, in input order; queued by
/// PostgreSQL until the transaction commits.
const PG_NOTIFY_ALL: &str = "\
SELECT pg_notify(n.channel, n.payload) FROM unnest($1::text[], $2::text[]) AS n(channel, payload)";

pub(crate) async fn pg_notify_all(
    c: &mut AsyncPgConnection,
    notifications: &[Notification],
) -> QueryResult<usize> {
    let query = diesel::sql_query(PG_NOTIFY_ALL)
        .bind::<Array<Text>, _>(
            notifications
                .iter()
                .map(|n| n.channel.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Text>, _>(
            notifications
                .iter()
                .map(|n| n.payload.as_str())
                .collect::<Vec<_>>(),
        );
    diesel_async::RunQueryDsl::execute(query, c).await
}

/// The input index of a winning transition, from `RETURNING v.idx`.
#[derive(QueryableByName)]
struct Won {
    #[diesel(sql_type = Integer)]
    idx: i32,
}

/// Marks the returned indices as won.
fn mark_won(outcome: &mut [bool], won: Vec<Won>) {
    for Won { idx } in won {
        if let Some(slot) = usize::try_from(idx).ok().and_then(|i| outcome.get_mut(i)) {
            *slot = true;
        }
    }
}

/// Input indices as `int4`; a batch is far below 2^31 transitions.
fn pg_index(index: usize) -> i32 {
    i32::try_from(index).expect("BUG: more than 2^31 transitions in one batch")
}

async fn pg_task_round(
    c: &mut AsyncPgConnection,
    tasks: &[TaskCas],
    round: &[usize],
) -> QueryResult<Vec<Won>> {
    let items = round.iter().map(|&index| (index, &tasks[index]));
    let n = round.len();
    let mut idx = Vec::with_capacity(n);
    let mut job_id = Vec::with_capacity(n);
    let mut task_id = Vec::with_capacity(n);
    let mut from = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut to = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    let mut attempt = Vec::with_capacity(n);
    let mut new_token = Vec::with_capacity(n);
    let mut worker = Vec::with_capacity(n);
    let mut started_at = Vec::with_capacity(n);
    let mut lease_expires_at = Vec::with_capacity(n);
    let mut result = Vec::with_capacity(n);
    let mut set_result = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut set_error = Vec::with_capacity(n);
    let mut completed_at = Vec::with_capacity(n);
    let mut set_completed_at = Vec::with_capacity(n);
    let mut next_attempt_at = Vec::with_capacity(n);
    let mut set_next_attempt_at = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    for (index, cas) in items {
        let set = &cas.set;
        idx.push(pg_index(index));
        job_id.push(cas.job_id);
        task_id.push(cas.task_id.as_str());
        from.push(cas.from);
        token.push(cas.fencing_token);
        to.push(set.status);
        updated_at.push(set.updated_at);
        attempt.push(set.attempt);
        new_token.push(set.fencing_token);
        worker.push(set.worker.as_deref());
        started_at.push(set.started_at);
        lease_expires_at.push(set.lease_expires_at);
        set_result.push(set.result.is_some());
        result.push(
            set.result
                .as_ref()
                .and_then(|r| r.as_ref())
                .map(|json| json.0.to_string()),
        );
        set_error.push(set.error.is_some());
        error.push(set.error.as_ref().and_then(|e| e.as_deref()));
        set_completed_at.push(set.completed_at.is_some());
        completed_at.push(set.completed_at.flatten());
        set_next_attempt_at.push(set.next_attempt_at.is_some());
        next_attempt_at.push(set.next_attempt_at.flatten());
        priority.push(set.priority);
    }
    let query = diesel::sql_query(PG_TASK_ROUND)
        .bind::<Array<Integer>, _>(idx)
        .bind::<Array<BigInt>, _>(job_id)
        .bind::<Array<Text>, _>(task_id)
        .bind::<Array<Text>, _>(from)
        .bind::<Array<BigInt>, _>(token)
        .bind::<Array<Text>, _>(to)
        .bind::<Array<Timestamp>, _>(updated_at)
        .bind::<Array<Nullable<Integer>>, _>(attempt)
        .bind::<Array<Nullable<BigInt>>, _>(new_token)
        .bind::<Array<Nullable<Text>>, _>(worker)
        .bind::<Array<Nullable<Timestamp>>, _>(started_at)
        .bind::<Array<Nullable<Timestamp>>, _>(lease_expires_at)
        .bind::<Array<Nullable<Text>>, _>(result)
        .bind::<Array<Bool>, _>(set_result)
        .bind::<Array<Nullable<Text>>, _>(error)
        .bind::<Array<Bool>, _>(set_error)
        .bind::<Array<Nullable<Timestamp>>, _>(completed_at)
        .bind::<Array<Bool>, _>(set_completed_at)
        .bind::<Array<Nullable<Timestamp>>, _>(next_attempt_at)
        .bind::<Array<Bool>, _>(set_next_attempt_at)
        .bind::<Array<Nullable<Integer>>, _>(priority);
    diesel_async::RunQueryDsl::load(query, c).await
}

async fn pg_job_round(c: &mut AsyncPgConnection, jobs: &[JobCas], round: &[usize]) -> QueryResult<Vec<Won>> {
    let n = round.len();
    let mut idx = Vec::with_capacity(n);
    let mut job_id = Vec::with_capacity(n);
    let mut from = Vec::with_capacity(n);
    let mut to = Vec::with_capacity(n);
    let mut error = Vec::with_capacity(n);
    let mut started_at = Vec::with_capacity(n);
    let mut completed_at = Vec::with_capacity(n);
    let mut keep_outcome = Vec::with_capacity(n);
    let mut updated_at = Vec::with_capacity(n);
    for &index in round {
        let cas = &jobs[index];
        idx.push(pg_index(index));
        job_id.push(cas.job_id);
        from.push(cas.from);
        to.push(cas.to);
        error.push(cas.error.as_deref());
        started_at.push(cas.started_at);
        completed_at.push(cas.completed_at);
        keep_outcome.push(cas.keep_outcome);
        updated_at.push(cas.updated_at);
    }
    let query = diesel::sql_query(PG_JOB_ROUND)
        .bind::<Array<Integer>, _>(idx)
        .bind::<Array<BigInt>, _>(job_id)
        .bind::<Array<Text>, _>(from)
        .bind::<Array<Text>, _>(to)
        .bind::<Array<Nullable<Text>>, _>(error)
        .bind::<Array<Nullable<Timestamp>>, _>(started_at)
        .bind::<Array<Nullable<Timestamp>>, _>(completed_at)
        .bind::<Array<Bool>, _>(keep_outcome)
        .bind::<Array<Timestamp>, _>(updated_at);
    diesel_async::RunQueryDsl::load(query, c).await
}

async fn pg_insert_attempts(c: &mut AsyncPgConnection, attempts: &[&NewAttemptRow]) -> QueryResult<usize> {
    let query = diesel::sql_query(PG_INSERT_ATTEMPTS)
        .bind::<Array<BigInt>, _>(attempts.iter().map(|a| a.job_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(attempts.iter().map(|a| a.task_id.as_str()).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(attempts.iter().map(|a| a.status).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(attempts.iter().map(|a| a.worker.as_deref()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(attempts.iter().map(|a| a.error.as_deref()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(attempts.iter().map(|a| a.output.as_deref()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamp>>, _>(attempts.iter().map(|a| a.started_at).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamp>>, _>(attempts.iter().map(|a| a.finished_at).collect::<Vec<_>>());
    diesel_async::RunQueryDsl::execute(query, c).await
}

/// Applies a batch on PostgreSQL inside the caller's transaction: one
/// statement per round of task transitions, then one per round of job
/// transitions, then one for all attempt records of the winners. A batch
/// where every task appears once costs three statements whatever its size.
pub(crate) async fn pg_apply(
    c: &mut AsyncPgConnection,
    tasks: &[TaskCas],
    jobs: &[JobCas],
    notifications: &[Notification],
) -> Result<BatchOutcome> {
    let mut outcome = BatchOutcome {
        tasks: vec![false; tasks.len()],
        jobs: vec![false; jobs.len()],
    };
    for round in rounds(tasks.iter().map(|t| (t.job_id, t.task_id.as_str()))) {
        let won = pg_task_round(c, tasks, &round).await?;
        mark_won(&mut outcome.tasks, won);
    }
    for round in rounds(jobs.iter().map(|j| j.job_id)) {
        let won = pg_job_round(c, jobs, &round).await?;
        mark_won(&mut outcome.jobs, won);
    }
    let attempts: Vec<&NewAttemptRow> = tasks
        .iter()
        .zip(&outcome.tasks)
        .filter(|(_, won)| **won)
        .filter_map(|(cas, _)| cas.attempt.as_ref())
        .collect();
    if !attempts.is_empty() {
        pg_insert_attempts(c, &attempts).await?;
    }
    if !notifications.is_empty() {
        pg_notify_all(c, notifications).await?;
    }
    Ok(outcome)
}

pub(crate) fn sqlite_apply(
    c: &mut SqliteConnection,
    tasks: &[TaskCas],
    jobs: &[JobCas],
) -> diesel::QueryResult<BatchOutcome> {
    let mut outcome = BatchOutcome {
        tasks: Vec::with_capacity(tasks.len()),
        jobs: Vec::with_capacity(jobs.len()),
    };
    for cas in tasks {
        let won = task_cas_query!(cas).execute(c)? == 1;
        if won && let Some(attempt) = &cas.attempt {
            diesel::insert_into(task_attempts::table)
                .values(attempt)
                .execute(c)?;
        }
        outcome.tasks.push(won);
    }
    for cas in jobs {
        outcome.jobs.push(job_cas_query!(cas).execute(c)? == 1);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::rounds;

    #[test]
    fn repeated_keys_go_to_later_rounds() {
        let keys = [3, 1, 3, 2, 3, 1];
        assert_eq!(
            rounds(keys.iter().copied()),
            vec![vec![1, 3, 0], vec![5, 2], vec![4]]
        );
    }
}
