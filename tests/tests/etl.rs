//! The ETL example DAG, written with `dag!`, end to end on both backends.

use cascade_core::{Cascade, Event, JobStatus, TaskEventKind, TaskStatus, Topic};
use cascade_examples::etl::etl_pipeline;
use cascade_tests::backend_tests;
use serde_json::json;
use tokio_stream::StreamExt;

backend_tests!(etl_runs_end_to_end);

async fn etl_runs_end_to_end(url: &str) {
    let out = std::env::temp_dir().join(format!("cascade-etl-test-{}-{}", std::process::id(), url.len()));
    std::fs::create_dir_all(&out).expect("output dir");
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(4)
        .build()
        .await
        .expect("engine");
    let dag = cascade.register_dag(etl_pipeline()).await.expect("register");
    assert_eq!(dag.name, "etl_pipeline");
    assert_eq!(dag.description, "Extract, transform, load, notify");
    assert_eq!(
        etl_pipeline().ir_json(),
        cascade
            .store()
            .get_dag_version(dag.id, dag.version)
            .await
            .expect("v")
            .definition
    );
    // Registering the same definition again keeps the version.
    assert_eq!(
        cascade.register_dag(etl_pipeline()).await.expect("again").version,
        dag.version
    );

    let mut events = cascade.subscribe(Topic::Dag(dag.id));
    let job = cascade
        .trigger_job(
            dag.id,
            "manual",
            json!({ "environment": "test", "output_dir": out.display().to_string() }),
        )
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Success);

    let details = cascade
        .store()
        .get_job_with_details(job.id)
        .await
        .expect("details");
    let by_id = |id: &str| {
        details
            .tasks
            .iter()
            .find(|t| t.task_id == id)
            .expect("task")
            .clone()
    };
    assert!(details.tasks.iter().all(|t| t.status == TaskStatus::Success));
    assert_eq!(
        by_id("transform").result.expect("result")["revenue_cents"],
        json!({ "amer": 5549, "apac": 3700, "emea": 6249 })
    );
    let report_path = by_id("load").result.expect("result")["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report file")).expect("json");
    assert_eq!(report["total_cents"], json!(15498));
    let notify = by_id("notify").result.expect("result");
    assert!(
        notify
            .as_str()
            .is_some_and(|m| m.contains("15498") && m.contains("test")),
        "{notify}"
    );

    // Tasks started in dependency order.
    let mut started = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), events.next()).await
    {
        if let Event::Task(e) = event
            && e.kind == TaskEventKind::Started
        {
            started.push(e.task_id);
        }
    }
    assert_eq!(started, ["extract", "transform", "load", "notify"]);
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&out);
}
