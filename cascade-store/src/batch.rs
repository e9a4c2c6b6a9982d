//! Applying a batch of compare-and-set transitions inside one transaction.
//!
//! PostgreSQL pipelines the statements (one network flight per round instead
//! of one per transition); SQLite runs the whole batch in a single blocking
//! call on the writer connection instead of one thread hop per statement.
//!
//! FIXME: diesel marks every `UPDATE` as unsafe to cache, so on PostgreSQL
//! each statement is prepared first, and diesel-async holds its statement
//! cache lock across that prepare: the pipeline degrades to about one round
//! trip per transition (~0.25 ms). One `UPDATE … FROM unnest($1, $2, …)` per
//! round would make a batch a single statement.

use std::collections::HashMap;
use std::hash::Hash;

use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel_async::AsyncPgConnection;
use futures_util::future::{BoxFuture, try_join_all};

use crate::connect::SqliteConn;
use crate::error::Result;
use crate::model::BatchOutcome;
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

/// Rows per multi-row `INSERT` of attempt records (9 binds a row).
const ATTEMPT_INSERT_CHUNK: usize = 1000;

/// Splits items into rounds so that no key appears twice in one round: the
/// n-th transition of a row goes into round n. Pipelined statements may reach
/// the server in any order, so only independent rows may share a round; the
/// rounds themselves run one after the other.
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

pub(crate) async fn pg_apply(
    c: &mut AsyncPgConnection,
    tasks: &[TaskCas],
    jobs: &[JobCas],
) -> Result<BatchOutcome> {
    let mut outcome = BatchOutcome {
        tasks: vec![false; tasks.len()],
        jobs: vec![false; jobs.len()],
    };
    let task_rounds = rounds(tasks.iter().map(|t| (t.job_id, t.task_id.as_str())));
    let job_rounds = rounds(jobs.iter().map(|j| j.job_id));
    let conn: &AsyncPgConnection = c;
    for round in 0..task_rounds.len().max(job_rounds.len()) {
        let task_round = task_rounds.get(round).map_or(&[][..], Vec::as_slice);
        let job_round = job_rounds.get(round).map_or(&[][..], Vec::as_slice);
        let mut pending: Vec<BoxFuture<'_, diesel::QueryResult<usize>>> =
            Vec::with_capacity(task_round.len() + job_round.len());
        for &index in task_round {
            let cas = &tasks[index];
            let mut shared = conn;
            pending.push(diesel_async::RunQueryDsl::execute(
                task_cas_query!(cas),
                &mut shared,
            ));
        }
        for &index in job_round {
            let cas = &jobs[index];
            let mut shared = conn;
            pending.push(diesel_async::RunQueryDsl::execute(
                job_cas_query!(cas),
                &mut shared,
            ));
        }
        let counts = try_join_all(pending).await?;
        let (task_counts, job_counts) = counts.split_at(task_round.len());
        for (&index, &n) in task_round.iter().zip(task_counts) {
            outcome.tasks[index] = n == 1;
        }
        for (&index, &n) in job_round.iter().zip(job_counts) {
            outcome.jobs[index] = n == 1;
        }
    }
    let attempts: Vec<&NewAttemptRow> = tasks
        .iter()
        .zip(&outcome.tasks)
        .filter(|(_, won)| **won)
        .filter_map(|(cas, _)| cas.attempt.as_ref())
        .collect();
    for chunk in attempts.chunks(ATTEMPT_INSERT_CHUNK) {
        let rows: Vec<NewAttemptRow> = chunk.iter().map(|row| (*row).clone()).collect();
        diesel_async::RunQueryDsl::execute(diesel::insert_into(task_attempts::table).values(&rows), c)
            .await?;
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
