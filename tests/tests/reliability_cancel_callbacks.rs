//! Cancellation (grace period, idempotence), callbacks (after commit, errors
//! and panics never change the outcome) and trigger rules.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cascade_core::{
    CallbackContext, CallbackEvent, Cascade, Error, JobStatus, TaskContext, TaskError, TaskEventKind,
    TaskStatus, Topic,
};
use cascade_tests::{Log, backend_tests, dag_from, engine, run_job, wait_for_task_event};
use serde_json::json;

backend_tests!(
    cancel_running_job,
    cancel_is_idempotent_and_refuses_finished_jobs,
    callbacks_run_after_commit,
    trigger_rules
);

async fn cancel_running_job(url: &str) {
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(4)
        .cancel_grace_period(Duration::from_millis(500))
        .build()
        .await
        .expect("engine");
    let polite_saw_signal = Arc::new(AtomicBool::new(false));
    let saw = Arc::clone(&polite_saw_signal);
    let dag = dag_from(
        r#"{"ir_version":1,"name":"cancellable","tasks":[
            {"id":"polite","handler":"polite"},
            {"id":"stubborn","handler":"stubborn"},
            {"id":"after","handler":"never","depends_on":["polite","stubborn"]}]}"#,
    )
    .with_handler("polite", move |ctx: TaskContext| {
        let saw = Arc::clone(&saw);
        async move {
            ctx.cancelled().await;
            saw.store(true, Ordering::SeqCst);
            Err(TaskError::new("stopped on request"))
        }
    })
    .with_handler("stubborn", |_ctx: TaskContext| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(json!(null))
    })
    .with_handler("never", |_ctx: TaskContext| async {
        panic!("must not run after cancellation")
    });
    let record = cascade.register_dag(dag).await.expect("register");
    let mut events = cascade.subscribe(Topic::Dag(record.id));
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    wait_for_task_event(&mut events, Some("polite"), TaskEventKind::Started).await;

    let started = Instant::now();
    cascade.cancel_job(job.id).await.expect("cancel");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "the stubborn handler got its grace period ({took:?})"
    );
    assert!(
        polite_saw_signal.load(Ordering::SeqCst),
        "the polite handler saw the signal"
    );

    let details = cascade
        .store()
        .get_job_with_details(job.id)
        .await
        .expect("details");
    assert_eq!(details.job.status, JobStatus::Cancelled);
    assert!(details.job.completed_at.is_some());
    assert!(
        details.tasks.iter().all(|t| t.status == TaskStatus::Cancelled),
        "{:?}",
        details.tasks
    );
    assert_eq!(
        cascade.wait_for_job(job.id).await.expect("wait").status,
        JobStatus::Cancelled
    );
    cascade.shutdown().await.expect("shutdown");
}

async fn cancel_is_idempotent_and_refuses_finished_jobs(url: &str) {
    let cascade = engine(url, 2).await;
    let dag = dag_from(r#"{"ir_version":1,"name":"quick","tasks":[{"id":"a","handler":"ok"},{"id":"slow","handler":"slow"}]}"#)
        .with_handler("ok", |_ctx: TaskContext| async { Ok(json!(1)) })
        .with_handler("slow", |ctx: TaskContext| async move {
            ctx.cancelled().await;
            Ok(json!("stopped"))
        });
    let record = cascade.register_dag(dag).await.expect("register");
    let mut events = cascade.subscribe(Topic::Dag(record.id));
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    wait_for_task_event(&mut events, Some("slow"), TaskEventKind::Started).await;
    let (a, b) = tokio::join!(cascade.cancel_job(job.id), cascade.cancel_job(job.id));
    a.expect("first cancel");
    b.expect("concurrent cancel");
    cascade
        .cancel_job(job.id)
        .await
        .expect("cancelling a cancelled job is ok");

    let ok = dag_from(r#"{"ir_version":1,"name":"done","tasks":[{"id":"a","handler":"ok"}]}"#)
        .with_handler("ok", |_ctx: TaskContext| async { Ok(json!(1)) });
    let ok = cascade.register_dag(ok).await.expect("register");
    let finished = cascade
        .trigger_job(ok.id, "manual", json!({}))
        .await
        .expect("trigger");
    cascade.wait_for_job(finished.id).await.expect("wait");
    match cascade.cancel_job(finished.id).await {
        Err(Error::JobAlreadyFinished { status, .. }) => assert_eq!(status, JobStatus::Success),
        other => panic!("expected JobAlreadyFinished, got {other:?}"),
    }
    assert_eq!(
        cascade.store().get_job(finished.id).await.expect("job").status,
        JobStatus::Success
    );
    cascade.shutdown().await.expect("shutdown");
}

async fn callbacks_run_after_commit(url: &str) {
    let cascade = engine(url, 2).await;
    let log = Log::default();
    let store = cascade.store().clone();
    let observe = |name: &'static str, log: &Log| {
        let log = log.clone();
        let store = store.clone();
        move |ctx: CallbackContext| {
            let log = log.clone();
            let store = store.clone();
            async move {
                // The state the callback reports is already committed.
                let tasks = store
                    .list_task_executions_for_job(ctx.job_id)
                    .await
                    .map_err(TaskError::from)?;
                let job = store.get_job(ctx.job_id).await.map_err(TaskError::from)?;
                let stored = match (&ctx.task_id, ctx.event) {
                    // The task moves on after a retry; the attempt's record is the committed fact.
                    (Some(id), CallbackEvent::Retry) => {
                        let attempts = store
                            .list_task_attempts(ctx.job_id, id)
                            .await
                            .map_err(TaskError::from)?;
                        attempts
                            .iter()
                            .find(|a| a.attempt == ctx.attempt)
                            .map(|a| a.status.to_string())
                    }
                    (Some(id), _) => tasks
                        .iter()
                        .find(|t| &t.task_id == id)
                        .map(|t| t.status.to_string()),
                    (None, _) => Some(job.status.to_string()),
                };
                log.push(format!(
                    "{name} {:?} {:?} {:?} stored={}",
                    ctx.event,
                    ctx.task_id,
                    ctx.error,
                    stored.unwrap_or_default()
                ));
                Ok(())
            }
        }
    };
    let dag = dag_from(
        r#"{"ir_version":1,"name":"with_callbacks","on_failure":"dag_failed","on_success":"dag_ok","tasks":[
            {"id":"good","handler":"ok","on_success":"task_ok"},
            {"id":"shaky","handler":"shaky","retries":1,"retry_delay":0,"on_retry":"task_retry","on_failure":"task_failed"},
            {"id":"loud","handler":"ok","on_success":"panicky"},
            {"id":"erring","handler":"ok","on_success":"erring"}]}"#,
    )
    .with_handler("ok", |_ctx: TaskContext| async { Ok(json!("ok")) })
    .with_handler("shaky", |ctx: TaskContext| async move { Err(TaskError::new(format!("broken on attempt {}", ctx.attempt()))) })
    .with_callback("task_ok", observe("task_ok", &log))
    .with_callback("task_retry", observe("task_retry", &log))
    .with_callback("task_failed", observe("task_failed", &log))
    .with_callback("dag_failed", observe("dag_failed", &log))
    .with_callback("dag_ok", observe("dag_ok", &log))
    .with_callback("panicky", |_ctx: CallbackContext| async { panic!("callback bug") })
    .with_callback("erring", |_ctx: CallbackContext| async { Err(TaskError::new("callback failed")) });
    let job = run_job(&cascade, dag).await;
    assert_eq!(
        job.status,
        JobStatus::Failed,
        "only shaky's failure decides the outcome"
    );
    // Callbacks run after the commits they report, on tasks of their own:
    // wait for the four expected ones, then a little longer for any extra.
    let waiting = Instant::now();
    while log.entries().len() < 4 && waiting.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut entries = log.entries();
    entries.sort();
    assert_eq!(
        entries,
        vec![
            "dag_failed Failure None Some(\"task `shaky` failed: broken on attempt 2\") stored=failed"
                .to_owned(),
            "task_failed Failure Some(\"shaky\") Some(\"broken on attempt 2\") stored=failed".to_owned(),
            "task_ok Success Some(\"good\") None stored=success".to_owned(),
            "task_retry Retry Some(\"shaky\") Some(\"broken on attempt 1\") stored=up_for_retry".to_owned(),
        ]
    );
    let tasks = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    for id in ["loud", "erring", "good"] {
        assert_eq!(
            tasks.iter().find(|t| t.task_id == id).map(|t| t.status),
            Some(TaskStatus::Success)
        );
    }
    cascade.shutdown().await.expect("shutdown");
}

async fn trigger_rules(url: &str) {
    let cascade = engine(url, 4).await;
    // ok1, ok2 succeed; bad fails. Each rule gets one task per upstream mix.
    let rules = [
        ("all_success", ["ok1", "ok2"], "success"),
        ("all_success", ["ok1", "bad"], "upstream_failed"),
        ("all_done", ["ok1", "bad"], "success"),
        ("all_failed", ["bad", "bad2"], "success"),
        ("all_failed", ["ok1", "bad"], "skipped"),
        ("one_success", ["ok1", "bad"], "success"),
        ("one_success", ["bad", "bad2"], "upstream_failed"),
        ("one_failed", ["ok1", "bad"], "success"),
        ("one_failed", ["ok1", "ok2"], "skipped"),
        ("none_failed", ["ok1", "ok2"], "success"),
        ("none_failed", ["ok1", "bad"], "upstream_failed"),
    ];
    let mut tasks = vec![
        json!({"id": "ok1", "handler": "ok"}),
        json!({"id": "ok2", "handler": "ok"}),
        json!({"id": "bad", "handler": "bad"}),
        json!({"id": "bad2", "handler": "bad"}),
    ];
    let mut expected = HashMap::new();
    for (i, (rule, deps, outcome)) in rules.iter().enumerate() {
        let id = format!("{rule}_{i}");
        tasks.push(json!({"id": id, "handler": "ok", "trigger_rule": rule, "depends_on": deps}));
        expected.insert(id, *outcome);
    }
    // A skipped task skips its all_success dependents; an upstream-failed one fails them.
    tasks.push(json!({"id": "after_skip", "handler": "ok", "depends_on": ["all_failed_4"]}));
    expected.insert("after_skip".to_owned(), "skipped");
    tasks.push(json!({"id": "after_upstream_failed", "handler": "ok", "depends_on": ["all_success_1"]}));
    expected.insert("after_upstream_failed".to_owned(), "upstream_failed");
    let ir = json!({"ir_version": 1, "name": "rules", "tasks": tasks}).to_string();
    let dag = dag_from(&ir)
        .with_handler("ok", |_ctx: TaskContext| async { Ok(json!("ok")) })
        .with_handler("bad", |_ctx: TaskContext| async { Err(TaskError::fatal("bad")) });
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Failed);
    let rows = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    for row in rows {
        if let Some(outcome) = expected.get(&row.task_id) {
            assert_eq!(row.status.to_string(), *outcome, "task {}", row.task_id);
        }
    }
    cascade.shutdown().await.expect("shutdown");
}
