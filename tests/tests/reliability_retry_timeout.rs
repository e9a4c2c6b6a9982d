//! Retries with backoff, persisted across a restart; timeouts that stop the
//! handler and state the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cascade_core::{
    CallbackContext, Cascade, Dag, Event, JobStatus, Role, TaskContext, TaskError, TaskEventKind, TaskStatus,
    Topic,
};
use cascade_tests::{
    Log, backend_tests, dag_from, engine, init_tracing, postgres_url, run_job, wait_for_task_event,
};
use serde_json::json;
use tokio_stream::StreamExt;

backend_tests!(
    retries_until_success_and_records_attempts,
    fatal_error_is_not_retried,
    timeout_stops_the_handler_and_retries,
    retry_scheduled_before_a_restart_runs_after_it,
);

fn flaky(
    fail_times: u32,
    calls: &Arc<AtomicU32>,
) -> impl Fn(TaskContext) -> std::pin::Pin<Box<dyn std::future::Future<Output = cascade_core::TaskResult> + Send>>
+ Send
+ Sync
+ 'static {
    let calls = Arc::clone(calls);
    move |ctx: TaskContext| {
        let calls = Arc::clone(&calls);
        Box::pin(async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(ctx.attempt(), n, "the context carries the attempt number");
            assert_eq!(
                ctx.idempotency_key(),
                format!("{}:{}", ctx.job_id(), ctx.task_id())
            );
            if n <= fail_times {
                Err(TaskError::new(format!("flaky failure {n}")))
            } else {
                Ok(json!({ "succeeded_on": n }))
            }
        })
    }
}

async fn retries_until_success_and_records_attempts(url: &str) {
    let cascade = engine(url, 2).await;
    let calls = Arc::new(AtomicU32::new(0));
    let dag = dag_from(
        r#"{"ir_version":1,"name":"flaky","defaults":{"retries":3,"retry_delay":0},
            "tasks":[{"id":"unstable","handler":"unstable"},{"id":"after","handler":"after","depends_on":["unstable"]}]}"#,
    )
    .with_handler("unstable", flaky(2, &calls))
    .with_handler("after", |ctx: TaskContext| async move { Ok(ctx.upstream("unstable").cloned().unwrap_or_default()) });
    let record = cascade.register_dag(dag).await.expect("register");
    let mut events = cascade.subscribe(Topic::Dag(record.id));
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let attempts = cascade
        .store()
        .list_task_attempts(job.id, "unstable")
        .await
        .expect("attempts");
    let summary: Vec<(u32, TaskStatus, Option<String>)> = attempts
        .iter()
        .map(|a| (a.attempt, a.status, a.error.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, TaskStatus::UpForRetry, Some("flaky failure 1".to_owned())),
            (2, TaskStatus::UpForRetry, Some("flaky failure 2".to_owned())),
            (3, TaskStatus::Success, None),
        ]
    );
    assert!(
        attempts
            .iter()
            .all(|a| a.started_at.is_some() && a.finished_at >= a.started_at)
    );
    let tasks = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    let unstable = tasks.iter().find(|t| t.task_id == "unstable").expect("row");
    assert_eq!(
        (unstable.status, unstable.attempt, unstable.error.clone()),
        (TaskStatus::Success, 3, None)
    );
    let after = tasks.iter().find(|t| t.task_id == "after").expect("row");
    assert_eq!(after.result, Some(json!({ "succeeded_on": 3 })));

    // The job's details add each task's attempts up.
    let details = cascade
        .store()
        .get_job_with_details(job.id)
        .await
        .expect("details");
    let summaries: Vec<(&str, u32)> = details
        .attempt_summaries
        .iter()
        .map(|s| (s.task_id.as_str(), s.attempts))
        .collect();
    assert_eq!(summaries, vec![("unstable", 3), ("after", 1)]);
    let unstable_summary = &details.attempt_summaries[0];
    assert_eq!(unstable_summary.first_started_at, attempts[0].started_at);
    assert_eq!(unstable_summary.last_finished_at, attempts[2].finished_at);
    let added_up: Duration = attempts
        .iter()
        .map(|a| {
            (a.finished_at.expect("end") - a.started_at.expect("start"))
                .to_std()
                .expect("positive")
        })
        .sum();
    assert_eq!(unstable_summary.total_run_time, added_up);

    let mut retries_seen = 0;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(100), events.next()).await {
        if let Event::Task(e) = event
            && e.kind == TaskEventKind::RetryScheduled
        {
            retries_seen += 1;
            assert_eq!(e.status, TaskStatus::UpForRetry);
        }
    }
    assert_eq!(retries_seen, 2);
    cascade.shutdown().await.expect("shutdown");
}

async fn fatal_error_is_not_retried(url: &str) {
    let cascade = engine(url, 2).await;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let dag = dag_from(r#"{"ir_version":1,"name":"fatal","tasks":[{"id":"bad","handler":"bad","retries":5,"retry_delay":0}]}"#)
        .with_handler("bad", move |_ctx: TaskContext| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Err(TaskError::fatal("configuration is wrong"))
            }
        });
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    cascade.shutdown().await.expect("shutdown");
}

async fn timeout_stops_the_handler_and_retries(url: &str) {
    let cascade = engine(url, 2).await;
    let finished_late = Arc::new(AtomicU32::new(0));
    let late = Arc::clone(&finished_late);
    let cancelled_seen = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&cancelled_seen);
    let dag = dag_from(
        r#"{"ir_version":1,"name":"slowpoke","tasks":[{"id":"slow","handler":"slow","timeout":1,"retries":1,"retry_delay":0}]}"#,
    )
    .with_handler("slow", move |ctx: TaskContext| {
        let late = Arc::clone(&late);
        let seen = Arc::clone(&seen);
        async move {
            let token = ctx.cancellation().clone();
            tokio::spawn(async move {
                token.cancelled().await;
                seen.fetch_add(1, Ordering::SeqCst);
            });
            tokio::time::sleep(Duration::from_secs(3)).await;
            late.fetch_add(1, Ordering::SeqCst);
            Ok(json!("too late"))
        }
    });
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Failed);
    let attempts = cascade
        .store()
        .list_task_attempts(job.id, "slow")
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 2, "timed out, retried once, timed out again");
    for attempt in &attempts {
        let error = attempt.error.clone().unwrap_or_default();
        assert!(
            error.contains("timed out after 1s"),
            "error states the limit: {error}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        finished_late.load(Ordering::SeqCst),
        0,
        "the handler's future was dropped"
    );
    assert_eq!(
        cancelled_seen.load(Ordering::SeqCst),
        2,
        "the cancellation signal fired on each timeout"
    );
    let tasks = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    assert_eq!(tasks[0].status, TaskStatus::Failed);
    assert_eq!(tasks[0].result, None);
    cascade.shutdown().await.expect("shutdown");
}

fn backoff_dag(calls: &Arc<AtomicU32>) -> Dag {
    dag_from(
        r#"{"ir_version":1,"name":"backoff","tasks":[
            {"id":"later","handler":"later","retries":2,"retry_delay":2,"retry_jitter":false}]}"#,
    )
    .with_handler("later", flaky(1, calls))
}

async fn retry_scheduled_before_a_restart_runs_after_it(url: &str) {
    let calls = Arc::new(AtomicU32::new(0));
    let first = Cascade::builder()
        .database_url(url)
        .workers(2)
        .build()
        .await
        .expect("engine");
    let record = first.register_dag(backoff_dag(&calls)).await.expect("register");
    let mut events = first.subscribe(Topic::Dag(record.id));
    let job = first
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    wait_for_task_event(&mut events, None, TaskEventKind::RetryScheduled).await;
    first.shutdown().await.expect("shutdown");
    let row = first
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks")
        .remove(0);
    assert_eq!(row.status, TaskStatus::UpForRetry);
    let next_attempt_at = row.next_attempt_at.expect("the retry time is persisted");
    drop(first);

    let second = Cascade::builder()
        .database_url(url)
        .workers(2)
        .build()
        .await
        .expect("engine");
    second.register_dag(backoff_dag(&calls)).await.expect("register");
    let job = tokio::time::timeout(Duration::from_secs(20), second.wait_for_job(job.id))
        .await
        .expect("the retry never ran")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    let attempts = second
        .store()
        .list_task_attempts(job.id, "later")
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 2);
    let second_start = attempts[1].started_at.expect("started");
    assert!(
        second_start >= next_attempt_at,
        "retry ran before its backoff: {second_start} < {next_attempt_at}"
    );
    second.shutdown().await.expect("shutdown");
}

/// Distributed mode: a task that a worker runs and that fails on every
/// attempt fires `on_retry` exactly once per retry, however often the
/// scheduler reads its row (each notification of the worker makes it read
/// the row again, and so does its polling fallback, so a row read while it
/// still said `up_for_retry` may arrive after the retry was queued).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_retry_fires_once_per_retry_on_workers() {
    init_tracing();
    let Some(db) = postgres_url().await else {
        return;
    };
    const TASKS: usize = 10;
    const RETRIES: usize = 2;
    let retried = Log::default();
    let dag = || {
        let tasks: Vec<serde_json::Value> = (0..TASKS)
            .map(|i| {
                json!({
                    "id": format!("t{i}"), "handler": "fail", "retries": RETRIES,
                    "retry_delay": 0, "retry_jitter": false, "on_retry": "count"
                })
            })
            .collect();
        let ir = json!({ "ir_version": 1, "name": "always_fails", "tasks": tasks });
        let retried = retried.clone();
        dag_from(&ir.to_string())
            .with_handler("fail", |ctx: TaskContext| async move {
                Err(TaskError::new(format!("attempt {} fails", ctx.attempt())))
            })
            .with_callback("count", move |ctx: CallbackContext| {
                let retried = retried.clone();
                async move {
                    retried.push(format!("{} {}", ctx.task_id.unwrap_or_default(), ctx.attempt));
                    Ok(())
                }
            })
    };
    let scheduler = Cascade::builder()
        .database_url(&db.url)
        .role(Role::Scheduler)
        .heartbeat_interval(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .expect("scheduler");
    let worker = Cascade::builder()
        .database_url(&db.url)
        .role(Role::Worker)
        .capacity(TASKS)
        .heartbeat_interval(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(20))
        .build()
        .await
        .expect("worker");
    worker.register_dag(dag()).await.expect("register");
    let job = run_job(&scheduler, dag()).await;
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    // The shutdown waits for the callbacks in flight.
    scheduler.shutdown().await.expect("shutdown");
    worker.shutdown().await.expect("shutdown");
    let mut fired = retried.entries();
    fired.sort();
    let mut expected: Vec<String> = (0..TASKS)
        .flat_map(|i| (1..=RETRIES).map(move |attempt| format!("t{i} {attempt}")))
        .collect();
    expected.sort();
    assert_eq!(fired, expected, "on_retry fired once per retry");
}
