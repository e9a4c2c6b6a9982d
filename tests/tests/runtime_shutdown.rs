//! `shutdown` while tasks run loses nothing: finished work stays committed,
//! the interrupted task stays `running`, and the next engine resumes the job
//! without running finished tasks again. Callbacks in flight finish before it
//! returns, and a cron round in flight is stopped: nothing of the engine
//! happens afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cascade_core::{
    CallbackContext, Cascade, JobFilter, JobStatus, TaskContext, TaskEventKind, TaskStatus, Topic,
};
use cascade_store::testing::PgSession;
use cascade_tests::crash::{mark, marks, temp_dir};
use cascade_tests::{
    backend_tests, dag_from, init_tracing, ir, postgres_url, run_job, wait_for, wait_for_task_event,
};
use serde_json::json;

backend_tests!(shutdown_mid_job_then_resume, shutdown_awaits_callbacks_in_flight);

fn pipeline() -> String {
    ir(
        "resumable",
        &[
            ("first", "first", &[]),
            ("slow", "slow", &["first"]),
            ("last", "last", &["slow"]),
        ],
    )
}

async fn shutdown_mid_job_then_resume(url: &str) {
    let first_runs = Arc::new(AtomicU32::new(0));
    let slow_runs = Arc::new(AtomicU32::new(0));
    let counting = |counter: &Arc<AtomicU32>| {
        let counter = Arc::clone(counter);
        move |_ctx: TaskContext| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(json!("first done"))
            }
        }
    };

    let engine_one = Cascade::builder()
        .database_url(url)
        .workers(2)
        .shutdown_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("engine");
    let stuck = dag_from(&pipeline())
        .with_handler("first", counting(&first_runs))
        .with_handler("slow", {
            let slow_runs = Arc::clone(&slow_runs);
            move |_ctx: TaskContext| {
                let slow_runs = Arc::clone(&slow_runs);
                async move {
                    slow_runs.fetch_add(1, Ordering::SeqCst);
                    // Ignores its cancellation signal: only the shutdown timeout stops it.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(json!("never"))
                }
            }
        })
        .with_handler("last", |_ctx: TaskContext| async { Ok(json!("last done")) });
    let record = engine_one.register_dag(stuck).await.expect("register");
    let mut events = engine_one.subscribe(Topic::Dag(record.id));
    let job = engine_one
        .trigger_job(record.id, "manual", json!({ "run": 1 }))
        .await
        .expect("trigger");
    // Wait until `slow` is running.
    wait_for_task_event(&mut events, Some("slow"), TaskEventKind::Started).await;
    engine_one.shutdown().await.expect("shutdown");
    assert!(
        engine_one
            .trigger_job(record.id, "manual", json!({}))
            .await
            .is_err(),
        "a stopped engine accepts no jobs"
    );

    // Nothing is lost or corrupted: the job is still running, first's result is kept.
    let details = engine_one
        .store()
        .get_job_with_details(job.id)
        .await
        .expect("details");
    assert_eq!(details.job.status, JobStatus::Running);
    let status = |id: &str| {
        details
            .tasks
            .iter()
            .find(|t| t.task_id == id)
            .map(|t| (t.status, t.attempt))
    };
    assert_eq!(status("first"), Some((TaskStatus::Success, 1)));
    assert_eq!(status("slow"), Some((TaskStatus::Running, 1)));
    assert_eq!(status("last"), Some((TaskStatus::Pending, 0)));
    drop(engine_one);

    // A new engine resumes the job once the DAG is registered again.
    let engine_two = Cascade::builder()
        .database_url(url)
        .workers(2)
        .build()
        .await
        .expect("engine");
    let healthy = dag_from(&pipeline())
        .with_handler("first", counting(&first_runs))
        .with_handler("slow", |ctx: TaskContext| async move {
            Ok(json!({ "attempt": ctx.attempt(), "saw_first": ctx.upstream("first").cloned() }))
        })
        .with_handler("last", |_ctx: TaskContext| async { Ok(json!("last done")) });
    engine_two.register_dag(healthy).await.expect("register");
    let job = tokio::time::timeout(Duration::from_secs(30), engine_two.wait_for_job(job.id))
        .await
        .expect("the job was not resumed")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(first_runs.load(Ordering::SeqCst), 1, "a finished task ran again");
    assert_eq!(slow_runs.load(Ordering::SeqCst), 1);
    let tasks = engine_two
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    let slow = tasks.iter().find(|t| t.task_id == "slow").expect("slow");
    // The interrupted attempt keeps its number; its result saw first's stored result.
    assert_eq!(slow.attempt, 1);
    assert_eq!(
        slow.result,
        Some(json!({ "attempt": 1, "saw_first": "first done" }))
    );
    assert!(
        slow.fencing_token >= 2,
        "the resumed attempt got a new fencing token"
    );
    engine_two.shutdown().await.expect("shutdown");
}

/// A callback that takes a second, started by the job's last commit, has
/// finished when `shutdown` returns.
async fn shutdown_awaits_callbacks_in_flight(url: &str) {
    let dir = temp_dir("slow-callback");
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(30))
        .build()
        .await
        .expect("engine");
    let marks_in = dir.clone();
    let dag = dag_from(
        r#"{"ir_version":1,"name":"slow_callback","on_success":"slow","tasks":[{"id":"a","handler":"ok"}]}"#,
    )
    .with_handler("ok", |_ctx: TaskContext| async { Ok(json!("ok")) })
    .with_callback("slow", move |ctx: CallbackContext| {
        let dir = marks_in.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            mark(&dir, "callback", &ctx.job_id.to_string())?;
            Ok(())
        }
    });
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Success);
    cascade.shutdown().await.expect("shutdown");
    assert_eq!(
        marks(&dir, "callback"),
        [job.id.to_string()],
        "the callback in flight had finished when shutdown returned"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cron loop is in the middle of firing a tick (its insert waits on a
/// lock this test holds) when the engine shuts down: the round is stopped,
/// so once the lock goes, no job of that tick appears, and every job of the
/// engine is finished or released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_cron_round_in_flight() {
    init_tracing();
    let Some(db) = postgres_url().await else {
        return;
    };
    let cascade = Cascade::builder()
        .database_url(&db.url)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("engine");
    let every_second = json!({
        "ir_version": 1, "name": "stopped_cron", "schedule": "* * * * * *",
        "tasks": [{ "id": "tick", "handler": "tick" }]
    });
    let dag = dag_from(&every_second.to_string())
        .with_handler("tick", |_ctx: TaskContext| async { Ok(json!("tick")) });
    let record = cascade.register_dag(dag).await.expect("register");
    let jobs = async || {
        cascade
            .store()
            .list_jobs(JobFilter {
                dag_id: Some(record.id),
                ..JobFilter::default()
            })
            .await
            .expect("jobs")
    };
    wait_for("the cron fired a tick", async || !jobs().await.is_empty()).await;
    let next = cascade
        .store()
        .get_dag(record.id)
        .await
        .expect("dag")
        .next_fire_at
        .expect("the schedule is running");

    // A tick a few seconds ahead is taken by an uncommitted job of ours: the
    // cron's insert of that tick waits for this transaction.
    let tick = next.timestamp() + 3;
    let mut holder = PgSession::connect(&db.url).await;
    holder
        .execute(&format!(
            "BEGIN; INSERT INTO jobs (dag_id, dag_version, status, trigger, idempotency_key) \
             VALUES ({}, 1, 'pending', 'test', 'cron:{tick}')",
            record.id
        ))
        .await;
    let mut monitor = PgSession::connect(&db.url).await;
    let waiting = "SELECT coalesce(min(pid), 0)::int8 AS n FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query ILIKE 'INSERT INTO%jobs%'";
    let mut blocked = 0;
    wait_for("the cron waits for the held tick", async || {
        blocked = monitor.count(waiting).await;
        blocked > 0
    })
    .await;

    cascade.shutdown().await.expect("shutdown");
    holder.execute("ROLLBACK").await;
    // Once the engine is gone, so is the session it fired the tick with: it
    // either committed the tick before, or never will.
    drop(cascade);
    let alive = format!("SELECT count(*)::int8 AS n FROM pg_stat_activity WHERE pid = {blocked}");
    wait_for("the engine's session ended", async || {
        monitor.count(&alive).await == 0
    })
    .await;
    let fired_late = monitor
        .count(&format!(
            "SELECT count(*)::int8 AS n FROM jobs WHERE idempotency_key = 'cron:{tick}'"
        ))
        .await;
    assert_eq!(fired_late, 0, "the tick in flight was fired after shutdown");
    let owned = monitor
        .count(&format!(
            "SELECT count(*)::int8 AS n FROM jobs WHERE dag_id = {} AND owner IS NOT NULL",
            record.id
        ))
        .await;
    assert_eq!(owned, 0, "a job is still owned by the stopped engine");
}
