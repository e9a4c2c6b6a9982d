//! `retry_job` re-runs a failed job from the point of failure; bad IR input
//! gets typed errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cascade_core::{
    Dag, Error, IrError, JobStatus, TaskContext, TaskError, TaskEventKind, TaskStatus, Topic, ValidationError,
};
use cascade_tests::{backend_tests, dag_from, engine, ir, run_job, wait_for_task_event};
use serde_json::json;

backend_tests!(
    retry_job_reruns_from_the_failure,
    rerun_has_its_full_retry_budget_across_a_restart
);

async fn retry_job_reruns_from_the_failure(url: &str) {
    let cascade = engine(url, 2).await;
    let broken = Arc::new(AtomicBool::new(true));
    let runs: Arc<[AtomicU32; 4]> = Arc::new(Default::default());
    let counted = |i: usize| {
        let runs = Arc::clone(&runs);
        move |ctx: TaskContext| {
            let runs = Arc::clone(&runs);
            async move {
                runs[i].fetch_add(1, Ordering::SeqCst);
                Ok(json!({ "from": ctx.task_id() }))
            }
        }
    };
    let dag = dag_from(&ir(
        "rerunnable",
        &[
            ("extract", "extract", &[]),
            ("load", "load", &["extract"]),
            ("report", "report", &["load"]),
            ("side", "side", &[]),
        ],
    ))
    .with_handler("extract", counted(0))
    .with_handler("load", {
        let broken = Arc::clone(&broken);
        let runs = Arc::clone(&runs);
        move |ctx: TaskContext| {
            let broken = Arc::clone(&broken);
            let runs = Arc::clone(&runs);
            async move {
                runs[1].fetch_add(1, Ordering::SeqCst);
                if broken.load(Ordering::SeqCst) {
                    return Err(TaskError::new("database offline"));
                }
                Ok(json!({ "loaded": ctx.upstream("extract").cloned() }))
            }
        }
    })
    .with_handler("report", counted(2))
    .with_handler("side", counted(3));
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Failed);

    broken.store(false, Ordering::SeqCst);
    let rerun = cascade.retry_job(job.id).await.expect("retry_job");
    assert_eq!(rerun.status, JobStatus::Running);
    assert_eq!(rerun.error, None);
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    let counts: Vec<u32> = runs.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, vec![1, 2, 1, 1], "succeeded tasks must not run again");
    let tasks = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    let load = tasks.iter().find(|t| t.task_id == "load").expect("load");
    assert_eq!((load.status, load.attempt), (TaskStatus::Success, 2));
    assert_eq!(
        load.result,
        Some(json!({ "loaded": { "from": "extract" } })),
        "the kept result reached the re-run"
    );
    assert_eq!(
        cascade
            .store()
            .list_task_attempts(job.id, "load")
            .await
            .expect("attempts")
            .len(),
        2
    );

    assert!(matches!(
        cascade.retry_job(job.id).await,
        Err(Error::JobNotFailed {
            status: JobStatus::Success,
            ..
        })
    ));
    assert!(matches!(
        cascade.retry_job(cascade_core::JobId(987_654)).await,
        Err(Error::JobNotFound { .. })
    ));
    cascade.shutdown().await.expect("shutdown");
}

/// `retries: 2`, and a handler that fails its first `fail_until` attempts.
fn budget_dag(fail_until: u32) -> Dag {
    dag_from(
        r#"{"ir_version":1,"name":"budget","tasks":[
            {"id":"flaky","handler":"flaky","retries":2,"retry_delay":1,"retry_jitter":false}]}"#,
    )
    .with_handler("flaky", move |ctx: TaskContext| async move {
        if ctx.attempt() <= fail_until {
            return Err(TaskError::new(format!("attempt {} fails", ctx.attempt())));
        }
        Ok(json!({ "attempt": ctx.attempt() }))
    })
}

/// A re-run task may fail `retries` more times, as on its first run: the
/// budget restarts from the attempts already made, and that survives a
/// restart in the middle of the re-run's backoff.
async fn rerun_has_its_full_retry_budget_across_a_restart(url: &str) {
    // Attempts 1-3 fail (the first run's budget), then the re-run's 4 and 5;
    // attempt 6, the re-run's last retry, succeeds.
    let first = engine(url, 2).await;
    let record = first.register_dag(budget_dag(5)).await.expect("register");
    let job = first
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    let failed = first.wait_for_job(job.id).await.expect("wait");
    assert_eq!(failed.status, JobStatus::Failed);

    let mut events = first.subscribe(Topic::Job(job.id));
    first.retry_job(job.id).await.expect("retry_job");
    // Attempt 4 fails and its retry is scheduled; stop the engine then.
    wait_for_task_event(&mut events, Some("flaky"), TaskEventKind::RetryScheduled).await;
    first.shutdown().await.expect("shutdown");
    drop(first);

    let second = engine(url, 2).await;
    second.register_dag(budget_dag(5)).await.expect("register");
    let job = tokio::time::timeout(std::time::Duration::from_secs(30), second.wait_for_job(job.id))
        .await
        .expect("the re-run never finished")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success, "{:?}", job.error);
    let row = second
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks")
        .remove(0);
    assert_eq!(
        (row.status, row.attempt, row.retry_base),
        (TaskStatus::Success, 6, 3)
    );
    assert_eq!(row.result, Some(json!({ "attempt": 6 })));
    let history: Vec<(u32, TaskStatus)> = second
        .store()
        .list_task_attempts(job.id, "flaky")
        .await
        .expect("attempts")
        .iter()
        .map(|a| (a.attempt, a.status))
        .collect();
    assert_eq!(
        history,
        [
            (1, TaskStatus::UpForRetry),
            (2, TaskStatus::UpForRetry),
            (3, TaskStatus::Failed),
            (4, TaskStatus::UpForRetry),
            (5, TaskStatus::UpForRetry),
            (6, TaskStatus::Success),
        ]
    );
    second.shutdown().await.expect("shutdown");
}

fn errors(json: &str) -> Vec<ValidationError> {
    match Dag::from_ir_json(json) {
        Err(IrError::Invalid(errors)) => errors.errors,
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn bad_values_in_json_ir_are_typed_errors() {
    let zero = errors(r#"{"ir_version":1,"name":"z","tasks":[{"id":"a","handler":"h","timeout":0}]}"#);
    assert!(
        matches!(&zero[..], [ValidationError::InvalidValue { key: "timeout", .. }]),
        "{zero:?}"
    );
    let absurd =
        errors(r#"{"ir_version":1,"name":"z","tasks":[{"id":"a","handler":"h","timeout":99999999999}]}"#);
    assert!(
        matches!(
            &absurd[..],
            [ValidationError::InvalidValue { key: "timeout", .. }]
        ),
        "{absurd:?}"
    );
    let rule = errors(
        r#"{"ir_version":1,"name":"z","tasks":[{"id":"a","handler":"h","trigger_rule":"sometimes"}]}"#,
    );
    assert!(
        matches!(&rule[..], [ValidationError::UnknownTriggerRule { value, .. }] if value == "sometimes"),
        "{rule:?}"
    );
    let never =
        errors(r#"{"ir_version":1,"name":"z","schedule":"0 0 30 2 *","tasks":[{"id":"a","handler":"h"}]}"#);
    assert!(
        matches!(&never[..], [ValidationError::InvalidCron { .. }]),
        "{never:?}"
    );
    assert!(never[0].to_string().contains("never fires"));
}
