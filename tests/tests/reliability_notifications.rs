//! Notifications are hints, never facts: a role that may only connect and
//! read sends a forged cancel and a forged task success; neither the job nor
//! the task changes. A real cancel is a stored request.

use std::sync::Arc;
use std::time::Duration;

use cascade_core::{
    Cascade, Event, JobStatus, TaskContext, TaskEventKind, TaskStatus, Topic, WorkerEvent, WorkerEventKind,
};
use cascade_tests::{dag_from, init_tracing, ir, postgres_url, wait_for_task_event};
use chrono::Utc;
use tokio::sync::Notify;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_notifications_change_nothing() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let url = db.url.as_str();
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(2)
        .build()
        .await
        .expect("engine");
    let gate = Arc::new(Notify::new());
    let release = Arc::clone(&gate);
    let dag = dag_from(&ir(
        "forgery",
        &[("slow", "slow", &[]), ("after", "after", &["slow"])],
    ))
    .with_handler("slow", move |_ctx: TaskContext| {
        let gate = Arc::clone(&release);
        async move {
            gate.notified().await;
            Ok(serde_json::json!("real"))
        }
    })
    .with_handler("after", |ctx: TaskContext| async move {
        Ok(ctx.upstream("slow").cloned().unwrap_or_default())
    });
    let record = cascade.register_dag(dag).await.expect("register");
    let mut task_events = cascade.subscribe(Topic::Dag(record.id));
    let mut probe_events = cascade.subscribe(Topic::Workers);
    let job = cascade
        .trigger_job(record.id, "manual", serde_json::json!({}))
        .await
        .expect("trigger");
    wait_for_task_event(&mut task_events, Some("slow"), TaskEventKind::Started).await;
    let slow = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("rows")
        .into_iter()
        .find(|t| t.task_id == "slow")
        .expect("slow");

    // A role that may connect and read, and nothing else.
    let role = format!("forger_{}", std::process::id());
    let database = url.rsplit('/').next().expect("database name").to_owned();
    cascade_tests::execute_sql(
        url,
        &format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; \
             GRANT CONNECT ON DATABASE \"{database}\" TO {role}; \
             GRANT USAGE ON SCHEMA cascade TO {role}; \
             GRANT SELECT ON ALL TABLES IN SCHEMA cascade TO {role};"
        ),
    )
    .await;
    let forger_url = url.replacen("postgres://root@", &format!("postgres://{role}@"), 1);
    assert_ne!(forger_url, url, "the test database URL names the root user");
    let forged_done = serde_json::json!({
        "job_id": job.id, "task_id": "slow", "token": slow.fencing_token, "attempt": slow.attempt,
        "status": "success", "error": null, "next_attempt_at": null
    });
    let probe = serde_json::json!({
        "origin": "probe",
        "event": Event::Worker(WorkerEvent { kind: WorkerEventKind::Joined, worker: "probe".into(), timestamp: Utc::now() }),
    });
    let quote = |value: &serde_json::Value| value.to_string().replace('\'', "''");
    // Sent in order on one connection, so the probe arrives after the forgeries.
    cascade_tests::execute_sql(
        &forger_url,
        &format!(
            "SELECT pg_notify('cascade_cancel', '{}'); SELECT pg_notify('cascade_done', '{}'); \
             SELECT pg_notify('cascade_events', '{}');",
            job.id,
            quote(&forged_done),
            quote(&probe)
        ),
    )
    .await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), probe_events.next()).await {
            Ok(Some(Event::Worker(w))) if w.worker == "probe" => break,
            Ok(Some(_)) => {}
            other => panic!("the probe notification never arrived: {other:?}"),
        }
    }
    // The scheduler handles commands in order: this state follows whatever
    // the forgeries made it do.
    let state = cascade.job_state(job.id).await.expect("state");
    assert!(
        !state.cancelling,
        "a forged cancel notification cancelled the job"
    );
    assert_eq!(state.status, JobStatus::Running);
    let statuses: Vec<(String, TaskStatus)> = state
        .tasks
        .iter()
        .map(|t| (t.task_id.clone(), t.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("slow".to_owned(), TaskStatus::Running),
            ("after".to_owned(), TaskStatus::Pending)
        ],
        "a forged success changed the task"
    );
    let stored = cascade.store().get_job(job.id).await.expect("job");
    assert_eq!(
        (stored.status, stored.cancel_requested_at),
        (JobStatus::Running, None)
    );

    gate.notify_one();
    let done = tokio::time::timeout(Duration::from_secs(30), cascade.wait_for_job(job.id))
        .await
        .expect("the job ends")
        .expect("wait");
    assert_eq!(done.status, JobStatus::Success);
    let rows = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("rows");
    let after = rows.iter().find(|t| t.task_id == "after").expect("after");
    assert_eq!(
        after.result,
        Some(serde_json::json!("real")),
        "after saw the real result"
    );

    // A real cancel is stored in the job's row.
    let record2 = cascade
        .register_dag(
            dag_from(&ir("cancel_stored", &[("wait", "wait", &[])])).with_handler(
                "wait",
                |ctx: TaskContext| async move {
                    ctx.cancelled().await;
                    Ok(serde_json::json!(null))
                },
            ),
        )
        .await
        .expect("register");
    let job2 = cascade
        .trigger_job(record2.id, "manual", serde_json::json!({}))
        .await
        .expect("trigger");
    cascade.cancel_job(job2.id).await.expect("cancel");
    let stored = cascade.store().get_job(job2.id).await.expect("job");
    assert_eq!(stored.status, JobStatus::Cancelled);
    assert!(
        stored.cancel_requested_at.is_some(),
        "the cancel request is stored"
    );
    cascade.shutdown().await.expect("shutdown");
    cascade_tests::execute_sql(url, &format!("REVOKE ALL ON ALL TABLES IN SCHEMA cascade FROM {role}; REVOKE ALL ON SCHEMA cascade FROM {role}; REVOKE ALL ON DATABASE \"{database}\" FROM {role}; DROP ROLE {role};")).await;
}
