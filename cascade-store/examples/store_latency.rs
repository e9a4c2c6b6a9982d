//! Measures commit latency of task transitions on SQLite and (when
//! `DATABASE_URL` is set) PostgreSQL.
//!
//! ```text
//! DATABASE_URL=postgres://root@127.0.0.1:5432/test \
//!     cargo run --release -p cascade-store --example store_latency
//! ```
//!
//! On PostgreSQL it uses the database named by `DATABASE_URL` (tables in the
//! `cascade` schema); the rows it creates are left behind.

use std::time::{Duration, Instant};

use cascade_store::{
    JobId, JobStatus, NewDag, NewJob, NewTask, Notification, Store, TaskAttempt, TaskChanges, TaskStatus,
    TaskTransition, TransitionBatch,
};

const SINGLE_ROUNDS: usize = 500;
/// Scheduler-like turns: `TURN_WIDTH` running tasks finish (`success`, with
/// an attempt record) and as many pending ones start (`running`).
const TURN_ROUNDS: usize = 300;
const BATCH_SIZE: usize = 1_000;
const BATCH_ROUNDS: usize = 5;

fn transition(job: JobId, task: usize, from: TaskStatus, to: TaskStatus) -> TaskTransition {
    TaskTransition {
        job_id: job,
        task_id: format!("t{task}"),
        from,
        fencing_token: 0,
        to,
        changes: TaskChanges::default(),
    }
}

async fn new_job(store: &Store, n_tasks: usize) -> Result<JobId, cascade_store::StoreError> {
    let dag = store
        .upsert_dag(NewDag {
            name: "latency".into(),
            description: "store_latency example".into(),
            schedule: None,
            definition: "{}".into(),
            hash: "latency".into(),
        })
        .await?;
    let tasks = (0..n_tasks)
        .map(|i| NewTask {
            task_id: format!("t{i}"),
            queue: "default".into(),
            status: TaskStatus::Pending,
            attempt: 0,
            fencing_token: 0,
            started_at: None,
            priority: 0,
            labels: Vec::new(),
        })
        .collect();
    let job = store
        .create_job(NewJob {
            dag_id: dag.id,
            dag_version: dag.version,
            status: JobStatus::Pending,
            trigger: "bench".into(),
            params: serde_json::json!({}),
            idempotency_key: None,
            owner: None,
            lease_expires_at: None,
            tasks,
        })
        .await?;
    Ok(job.job.id)
}

/// A finishing transition with its attempt record, as the scheduler commits it.
fn finish(job: JobId, task: usize) -> TaskTransition {
    let now = chrono::Utc::now();
    TaskTransition {
        job_id: job,
        task_id: format!("t{task}"),
        from: TaskStatus::Running,
        fencing_token: 0,
        to: TaskStatus::Success,
        changes: TaskChanges {
            result: Some(serde_json::Value::Null),
            completed_at: Some(now),
            record_attempt: Some(TaskAttempt {
                job_id: job,
                task_id: format!("t{task}"),
                attempt: 1,
                status: TaskStatus::Success,
                worker: None,
                error: None,
                output: Some("null".into()),
                started_at: Some(now),
                finished_at: Some(now),
            }),
            ..TaskChanges::default()
        },
    }
}

/// A starting transition, as the scheduler commits it.
fn start(job: JobId, task: usize) -> TaskTransition {
    TaskTransition {
        changes: TaskChanges {
            attempt: Some(1),
            started_at: Some(chrono::Utc::now()),
            ..TaskChanges::default()
        },
        ..transition(job, task, TaskStatus::Pending, TaskStatus::Running)
    }
}

/// `TURN_ROUNDS` commits of `width` finishing + `width` starting transitions
/// (plus one notification when `notify`); prints the latency distribution.
async fn measure_turns(
    label: &str,
    store: &Store,
    width: usize,
    notify: bool,
) -> Result<(), cascade_store::StoreError> {
    let job = new_job(store, (TURN_ROUNDS + 1) * width).await?;
    let first = TransitionBatch {
        tasks: (0..width).map(|task| start(job, task)).collect(),
        jobs: Vec::new(),
        notifications: Vec::new(),
    };
    store.commit_transitions(&first).await?;
    let mut samples = Vec::with_capacity(TURN_ROUNDS);
    for round in 0..TURN_ROUNDS {
        let base = round * width;
        let batch = TransitionBatch {
            tasks: (base..base + width)
                .map(|task| finish(job, task))
                .chain((base + width..base + 2 * width).map(|task| start(job, task)))
                .collect(),
            jobs: Vec::new(),
            notifications: if notify {
                vec![Notification::new("cascade_latency", "turn")]
            } else {
                Vec::new()
            },
        };
        let started = Instant::now();
        let outcome = store.commit_transitions(&batch).await?;
        samples.push(started.elapsed());
        assert!(outcome.tasks.iter().all(|won| *won));
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let n = 2 * width;
    let with = if notify { " + notify" } else { "" };
    println!(
        "{label}: turn of {n} ({width} with attempts){with} x{TURN_ROUNDS}: mean {mean:?}, p50 {:?}, p99 {:?}, max {:?}, {} over 1 ms",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
        samples.iter().filter(|s| **s > Duration::from_millis(1)).count()
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn measure(label: &str, url: &str) -> Result<(), cascade_store::StoreError> {
    let store = Store::open(Some(url)).await?;

    // Single transitions: one compare-and-set per commit, sequentially.
    let job = new_job(&store, SINGLE_ROUNDS).await?;
    let mut samples = Vec::with_capacity(SINGLE_ROUNDS);
    for task in 0..SINGLE_ROUNDS {
        let started = Instant::now();
        let won = store
            .transition_task(transition(job, task, TaskStatus::Pending, TaskStatus::Queued))
            .await?;
        samples.push(started.elapsed());
        assert!(won);
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{label}: transition_task x{SINGLE_ROUNDS}: mean {mean:?}, p50 {:?}, p99 {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    );

    measure_turns(label, &store, 1, false).await?;
    measure_turns(label, &store, 4, false).await?;
    measure_turns(label, &store, 4, true).await?;

    // Batches: BATCH_SIZE transitions in one commit_transitions call.
    let mut batch_times = Vec::with_capacity(BATCH_ROUNDS);
    for _ in 0..BATCH_ROUNDS {
        let job = new_job(&store, BATCH_SIZE).await?;
        let batch = TransitionBatch {
            tasks: (0..BATCH_SIZE)
                .map(|task| transition(job, task, TaskStatus::Pending, TaskStatus::Queued))
                .collect(),
            jobs: Vec::new(),
            notifications: Vec::new(),
        };
        let started = Instant::now();
        let outcome = store.commit_transitions(&batch).await?;
        batch_times.push(started.elapsed());
        assert!(outcome.tasks.iter().all(|won| *won));
    }
    batch_times.sort();
    let best = batch_times[0];
    println!(
        "{label}: commit_transitions of {BATCH_SIZE}: median {:?}, best {best:?} ({:.0} transitions/s)",
        percentile(&batch_times, 0.5),
        BATCH_SIZE as f64 / percentile(&batch_times, 0.5).as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), cascade_store::StoreError> {
    let path = std::env::temp_dir().join(format!("cascade-latency-{}.db", std::process::id()));
    let sqlite_url = format!("sqlite://{}", path.display());
    measure("sqlite (WAL, synchronous=NORMAL)", &sqlite_url).await?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => measure("postgres", &url).await?,
        _ => println!("postgres: skipped (set DATABASE_URL=postgres://…)"),
    }
    Ok(())
}
