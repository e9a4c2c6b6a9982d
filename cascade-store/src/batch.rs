//! Applying a batch of compare-and-set transitions inside one transaction.
//!
//! On PostgreSQL a batch is usually ONE statement of a fixed shape, prepared
//! once per connection (see [`PG_STEP`]): the task transitions, the attempt
//! records of the winners, the job transitions and the notifications, bound
//! as parallel arrays; it runs as its own implicit transaction, so a commit
//! is a single round trip whatever its size. SQLite runs the whole batch in a
//! single blocking call on the writer connection instead of one thread hop
//! per statement.
use std::collections::HashMap;
use std::hash::Hash;

use std::sync::LazyLock;

use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp, Untyped};
use diesel::sqlite::Sqlite;
use diesel::{QueryResult, QueryableByName, SqliteConnection};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::future::BoxFuture;

use crate::connect::SqliteConn;
use crate::error::{ErrorKind, Result};
use crate::ids::JobId;
use crate::json::JsonValue;
use crate::model::{BatchOutcome, Notification, SplitOutcome, TransitionBatch, UncommittedJobs};
use crate::rows::{JobCas, NewTaskRow, TaskCas, job_cas_query};
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

/// One step of a batch on PostgreSQL, as ONE statement of a fixed shape: a
/// round of task transitions (`upd`), the attempt records of its winners
/// (`ins`), a round of job transitions (`jupd`) and notifications
/// (`notified`). Every part travels as parallel arrays that `unnest` turns
/// back into rows; an empty part is a no-op. Its text never changes, so it is
/// prepared (and planned) once per connection and then only bound and
/// executed: see [`PgStep`].
///
/// - `upd`: the inner `SELECT … ORDER BY r.id FOR UPDATE` locks the matching
///   task rows in id order, so concurrent batches cannot deadlock on each
///   other. Each `set_*` flag says whether its nullable column is written
///   (NULL included) or kept; the other optional columns keep their value
///   when the array holds NULL. `RETURNING` names the winners by input index.
///   A transition to `success` loses while its job has a stored cancel
///   request: once `cancel_job` has stored it, no attempt of the job
///   commits a success, whoever ran it.
/// - `ins`: the attempt records (`a.idx` = the input index of the transition
///   that carries it) of the winners of `upd`, in input order.
/// - `jupd`: like `upd`, for jobs, also fenced by `owner` when one is given.
///   `keep_outcome` is false on a re-run, which drops `error`,
///   `completed_at` and a stale cancel request; a finished job
///   (`completed_at` given) releases its owner and lease. A terminal
///   transition loses while a task row of the job is unfinished: every CTE
///   sees the rows as they were before the statement, so the rows `upd`
///   just moved are judged by their new status (from its `RETURNING`).
/// - `notified`: `pg_notify` for each notification in input order; queued by
///   PostgreSQL until the transaction commits (and dropped if it fails).
///
/// The final `SELECT` returns `(kind, idx)`: 0 = a task winner, 1 = a job
/// winner. Its `UNION ALL` runs `upd` to completion before `jupd` (task locks
/// before job locks, as when they were separate statements) and forces
/// `notified` to run (it returns no row); `ins`, being data-modifying, always
/// runs to completion. Every `$n` appears exactly once and in order (see
/// [`fixed_sql`]).
const PG_STEP: &str = "\
WITH upd AS (
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
    priority = coalesce(v.priority, t.priority),
    retry_base = coalesce(v.retry_base, t.retry_base),
    lost_count = CASE WHEN v.retry_base IS NULL THEN coalesce(v.lost_count, t.lost_count) ELSE 0 END
FROM (
    SELECT v.*, r.id AS row_id
    FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::text[],
                $7::timestamp[], $8::int4[], $9::int8[], $10::text[], $11::timestamp[],
                $12::timestamp[], $13::text[], $14::bool[], $15::text[], $16::bool[],
                $17::timestamp[], $18::bool[], $19::timestamp[], $20::bool[], $21::int4[],
                $22::int4[], $23::int4[])
        AS v(idx, job_id, task_id, from_status, token, to_status,
             updated_at, attempt, new_token, worker, started_at,
             lease_expires_at, result, set_result, error, set_error,
             completed_at, set_completed_at, next_attempt_at, set_next_attempt_at, priority,
             retry_base, lost_count)
    JOIN task_executions AS r
        ON r.job_id = v.job_id AND r.task_id = v.task_id
        AND r.status = v.from_status AND r.fencing_token = v.token
    WHERE v.to_status <> 'success' OR NOT EXISTS (
        SELECT 1 FROM jobs AS c WHERE c.id = v.job_id AND c.cancel_requested_at IS NOT NULL)
    ORDER BY r.id
    FOR UPDATE OF r
) AS v
WHERE t.id = v.row_id AND t.status = v.from_status AND t.fencing_token = v.token
RETURNING v.idx, t.id AS row_id, t.job_id, t.status
), ins AS (
INSERT INTO task_attempts (job_id, task_id, attempt, status, worker, error, output, started_at, finished_at)
SELECT a.job_id, a.task_id, a.attempt, a.status, a.worker, a.error, a.output, a.started_at, a.finished_at
FROM unnest($24::int4[], $25::int8[], $26::text[], $27::int4[], $28::text[], $29::text[],
            $30::text[], $31::text[], $32::timestamp[], $33::timestamp[])
    AS a(idx, job_id, task_id, attempt, status, worker, error, output, started_at, finished_at)
JOIN upd ON upd.idx = a.idx
ORDER BY a.idx
), jupd AS (
UPDATE jobs AS j SET
    status = v.to_status,
    updated_at = v.updated_at,
    error = coalesce(v.error, CASE WHEN v.keep_outcome THEN j.error END),
    started_at = coalesce(j.started_at, v.started_at),
    completed_at = coalesce(v.completed_at, CASE WHEN v.keep_outcome THEN j.completed_at END),
    owner = CASE WHEN v.completed_at IS NULL THEN j.owner END,
    lease_expires_at = CASE WHEN v.completed_at IS NULL THEN j.lease_expires_at END,
    cancel_requested_at = CASE WHEN v.keep_outcome THEN j.cancel_requested_at END
FROM (
    SELECT v.*
    FROM unnest($34::int4[], $35::int8[], $36::text[], $37::text[], $38::text[],
                $39::timestamp[], $40::timestamp[], $41::bool[], $42::timestamp[], $43::text[])
        AS v(idx, job_id, from_status, to_status, error,
             started_at, completed_at, keep_outcome, updated_at, owner)
    JOIN jobs AS r ON r.id = v.job_id AND r.status = v.from_status
        AND (v.owner IS NULL OR r.owner = v.owner)
    ORDER BY r.id
    FOR UPDATE OF r
) AS v
WHERE j.id = v.job_id AND j.status = v.from_status
    AND (v.to_status NOT IN ('success', 'failed', 'cancelled') OR (
        NOT EXISTS (
            SELECT 1 FROM task_executions AS u
            WHERE u.job_id = j.id
              AND u.status IN ('pending', 'queued', 'running', 'up_for_retry')
              AND u.id NOT IN (SELECT row_id FROM upd))
        AND NOT EXISTS (
            SELECT 1 FROM upd
            WHERE upd.job_id = j.id
              AND upd.status IN ('pending', 'queued', 'running', 'up_for_retry'))))
RETURNING v.idx
), notified AS (
SELECT count(pg_notify(n.channel, n.payload)::text) AS n
FROM unnest($44::text[], $45::text[], $46::int4[]) AS n(channel, payload, after_idx)
WHERE n.after_idx < 0 OR n.after_idx IN (SELECT idx FROM upd)
)
SELECT 0 AS kind, idx FROM upd
UNION ALL SELECT 1 AS kind, idx FROM jupd
UNION ALL SELECT 2 AS kind, -1 AS idx FROM notified WHERE n < 0";

/// Splits a fixed SQL text at its `$1`, `$2`, … placeholders, which must
/// each appear once and in order: diesel then writes them back while binding
/// (`push_bind_param`), so the statement is an ordinary, cacheable query
/// fragment (unlike `sql_query`, which diesel never caches).
fn fixed_sql(sql: &'static str) -> Vec<&'static str> {
    let bytes = sql.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i, mut expected) = (0, 0, 1_usize);
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let digits = bytes[i + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
            let n: usize = sql[i + 1..i + 1 + digits].parse().expect("BUG: placeholder");
            assert_eq!(n, expected, "BUG: placeholders of a fixed statement out of order");
            parts.push(&sql[start..i]);
            expected += 1;
            i += 1 + digits;
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&sql[start..]);
    parts
}

static PG_STEP_PARTS: LazyLock<Vec<&'static str>> = LazyLock::new(|| fixed_sql(PG_STEP));

/// The columns of a round of task transitions (`$1`–`$23` of [`PG_STEP`]).
#[derive(Default)]
struct TaskColumns<'a> {
    idx: Vec<i32>,
    job_id: Vec<i64>,
    task_id: Vec<&'a str>,
    from: Vec<&'static str>,
    token: Vec<i64>,
    to: Vec<&'static str>,
    updated_at: Vec<NaiveDateTime>,
    attempt: Vec<Option<i32>>,
    new_token: Vec<Option<i64>>,
    worker: Vec<Option<&'a str>>,
    started_at: Vec<Option<NaiveDateTime>>,
    lease_expires_at: Vec<Option<NaiveDateTime>>,
    result: Vec<Option<String>>,
    set_result: Vec<bool>,
    error: Vec<Option<&'a str>>,
    set_error: Vec<bool>,
    completed_at: Vec<Option<NaiveDateTime>>,
    set_completed_at: Vec<bool>,
    next_attempt_at: Vec<Option<NaiveDateTime>>,
    set_next_attempt_at: Vec<bool>,
    priority: Vec<Option<i32>>,
    retry_base: Vec<Option<i32>>,
    lost_count: Vec<Option<i32>>,
}

/// The attempt records of a round (`$24`–`$33`); `idx` is the input index
/// of the transition that carries the record.
#[derive(Default)]
struct AttemptColumns<'a> {
    idx: Vec<i32>,
    job_id: Vec<i64>,
    task_id: Vec<&'a str>,
    attempt: Vec<i32>,
    status: Vec<&'static str>,
    worker: Vec<Option<&'a str>>,
    error: Vec<Option<&'a str>>,
    output: Vec<Option<&'a str>>,
    started_at: Vec<Option<NaiveDateTime>>,
    finished_at: Vec<Option<NaiveDateTime>>,
}

/// The columns of a round of job transitions (`$34`–`$43`).
#[derive(Default)]
struct JobColumns<'a> {
    idx: Vec<i32>,
    job_id: Vec<i64>,
    from: Vec<&'static str>,
    to: Vec<&'static str>,
    error: Vec<Option<&'a str>>,
    started_at: Vec<Option<NaiveDateTime>>,
    completed_at: Vec<Option<NaiveDateTime>>,
    keep_outcome: Vec<bool>,
    updated_at: Vec<NaiveDateTime>,
    owner: Vec<Option<&'a str>>,
}

/// One execution of [`PG_STEP`] with its binds. Its `QueryId` is static and
/// it never marks itself unsafe to cache, so diesel-async keeps the prepared
/// statement per connection: after the first use a step costs one
/// `Bind`/`Execute`/`Sync` round trip, with no `Parse` and no re-planning.
#[derive(Default)]
struct PgStep<'a> {
    tasks: TaskColumns<'a>,
    attempts: AttemptColumns<'a>,
    jobs: JobColumns<'a>,
    channels: Vec<&'a str>,
    payloads: Vec<&'a str>,
    /// The task transition (input index) a notification announces, sent
    /// only if that transition wins in this step; -1 for none.
    after_idx: Vec<i32>,
}

impl<'a> PgStep<'a> {
    fn push_task(&mut self, index: usize, cas: &'a TaskCas) {
        let (t, set) = (&mut self.tasks, &cas.set);
        t.idx.push(pg_index(index));
        t.job_id.push(cas.job_id);
        t.task_id.push(cas.task_id.as_str());
        t.from.push(cas.from);
        t.token.push(cas.fencing_token);
        t.to.push(set.status);
        t.updated_at.push(set.updated_at);
        t.attempt.push(set.attempt);
        t.new_token.push(set.fencing_token);
        t.worker.push(set.worker.as_deref());
        t.started_at.push(set.started_at);
        t.lease_expires_at.push(set.lease_expires_at);
        t.set_result.push(set.result.is_some());
        t.result.push(
            set.result
                .as_ref()
                .and_then(|r| r.as_ref())
                .map(|json| json.0.to_string()),
        );
        t.set_error.push(set.error.is_some());
        t.error.push(set.error.as_ref().and_then(|e| e.as_deref()));
        t.set_completed_at.push(set.completed_at.is_some());
        t.completed_at.push(set.completed_at.flatten());
        t.set_next_attempt_at.push(set.next_attempt_at.is_some());
        t.next_attempt_at.push(set.next_attempt_at.flatten());
        t.priority.push(set.priority);
        t.retry_base.push(set.retry_base);
        t.lost_count.push(set.lost_count);
        if let Some(attempt) = &cas.attempt {
            let a = &mut self.attempts;
            a.idx.push(pg_index(index));
            a.job_id.push(attempt.job_id);
            a.task_id.push(attempt.task_id.as_str());
            a.attempt.push(attempt.attempt);
            a.status.push(attempt.status);
            a.worker.push(attempt.worker.as_deref());
            a.error.push(attempt.error.as_deref());
            a.output.push(attempt.output.as_deref());
            a.started_at.push(attempt.started_at);
            a.finished_at.push(attempt.finished_at);
        }
    }

    fn push_job(&mut self, index: usize, cas: &'a JobCas) {
        let j = &mut self.jobs;
        j.idx.push(pg_index(index));
        j.job_id.push(cas.job_id);
        j.from.push(cas.from);
        j.to.push(cas.to);
        j.error.push(cas.error.as_deref());
        j.started_at.push(cas.started_at);
        j.completed_at.push(cas.completed_at);
        j.keep_outcome.push(cas.keep_outcome);
        j.updated_at.push(cas.updated_at);
        j.owner.push(cas.owner.as_deref());
    }
}

impl QueryId for PgStep<'_> {
    type QueryId = PgStep<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for PgStep<'_> {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for PgStep<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut parts = PG_STEP_PARTS.iter();
        macro_rules! bind {
            ($($st:ty => $value:expr),* $(,)?) => {$(
                out.push_sql(parts.next().expect("BUG: PG_STEP has fewer placeholders than binds"));
                out.push_bind_param::<$st, _>(&$value)?;
            )*};
        }
        let (t, a, j) = (&self.tasks, &self.attempts, &self.jobs);
        bind!(
            Array<Integer> => t.idx,
            Array<BigInt> => t.job_id,
            Array<Text> => t.task_id,
            Array<Text> => t.from,
            Array<BigInt> => t.token,
            Array<Text> => t.to,
            Array<Timestamp> => t.updated_at,
            Array<Nullable<Integer>> => t.attempt,
            Array<Nullable<BigInt>> => t.new_token,
            Array<Nullable<Text>> => t.worker,
            Array<Nullable<Timestamp>> => t.started_at,
            Array<Nullable<Timestamp>> => t.lease_expires_at,
            Array<Nullable<Text>> => t.result,
            Array<Bool> => t.set_result,
            Array<Nullable<Text>> => t.error,
            Array<Bool> => t.set_error,
            Array<Nullable<Timestamp>> => t.completed_at,
            Array<Bool> => t.set_completed_at,
            Array<Nullable<Timestamp>> => t.next_attempt_at,
            Array<Bool> => t.set_next_attempt_at,
            Array<Nullable<Integer>> => t.priority,
            Array<Nullable<Integer>> => t.retry_base,
            Array<Nullable<Integer>> => t.lost_count,
            Array<Integer> => a.idx,
            Array<BigInt> => a.job_id,
            Array<Text> => a.task_id,
            Array<Integer> => a.attempt,
            Array<Text> => a.status,
            Array<Nullable<Text>> => a.worker,
            Array<Nullable<Text>> => a.error,
            Array<Nullable<Text>> => a.output,
            Array<Nullable<Timestamp>> => a.started_at,
            Array<Nullable<Timestamp>> => a.finished_at,
            Array<Integer> => j.idx,
            Array<BigInt> => j.job_id,
            Array<Text> => j.from,
            Array<Text> => j.to,
            Array<Nullable<Text>> => j.error,
            Array<Nullable<Timestamp>> => j.started_at,
            Array<Nullable<Timestamp>> => j.completed_at,
            Array<Bool> => j.keep_outcome,
            Array<Timestamp> => j.updated_at,
            Array<Nullable<Text>> => j.owner,
            Array<Text> => self.channels,
            Array<Text> => self.payloads,
            Array<Integer> => self.after_idx,
        );
        out.push_sql(
            parts
                .next()
                .expect("BUG: PG_STEP has more placeholders than binds"),
        );
        debug_assert!(
            parts.next().is_none(),
            "BUG: PG_STEP has more placeholders than binds"
        );
        Ok(())
    }
}

/// A winner of a [`PG_STEP`]: `kind` 0 = task, 1 = job; `idx` its input index.
#[derive(QueryableByName)]
struct Won {
    #[diesel(sql_type = Integer)]
    kind: i32,
    #[diesel(sql_type = Integer)]
    idx: i32,
}

/// Input indices as `int4`; a batch is far below 2^31 transitions.
fn pg_index(index: usize) -> i32 {
    i32::try_from(index).expect("BUG: more than 2^31 transitions in one batch")
}

/// Runs one step and marks its winners.
///
/// PostgreSQL re-plans a prepared statement with its actual arrays (a
/// "custom plan", ~0.3 ms for [`PG_STEP`]) for as long as that looks cheaper
/// than the generic plan, and with `unnest` of a parameter estimated at 10
/// rows it always does. The generic plan is the right one here (index
/// look-ups per element, whatever the batch size), so the step runs under
/// `plan_cache_mode = force_generic_plan`, set just for it: the `SET`, the
/// step and the `RESET` are pipelined (sent together, one round trip), and
/// all three are polled to completion even if the step fails, so the
/// session setting never outlives the step.
async fn pg_step(c: &mut AsyncPgConnection, step: PgStep<'_>, outcome: &mut BatchOutcome) -> QueryResult<()> {
    let conn: &AsyncPgConnection = c;
    let (set, won, reset) = futures_util::future::join3(
        SimpleAsyncConnection::batch_execute(&mut &*conn, "SET plan_cache_mode = force_generic_plan"),
        diesel_async::RunQueryDsl::load::<Won>(step, &mut &*conn),
        SimpleAsyncConnection::batch_execute(&mut &*conn, "RESET plan_cache_mode"),
    )
    .await;
    let won = won?;
    set?;
    reset?;
    for Won { kind, idx } in won {
        let slots = match kind {
            0 => &mut outcome.tasks,
            1 => &mut outcome.jobs,
            _ => continue,
        };
        if let Some(slot) = usize::try_from(idx).ok().and_then(|i| slots.get_mut(i)) {
            *slot = true;
        }
    }
    Ok(())
}

/// Applies a batch on PostgreSQL: step k carries the k-th round of task
/// transitions (with the attempt records of that round's winners); the job
/// transitions start in the step of the last round of tasks, so that they
/// see every task transition of the batch; the first step also sends the
/// notifications, except those announcing a task transition, which go with
/// its step and are sent only if it wins. A batch in which no task and no job appears twice (the
/// usual case) is ONE statement, which PostgreSQL runs atomically as its own
/// transaction: no `BEGIN`/`COMMIT`, one round trip in all. Longer batches
/// run their steps in one explicit transaction.
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
    let task_rounds = rounds(tasks.iter().map(|t| (t.job_id, t.task_id.as_str())));
    let job_rounds = rounds(jobs.iter().map(|j| j.job_id));
    // Job transitions apply after every task transition (as on SQLite): the
    // first round of jobs goes with the last round of tasks, whose new
    // statuses it sees through `upd`, and any further rounds follow.
    let first_job_step = task_rounds.len().saturating_sub(1);
    let n_steps = task_rounds.len().max(first_job_step + job_rounds.len()).max(1);
    let step = |k: usize| {
        let mut step = PgStep::default();
        for &index in task_rounds.get(k).map_or(&[][..], Vec::as_slice) {
            step.push_task(index, &tasks[index]);
        }
        let job_round = k.checked_sub(first_job_step).and_then(|r| job_rounds.get(r));
        for &index in job_round.map_or(&[][..], Vec::as_slice) {
            step.push_job(index, &jobs[index]);
        }
        // A notification that announces a task transition goes with the
        // step of that transition (and is sent only if it wins); the others
        // go with the first step.
        let round_of = |task: usize| task_rounds.iter().position(|round| round.contains(&task));
        for n in notifications {
            let (round, after_idx) = match n.after_task {
                Some(task) if task < tasks.len() => (round_of(task).unwrap_or(0), pg_index(task)),
                Some(_) => continue,
                None => (0, -1),
            };
            if round == k {
                step.channels.push(n.channel.as_str());
                step.payloads.push(n.payload.as_str());
                step.after_idx.push(after_idx);
            }
        }
        step
    };
    if n_steps == 1 {
        pg_step(c, step(0), &mut outcome).await?;
    } else {
        c.transaction(async |c: &mut AsyncPgConnection| -> Result<()> {
            for k in 0..n_steps {
                pg_step(c, step(k), &mut outcome).await?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(outcome)
}

/// The compare-and-set `UPDATE` of one task on SQLite, in ONE fixed shape:
/// every column is assigned, an absent change keeping the stored value
/// (`coalesce(?, col)`, or `CASE WHEN ? THEN ? ELSE col END` where NULL is a
/// value to write). diesel's derived `UPDATE` assigns only the columns a
/// transition changes, a different statement per combination that the
/// statement cache does not keep, so every row used to be compiled anew
/// (`sqlite3_prepare_v3` was 17.5 % of CPU); this one is compiled once per
/// connection. Every index of `task_executions` that covers an assigned
/// column also covers `status` (always assigned) in its predicate, so
/// assigning every column writes no more index entries than before. As on
/// PostgreSQL, a transition to `success` loses while its job has a stored
/// cancel request.
const SQLITE_TASK_CAS: &str = "\
UPDATE task_executions SET
    status = ?,
    updated_at = ?,
    attempt = coalesce(?, attempt),
    fencing_token = coalesce(?, fencing_token),
    worker = coalesce(?, worker),
    started_at = coalesce(?, started_at),
    lease_expires_at = coalesce(?, lease_expires_at),
    result = CASE WHEN ? THEN ? ELSE result END,
    error = CASE WHEN ? THEN ? ELSE error END,
    completed_at = CASE WHEN ? THEN ? ELSE completed_at END,
    next_attempt_at = CASE WHEN ? THEN ? ELSE next_attempt_at END,
    priority = coalesce(?, priority),
    retry_base = coalesce(?, retry_base),
    lost_count = CASE WHEN ? IS NULL THEN coalesce(?, lost_count) ELSE 0 END
WHERE job_id = ? AND task_id = ? AND status = ? AND fencing_token = ?
    AND (? <> 'success' OR NOT EXISTS (
        SELECT 1 FROM jobs WHERE jobs.id = task_executions.job_id AND jobs.cancel_requested_at IS NOT NULL))";

static SQLITE_TASK_CAS_PARTS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| SQLITE_TASK_CAS.split('?').collect());

/// [`SQLITE_TASK_CAS`] bound to one [`TaskCas`]; a static `QueryId`, so
/// diesel caches the prepared statement.
pub(crate) struct SqliteTaskCas<'a> {
    cas: &'a TaskCas,
    set_result: bool,
    result: Option<&'a JsonValue>,
    set_error: bool,
    error: Option<&'a str>,
    set_completed_at: bool,
    completed_at: Option<NaiveDateTime>,
    set_next_attempt_at: bool,
    next_attempt_at: Option<NaiveDateTime>,
}

impl<'a> SqliteTaskCas<'a> {
    pub(crate) fn new(cas: &'a TaskCas) -> Self {
        let set = &cas.set;
        SqliteTaskCas {
            cas,
            set_result: set.result.is_some(),
            result: set.result.as_ref().and_then(Option::as_ref),
            set_error: set.error.is_some(),
            error: set.error.as_ref().and_then(|e| e.as_deref()),
            set_completed_at: set.completed_at.is_some(),
            completed_at: set.completed_at.flatten(),
            set_next_attempt_at: set.next_attempt_at.is_some(),
            next_attempt_at: set.next_attempt_at.flatten(),
        }
    }
}

impl QueryId for SqliteTaskCas<'_> {
    type QueryId = SqliteTaskCas<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<Conn> RunQueryDsl<Conn> for SqliteTaskCas<'_> {}

impl QueryFragment<Sqlite> for SqliteTaskCas<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        use crate::schema::task_executions as t;
        type Of<C> = <C as diesel::Expression>::SqlType;
        let mut parts = SQLITE_TASK_CAS_PARTS.iter();
        macro_rules! bind {
            ($($st:ty => $value:expr),* $(,)?) => {$(
                out.push_sql(parts.next().expect("BUG: SQLITE_TASK_CAS has fewer placeholders than binds"));
                out.push_bind_param::<$st, _>(&$value)?;
            )*};
        }
        let (cas, set) = (self.cas, &self.cas.set);
        bind!(
            Of<t::status> => set.status,
            Of<t::updated_at> => set.updated_at,
            Nullable<Of<t::attempt>> => set.attempt,
            Nullable<Of<t::fencing_token>> => set.fencing_token,
            Of<t::worker> => set.worker,
            Of<t::started_at> => set.started_at,
            Of<t::lease_expires_at> => set.lease_expires_at,
            Bool => self.set_result,
            Of<t::result> => self.result,
            Bool => self.set_error,
            Of<t::error> => self.error,
            Bool => self.set_completed_at,
            Of<t::completed_at> => self.completed_at,
            Bool => self.set_next_attempt_at,
            Of<t::next_attempt_at> => self.next_attempt_at,
            Nullable<Of<t::priority>> => set.priority,
            Nullable<Of<t::retry_base>> => set.retry_base,
            Nullable<Of<t::retry_base>> => set.retry_base,
            Nullable<Of<t::lost_count>> => set.lost_count,
            Of<t::job_id> => cas.job_id,
            Of<t::task_id> => cas.task_id,
            Of<t::status> => cas.from,
            Of<t::fencing_token> => cas.fencing_token,
            Of<t::status> => set.status,
        );
        out.push_sql(
            parts
                .next()
                .expect("BUG: SQLITE_TASK_CAS has more placeholders than binds"),
        );
        debug_assert!(
            parts.next().is_none(),
            "BUG: SQLITE_TASK_CAS has more placeholders than binds"
        );
        Ok(())
    }
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
        let won = SqliteTaskCas::new(cas).execute(c)? == 1;
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

impl crate::Store {
    /// Commits a batch of transitions so that one job's bad transition (a
    /// value the store refuses, a constraint it breaks) cannot hold back the
    /// other jobs in the batch. The whole batch is tried first, as ONE
    /// transaction; if it fails, it is bisected by job: each half is tried
    /// as a transaction of its own, and a half that fails again is split
    /// further, down to single jobs. Every job's transitions thus commit or
    /// fail together, in input order, and a batch with one bad job costs
    /// about 2 × log2(jobs) transactions more than a healthy one.
    ///
    /// When the store is unavailable ([`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable))
    /// splitting cannot help: the jobs not committed yet are reported
    /// together with that error, and nothing more is tried.
    ///
    /// The batch's notifications are NOT sent: which of them still hold
    /// depends on which jobs committed, so the caller sends those (with
    /// [`Store::notify`](crate::Store::notify), or a batch of only
    /// notifications). Never fails as a whole: see [`SplitOutcome::failed`].
    ///
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn example(store: cascade_store::Store, batch: cascade_store::TransitionBatch) {
    /// let split = store.commit_transitions_by_job(&batch).await;
    /// for failed in &split.failed {
    ///     eprintln!("jobs {:?} not committed: {}", failed.job_ids, failed.error);
    /// }
    /// # }
    /// ```
    #[tracing::instrument(skip_all, fields(n_tasks = batch.tasks.len(), n_jobs = batch.jobs.len()))]
    pub async fn commit_transitions_by_job(&self, batch: &TransitionBatch) -> SplitOutcome {
        let mut split = SplitOutcome {
            outcome: BatchOutcome {
                tasks: vec![false; batch.tasks.len()],
                jobs: vec![false; batch.jobs.len()],
            },
            failed: Vec::new(),
        };
        // Every job, in order of first appearance, with its transitions.
        let mut order: Vec<JobId> = Vec::new();
        let mut parts: HashMap<JobId, (Vec<usize>, Vec<usize>)> = HashMap::new();
        let job_ids = batch.tasks.iter().map(|t| (t.job_id, true));
        for (index, (job_id, is_task)) in job_ids
            .enumerate()
            .chain(batch.jobs.iter().map(|j| (j.job_id, false)).enumerate())
        {
            let part = parts.entry(job_id).or_insert_with(|| {
                order.push(job_id);
                (Vec::new(), Vec::new())
            });
            if is_task {
                part.0.push(index);
            } else {
                part.1.push(index);
            }
        }
        // Ranges of `order` still to commit; the first is on top.
        let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
        todo.push(0..order.len());
        while let Some(range) = todo.pop() {
            let mut tasks: Vec<usize> = Vec::new();
            let mut jobs: Vec<usize> = Vec::new();
            for job_id in &order[range.clone()] {
                let (t, j) = &parts[job_id];
                tasks.extend(t);
                jobs.extend(j);
            }
            // Input order: a later transition of a row must see the earlier one.
            tasks.sort_unstable();
            jobs.sort_unstable();
            let part = TransitionBatch {
                tasks: tasks.iter().map(|&i| batch.tasks[i].clone()).collect(),
                jobs: jobs.iter().map(|&i| batch.jobs[i].clone()).collect(),
                notifications: Vec::new(),
            };
            match self.commit_transitions(&part).await {
                Ok(outcome) => {
                    for (&i, won) in tasks.iter().zip(outcome.tasks) {
                        split.outcome.tasks[i] = won;
                    }
                    for (&i, won) in jobs.iter().zip(outcome.jobs) {
                        split.outcome.jobs[i] = won;
                    }
                }
                Err(error) if range.len() == 1 => {
                    tracing::warn!(job.id = %order[range.start], %error, "a job's transitions were not committed");
                    split.failed.push(UncommittedJobs {
                        job_ids: vec![order[range.start]],
                        error,
                    });
                }
                Err(error) if error.kind() == ErrorKind::Unavailable => {
                    let mut job_ids = order[range].to_vec();
                    for rest in todo.drain(..).rev() {
                        job_ids.extend_from_slice(&order[rest]);
                    }
                    split.failed.push(UncommittedJobs { job_ids, error });
                }
                Err(_) => {
                    let middle = range.start + range.len() / 2;
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
            }
        }
        split
    }
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
