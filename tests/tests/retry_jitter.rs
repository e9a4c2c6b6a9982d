//! Retry jitter is "equal jitter": a retry waits at least half of its
//! configured delay, never the near-zero wait full jitter can pick.

use std::time::Duration;

use cascade_core::{JobStatus, TaskContext, TaskError};
use cascade_tests::{backend_tests, dag_from, engine, run_job};
use serde_json::json;

backend_tests!(retries_wait_at_least_half_the_configured_delay);

async fn retries_wait_at_least_half_the_configured_delay(url: &str) {
    let cascade = engine(url, 8).await;
    // Five tasks whose first attempt fails, each with a 2 s jittered delay:
    // under full jitter each would retry in under 1 s half of the time.
    let ids: Vec<String> = (0..5).map(|i| format!("flaky{i}")).collect();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| json!({ "id": id, "handler": "flaky", "retries": 1, "retry_delay": 2 }))
        .collect();
    let ir = json!({ "ir_version": 1, "name": "jittered", "tasks": tasks });
    let dag = dag_from(&ir.to_string()).with_handler("flaky", |ctx: TaskContext| async move {
        if ctx.attempt() == 1 {
            return Err(TaskError::new("first attempt fails"));
        }
        Ok(json!(ctx.attempt()))
    });
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Success);
    for id in &ids {
        let attempts = cascade
            .store()
            .list_task_attempts(job.id, id)
            .await
            .expect("attempts");
        assert_eq!(attempts.len(), 2, "{id}: {attempts:?}");
        let failed_at = attempts[0].finished_at.expect("finished");
        let retried_at = attempts[1].started_at.expect("started");
        let waited = (retried_at - failed_at).to_std().unwrap_or_default();
        // 1 s is half of the 2 s delay; the margin covers clock rounding.
        assert!(
            waited >= Duration::from_millis(990),
            "{id} retried after {waited:?}, before half of its 2 s retry_delay"
        );
    }
    cascade.shutdown().await.expect("shutdown");
}
