//! Failures: a failing task, a panicking task, unknown ids.

use cascade_core::{DagId, Error, JobId, JobStatus, TaskContext, TaskError, TaskStatus};
use cascade_tests::{backend_tests, dag_from, engine, ir, run_job};
use serde_json::json;

backend_tests!(
    failing_middle_task,
    panicking_task_fails_and_pool_survives,
    unknown_ids_are_typed_errors
);

async fn failing_middle_task(url: &str) {
    let cascade = engine(url, 4).await;
    let dag = dag_from(&ir(
        "broken_middle",
        &[
            ("first", "ok", &[]),
            ("middle", "fail", &["first"]),
            ("last", "ok", &["middle"]),
            ("after_last", "ok", &["last"]),
            ("independent", "ok", &[]),
        ],
    ))
    .with_handler("ok", |_ctx: TaskContext| async { Ok(json!("fine")) })
    .with_handler("fail", |_ctx: TaskContext| async {
        Err(TaskError::fatal("disk full"))
    });
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.error.clone().unwrap_or_default();
    assert!(
        error.contains("middle") && error.contains("disk full"),
        "job error: {error}"
    );

    let tasks = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    let status = |id: &str| tasks.iter().find(|t| t.task_id == id).map(|t| t.status);
    assert_eq!(status("first"), Some(TaskStatus::Success));
    assert_eq!(status("middle"), Some(TaskStatus::Failed));
    assert_eq!(status("last"), Some(TaskStatus::UpstreamFailed));
    assert_eq!(status("after_last"), Some(TaskStatus::UpstreamFailed));
    assert_eq!(status("independent"), Some(TaskStatus::Success));
    let middle = tasks.iter().find(|t| t.task_id == "middle").expect("middle");
    assert_eq!(middle.error.as_deref(), Some("disk full"));
    let attempts = cascade
        .store()
        .list_task_attempts(job.id, "middle")
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].error.as_deref(), Some("disk full"));
    cascade.shutdown().await.expect("shutdown");
}

async fn panicking_task_fails_and_pool_survives(url: &str) {
    let cascade = engine(url, 2).await;
    let dag = dag_from(&ir(
        "panics",
        &[("boom", "boom", &[]), ("after", "ok", &["boom"])],
    ))
    .with_handler("boom", |_ctx: TaskContext| async {
        if true {
            panic!("index out of bounds in the handler");
        }
        Ok(json!(null))
    })
    .with_handler("ok", |_ctx: TaskContext| async { Ok(json!(1)) });
    // A closure that panics while it builds its future, before any `.await`.
    let eager =
        dag_from(&ir("panics_eagerly", &[("boom", "boom", &[])])).with_handler("boom", |ctx: TaskContext| {
            let rows: Vec<u32> = Vec::new();
            let first = rows[ctx.attempt() as usize];
            async move { Ok(json!(first)) }
        });
    let eager = cascade.register_dag(eager).await.expect("register");
    let job = cascade
        .trigger_job(eager.id, "manual", json!({}))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(
        job.status,
        JobStatus::Failed,
        "the attempt failed, the engine lives"
    );
    let row = &cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks")[0];
    assert!(
        row.error
            .as_deref()
            .is_some_and(|e| e.contains("panicked") && e.contains("index out of bounds")),
        "{:?}",
        row.error
    );
    let fine = dag_from(&ir("fine", &[("a", "ok", &[]), ("b", "ok", &["a"])]))
        .with_handler("ok", |_ctx: TaskContext| async { Ok(json!(1)) });
    let panics = cascade.register_dag(dag).await.expect("register");
    let fine = cascade.register_dag(fine).await.expect("register");
    for _ in 0..3 {
        let job = cascade
            .trigger_job(panics.id, "manual", json!({}))
            .await
            .expect("trigger");
        let job = cascade.wait_for_job(job.id).await.expect("wait");
        assert_eq!(job.status, JobStatus::Failed);
        let tasks = cascade
            .store()
            .list_task_executions_for_job(job.id)
            .await
            .expect("tasks");
        let boom = tasks.iter().find(|t| t.task_id == "boom").expect("boom");
        assert_eq!(boom.status, TaskStatus::Failed);
        let error = boom.error.clone().unwrap_or_default();
        assert!(
            error.contains("panicked") && error.contains("index out of bounds"),
            "error: {error}"
        );
    }
    let job = cascade
        .trigger_job(fine.id, "manual", json!({}))
        .await
        .expect("trigger");
    assert_eq!(
        cascade.wait_for_job(job.id).await.expect("wait").status,
        JobStatus::Success
    );
    cascade.shutdown().await.expect("shutdown");
}

async fn unknown_ids_are_typed_errors(url: &str) {
    let cascade = engine(url, 2).await;
    let missing_dag = DagId(424_242);
    let missing_job = JobId(424_242);
    assert!(matches!(
        cascade.trigger_job(missing_dag, "manual", json!({})).await,
        Err(Error::DagNotFound { dag_id }) if dag_id == missing_dag
    ));
    assert!(
        matches!(cascade.wait_for_job(missing_job).await, Err(Error::JobNotFound { job_id }) if job_id == missing_job)
    );
    assert!(matches!(
        cascade.job_state(missing_job).await,
        Err(Error::JobNotFound { .. })
    ));
    assert!(matches!(
        cascade.cancel_job(missing_job).await,
        Err(Error::JobNotFound { .. })
    ));
    let message = cascade
        .trigger_job(missing_dag, "manual", json!({}))
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("424242") && message.contains("register"),
        "message: {message}"
    );

    // A DAG stored by another engine but not registered in this one.
    let other = engine(url, 1).await;
    let record = other
        .register_dag(
            dag_from(&ir("elsewhere", &[("a", "ok", &[])]))
                .with_handler("ok", |_ctx: TaskContext| async { Ok(json!(1)) }),
        )
        .await
        .expect("register");
    assert!(matches!(
        cascade.trigger_job(record.id, "manual", json!({})).await,
        Err(Error::DagNotRegistered { name, .. }) if name == "elsewhere"
    ));
    // A DAG whose handlers are not bound is refused at registration.
    let unbound = dag_from(&ir("unbound", &[("a", "nowhere", &[])]));
    assert!(matches!(
        cascade.register_dag(unbound).await,
        Err(Error::MissingHandlers { missing, .. }) if missing == vec!["nowhere".to_owned()]
    ));
    other.shutdown().await.expect("shutdown");
    cascade.shutdown().await.expect("shutdown");
}
