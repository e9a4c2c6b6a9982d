//! What shell tasks see of the job: `CASCADE_PARAMS` and `CASCADE_UPSTREAM`
//! (through files when large), and `env` values filled in from `${params…}`
//! and `${upstream…}` without ever touching the command text.

use cascade_core::{Dag, IrError, JobStatus, TaskContext, TaskExecution, TaskStatus, ValidationError};
use cascade_tests::{backend_tests, dag_from, engine};
use serde_json::{Value, json};

backend_tests!(
    shell_tasks_see_params_and_upstream_results,
    large_data_goes_through_files_removed_afterwards,
    a_missing_field_fails_the_task_once_with_a_clear_message
);

async fn run(url: &str, dag: Dag, params: Value) -> (JobStatus, Vec<TaskExecution>) {
    let cascade = engine(url, 4).await;
    let record = cascade.register_dag(dag).await.expect("register");
    let job = cascade
        .trigger_job(record.id, "manual", params)
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    let rows = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    cascade.shutdown().await.expect("shutdown");
    (job.status, rows)
}

fn row<'a>(rows: &'a [TaskExecution], id: &str) -> &'a TaskExecution {
    rows.iter()
        .find(|r| r.task_id == id)
        .unwrap_or_else(|| panic!("no row for {id}"))
}

fn stdout(row: &TaskExecution) -> String {
    row.result.as_ref().expect("result")["stdout"]
        .as_str()
        .expect("stdout")
        .to_owned()
}

fn temp_path(label: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("cascade-{label}-{}-{nanos}", std::process::id()))
}

async fn shell_tasks_see_params_and_upstream_results(url: &str) {
    // A value that would run a command if it were pasted into the command text.
    let injected = temp_path("injected");
    let hostile = format!(
        "x\"; touch {} #$(touch {})",
        injected.display(),
        injected.display()
    );
    let ir = json!({
        "ir_version": 1, "name": "shell_data",
        "tasks": [
            { "id": "extract", "handler": "extract" },
            { "id": "broken", "handler": "fail" },
            { "id": "report", "type": "shell", "depends_on": ["extract", "broken"], "trigger_rule": "all_done",
              "env": {
                  "REGION": "${params.region}",
                  "FIRST": "${params.regions.0}",
                  "COUNT": "count=${upstream.extract.count}",
                  "NAME": "${upstream.extract.name}",
                  "STATS": "${upstream.extract.stats}",
                  "PRICE": "$5 and $${literal}"
              },
              "command": "printf '%s\\n' \"$REGION\" \"$FIRST\" \"$COUNT\" \"$NAME\" \"$STATS\" \"$PRICE\" \"$CASCADE_PARAMS\" \"$CASCADE_UPSTREAM\" \"${CASCADE_PARAMS_FILE-none}\"" }
        ]
    });
    let dag = dag_from(&ir.to_string())
        .with_handler("extract", move |_ctx: TaskContext| {
            let hostile = hostile.clone();
            async move { Ok(json!({ "count": 3, "name": hostile, "stats": { "ok": true } })) }
        })
        .with_handler("fail", |_ctx: TaskContext| async move {
            Err(cascade_core::TaskError::fatal("no result"))
        });
    let params = json!({ "region": "eu west", "regions": ["eu", "us"] });
    let (status, rows) = run(url, dag, params.clone()).await;
    assert_eq!(status, JobStatus::Failed, "`broken` fails the job");
    let report = row(&rows, "report");
    assert_eq!(report.status, TaskStatus::Success, "{:?}", report.error);
    let extract = row(&rows, "extract").result.clone().expect("extract result");
    let lines: Vec<String> = stdout(report).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "eu west".to_owned(),
            "eu".to_owned(),
            "count=3".to_owned(),
            extract["name"].as_str().expect("name").to_owned(),
            r#"{"ok":true}"#.to_owned(),
            "$5 and ${literal}".to_owned(),
            params.to_string(),
            json!({ "extract": extract, "broken": null }).to_string(),
            "none".to_owned(),
        ]
    );
    assert!(!injected.exists(), "an env value was run as a command");
}

async fn large_data_goes_through_files_removed_afterwards(url: &str) {
    let big = "x".repeat(100 * 1024);
    let ir = json!({
        "ir_version": 1, "name": "shell_big_data",
        "tasks": [
            { "id": "extract", "handler": "extract" },
            { "id": "read", "type": "shell", "depends_on": ["extract"],
              "command": "echo \"${CASCADE_PARAMS-unset} ${CASCADE_UPSTREAM-unset}\"; echo \"$CASCADE_PARAMS_FILE\"; echo \"$CASCADE_UPSTREAM_FILE\"; wc -c < \"$CASCADE_PARAMS_FILE\"; wc -c < \"$CASCADE_UPSTREAM_FILE\"; ls -l \"$CASCADE_PARAMS_FILE\"" }
        ]
    });
    let dag = dag_from(&ir.to_string()).with_handler("extract", {
        let big = big.clone();
        move |_ctx: TaskContext| {
            let big = big.clone();
            async move { Ok(json!({ "blob": big })) }
        }
    });
    let params = json!({ "blob": big });
    let (status, rows) = run(url, dag, params.clone()).await;
    assert_eq!(status, JobStatus::Success);
    let read = row(&rows, "read");
    let output = stdout(read);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "unset unset", "large values are not in the environment");
    let (params_file, upstream_file) = (lines[1], lines[2]);
    assert!(!params_file.is_empty() && !upstream_file.is_empty(), "{output}");
    let upstream = json!({ "extract": row(&rows, "extract").result.clone().expect("result") });
    assert_eq!(lines[3].trim(), params.to_string().len().to_string());
    assert_eq!(lines[4].trim(), upstream.to_string().len().to_string());
    assert!(
        lines[5].starts_with("-rw-------"),
        "readable by the owner only: {}",
        lines[5]
    );
    assert!(
        !std::path::Path::new(params_file).exists() && !std::path::Path::new(upstream_file).exists(),
        "the data files are removed after the task"
    );
}

async fn a_missing_field_fails_the_task_once_with_a_clear_message(url: &str) {
    let ir = json!({
        "ir_version": 1, "name": "shell_missing_field",
        "tasks": [{ "id": "deploy", "type": "shell", "command": "echo \"$REGION\"", "retries": 3,
                    "env": { "REGION": "${params.target.region}" } }]
    });
    let (status, rows) = run(
        url,
        dag_from(&ir.to_string()),
        json!({ "target": { "zone": "a" } }),
    )
    .await;
    assert_eq!(status, JobStatus::Failed);
    let deploy = row(&rows, "deploy");
    assert_eq!(
        (deploy.status, deploy.attempt),
        (TaskStatus::Failed, 1),
        "not retried"
    );
    assert_eq!(
        deploy.error.as_deref(),
        Some("env `REGION`: `${params.target.region}`: `params.target` has no field `region`")
    );
}

#[test]
fn invalid_references_are_rejected_when_the_dag_is_built() {
    let ir = json!({
        "ir_version": 1, "name": "bad_refs",
        "tasks": [
            { "id": "extract", "handler": "h" },
            { "id": "transform", "handler": "h", "depends_on": ["extract"] },
            { "id": "load", "type": "shell", "command": "true", "depends_on": ["transform"],
              "env": { "N": "${upstream.extract.count}" } }
        ]
    });
    let Err(IrError::Invalid(invalid)) = Dag::from_ir_json(&ir.to_string()) else {
        panic!("a reference to a non-dependency was accepted");
    };
    assert!(matches!(
        &invalid.errors[..],
        [ValidationError::InvalidEnvReference { task, variable, .. }] if task == "load" && variable == "N"
    ));
    assert_eq!(
        invalid.errors[0].to_string(),
        "task `load`: env `N`: `${upstream.extract.count}`: `extract` is not a direct dependency of this task (its dependencies: `transform`)"
    );
}
