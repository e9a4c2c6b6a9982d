//! `shutdown` while tasks run loses nothing: finished work stays committed,
//! the interrupted task stays `running`, and the next engine resumes the job
//! without running finished tasks again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cascade_core::{Cascade, JobStatus, TaskContext, TaskEventKind, TaskStatus, Topic};
use cascade_tests::{backend_tests, dag_from, ir, wait_for_task_event};
use serde_json::json;

backend_tests!(shutdown_mid_job_then_resume);

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
