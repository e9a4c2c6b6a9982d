//! A DAG loaded from a JSON IR file runs like one written with `dag!`.

use cascade_core::{Dag, IrError, JobStatus, TaskContext, TaskError};
use cascade_tests::{backend_tests, engine};
use serde_json::json;

backend_tests!(ir_loaded_from_a_json_file_runs);

async fn ir_loaded_from_a_json_file_runs(url: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/report.json");
    let text = std::fs::read_to_string(path).expect("fixture");
    let dag = Dag::from_ir_json(&text)
        .expect("valid IR")
        .with_handler("fetch", |_ctx: TaskContext| async {
            Ok(json!({ "visits": [3, 4, 5] }))
        })
        .with_handler("summarize", |ctx: TaskContext| async move {
            let visits = ctx
                .upstream("fetch")
                .map(|v| v["visits"].clone())
                .ok_or_else(|| TaskError::fatal("no fetch"))?;
            let total: i64 = visits
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_i64())
                .sum();
            Ok(json!({ "total": total }))
        })
        .with_handler("publish", |ctx: TaskContext| async move {
            Ok(ctx.upstream("summarize").cloned().unwrap_or_default())
        });
    assert_eq!(dag.plan().tasks()[1].queue, "reports");

    let cascade = engine(url, 2).await;
    let record = cascade.register_dag(dag).await.expect("register");
    assert_eq!(record.name, "report_from_json");
    assert_eq!(
        record.description,
        "A DAG written as JSON IR instead of with dag!"
    );
    let job = cascade
        .trigger_job(record.id, "file", json!({}))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    let tasks = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    let publish = tasks.iter().find(|t| t.task_id == "publish").expect("publish");
    assert_eq!(publish.result, Some(json!({ "total": 12 })));
    assert!(tasks.iter().all(|t| t.queue == "reports"));
    // The stored definition is the canonical IR, with the content hash as its version.
    let version = cascade
        .store()
        .get_dag_version(record.id, record.version)
        .await
        .expect("version");
    let stored: serde_json::Value = serde_json::from_str(&version.definition).expect("stored IR is JSON");
    assert_eq!(stored["hash"], json!(record.hash));
    cascade.shutdown().await.expect("shutdown");

    // Broken JSON files give typed errors that say where.
    assert!(matches!(
        Dag::from_ir_json("{ \"ir_version\": 1, "),
        Err(IrError::Malformed { line: 1, .. })
    ));
    assert!(matches!(
        Dag::from_ir_json(r#"{"ir_version": 2, "name": "x", "tasks": []}"#),
        Err(IrError::UnsupportedVersion { .. })
    ));
    let cyclic = r#"{"ir_version":1,"name":"loop","tasks":[
        {"id":"alpha","handler":"h","depends_on":["gamma"]},
        {"id":"beta","handler":"h","depends_on":["alpha"]},
        {"id":"gamma","handler":"h","depends_on":["beta"]}]}"#;
    let error = Dag::from_ir_json(cyclic).map(|_| ()).unwrap_err().to_string();
    assert!(
        error.contains("alpha -> beta -> gamma -> alpha"),
        "error: {error}"
    );
}
