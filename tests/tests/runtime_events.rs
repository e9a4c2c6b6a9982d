//! Events arrive in commit order; a slow subscriber lags instead of blocking.

use std::time::Duration;

use cascade_core::{Cascade, Event, JobEventKind, JobStatus, TaskContext, TaskEventKind, TaskStatus, Topic};
use cascade_tests::{backend_tests, dag_from, engine, ir};
use serde_json::json;
use tokio_stream::StreamExt;

backend_tests!(job_events_arrive_in_order, slow_subscriber_is_told_it_lagged);

async fn job_events_arrive_in_order(url: &str) {
    let cascade = engine(url, 2).await;
    let dag = dag_from(&ir(
        "chain3",
        &[("a", "ok", &[]), ("b", "ok", &["a"]), ("c", "ok", &["b"])],
    ))
    .with_handler("ok", |_ctx: TaskContext| async { Ok(json!(null)) });
    let record = cascade.register_dag(dag).await.expect("register");
    let mut events = cascade.subscribe(Topic::Dag(record.id));
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");

    let mut seen = Vec::new();
    let mut last_timestamp = None;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(10), events.next()).await {
        assert_eq!(event.job_id(), Some(job.id));
        let (label, timestamp, done) = match &event {
            Event::Job(e) => (
                format!("job {:?} {}", e.kind, e.status),
                e.timestamp,
                e.status.is_terminal(),
            ),
            Event::Task(e) => (
                format!("{} {:?} {} #{}", e.task_id, e.kind, e.status, e.attempt),
                e.timestamp,
                false,
            ),
            other => panic!("unexpected event {other:?}"),
        };
        if let Some(last) = last_timestamp {
            assert!(timestamp >= last, "timestamps go backwards");
        }
        last_timestamp = Some(timestamp);
        seen.push(label);
        if done {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            "job Created pending",
            "job Started running",
            "a Started running #1",
            "a Succeeded success #1",
            "b Started running #1",
            "b Succeeded success #1",
            "c Started running #1",
            "c Succeeded success #1",
            "job Succeeded success",
        ]
    );
    // Another job's events do not reach a subscriber of this job.
    let mut only_this = cascade.subscribe(Topic::Job(job.id));
    let other = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    cascade.wait_for_job(other.id).await.expect("wait");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), only_this.next())
            .await
            .is_err()
    );
    cascade.shutdown().await.expect("shutdown");
}

async fn slow_subscriber_is_told_it_lagged(url: &str) {
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(4)
        .event_capacity(16)
        .build()
        .await
        .expect("engine");
    let mut tasks: Vec<(String, Vec<&str>)> = vec![("root".into(), vec![])];
    tasks.extend((0..60).map(|i| (format!("leaf{i}"), vec!["root"])));
    let tasks: Vec<(&str, &str, &[&str])> = tasks
        .iter()
        .map(|(id, deps)| (id.as_str(), "ok", deps.as_slice()))
        .collect();
    let dag = dag_from(&ir("wide", &tasks)).with_handler("ok", |_ctx: TaskContext| async { Ok(json!(null)) });
    let record = cascade.register_dag(dag).await.expect("register");
    let mut events = cascade.subscribe(Topic::All);
    // Nobody reads while the job runs: the engine must not wait for us.
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    let job = tokio::time::timeout(Duration::from_secs(30), cascade.wait_for_job(job.id))
        .await
        .expect("the engine was blocked by a slow subscriber")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    match events.next().await {
        Some(Event::Lagged { missed }) => assert!(missed > 0),
        other => panic!("expected a lag notice first, got {other:?}"),
    }
    // After the notice the stream continues with the newest events, ending with the job's end.
    let mut last = None;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        last = Some(event);
    }
    match last {
        Some(Event::Job(e)) => assert_eq!(e.kind, JobEventKind::Succeeded),
        other => panic!("expected the job's final event last, got {other:?}"),
    }
    let _ = (TaskEventKind::Started, TaskStatus::Success);
    cascade.shutdown().await.expect("shutdown");
}
