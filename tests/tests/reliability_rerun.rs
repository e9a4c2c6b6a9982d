//! `retry_job` re-runs a failed job from the point of failure; bad IR input
//! gets typed errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cascade_core::{Dag, Error, IrError, JobStatus, TaskContext, TaskError, TaskStatus, ValidationError};
use cascade_tests::{backend_tests, dag_from, engine, ir};
use serde_json::json;

backend_tests!(retry_job_reruns_from_the_failure);

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
    let record = cascade.register_dag(dag).await.expect("register");
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
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
