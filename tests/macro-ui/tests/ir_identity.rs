//! The IR that `dag!` bakes is byte-identical to what the runtime validator
//! produces from the same DAG written as JSON, and re-validating the baked IR
//! gives the same bytes again.

use cascade_core::{CallbackContext, CallbackResult, Dag, TaskContext, TaskResult, dag};

async fn extract(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

async fn load(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

async fn alert(_ctx: CallbackContext) -> CallbackResult {
    Ok(())
}

mod tasks {
    use cascade_core::{TaskContext, TaskResult};

    pub(crate) async fn transform(_ctx: TaskContext) -> TaskResult {
        Ok(serde_json::Value::Null)
    }
}

dag! {
    name: minimal,
    tasks: {
        extract: { run: extract },
        load: { run: load, depends_on: [extract] },
    }
}

dag! {
    /// Uses most keys.
    name: etl,
    description: "Extract, transform, load",
    schedule: "0 * * * *",
    catchup: true,
    on_failure: alert,
    defaults: { timeout: 60, retries: 2, retry_factor: 3, trigger_rule: all_done, queue: "etl" },
    tasks: {
        extract: { run: extract, timeout: 300 },
        transform: { run: crate::tasks::transform, depends_on: [extract], retry_jitter: false },
        load: {
            run: load, depends_on: [transform, extract], retries: 3, retry_delay: 10,
            retry_max_delay: 120, trigger_rule: all_success, queue: "db", on_retry: alert,
        },
        cleanup: { type: shell, command: "rm -rf /tmp/etl", env: { "RUST_LOG": "info" }, cwd: "/tmp", depends_on: [load] },
    }
}

async fn log_retry(_ctx: CallbackContext) -> CallbackResult {
    Ok(())
}

// The example of docs/ir.md.
dag! {
    name: etl_pipeline,
    description: "Extract, transform, load",
    schedule: "0 * * * *",
    defaults: { retries: 2, queue: "etl" },
    on_failure: alert,
    tasks: {
        extract:   { run: extract, timeout: 300 },
        transform: { run: crate::tasks::transform, depends_on: [extract] },
        load:      { run: load, depends_on: [transform], retries: 3, retry_delay: 10,
                     trigger_rule: all_success, on_retry: log_retry },
        cleanup:   { type: shell, command: "rm -rf /tmp/etl", env: { "RUST_LOG": "info" },
                     cwd: "/tmp", depends_on: [load], trigger_rule: all_done },
    }
}

fn validated(json: &str) -> String {
    match Dag::from_ir_json(json) {
        Ok(dag) => dag.ir_json().to_owned(),
        Err(error) => panic!("the hand-written IR is valid: {error}"),
    }
}

#[test]
fn minimal_dag_matches_hand_written_json() {
    let by_hand = r#"{
        "ir_version": 1,
        "name": "minimal",
        "tasks": [
            { "id": "extract", "handler": "extract" },
            { "id": "load", "handler": "load", "depends_on": ["extract"] }
        ]
    }"#;
    assert_eq!(minimal().ir_json(), validated(by_hand));
}

#[test]
fn full_dag_matches_hand_written_json() {
    // Keys in another order than the macro's, relying on the same defaults.
    let by_hand = r#"{
        "tasks": [
            { "handler": "extract", "id": "extract", "timeout": 300 },
            { "id": "transform", "depends_on": ["extract"], "handler": "crate::tasks::transform",
              "retry_jitter": false },
            { "id": "load", "handler": "load", "depends_on": ["transform", "extract"], "retries": 3,
              "retry_delay": 10, "retry_max_delay": 120, "trigger_rule": "all_success", "queue": "db",
              "on_retry": "alert" },
            { "id": "cleanup", "type": "shell", "command": "rm -rf /tmp/etl", "env": { "RUST_LOG": "info" },
              "cwd": "/tmp", "depends_on": ["load"] }
        ],
        "defaults": { "queue": "etl", "timeout": 60, "retries": 2, "retry_factor": 3.0, "trigger_rule": "all_done" },
        "on_failure": "alert",
        "catchup": true,
        "schedule": "0 * * * *",
        "description": "Extract, transform, load",
        "name": "etl",
        "ir_version": 1
    }"#;
    let baked = etl().ir_json().to_owned();
    assert_eq!(baked, validated(by_hand));
    assert_eq!(
        etl().hash(),
        Dag::from_ir_json(by_hand)
            .map(|d| d.hash().to_owned())
            .unwrap_or_default()
    );
}

#[test]
fn revalidating_baked_ir_gives_the_same_bytes() {
    for dag in [minimal(), etl()] {
        let baked = dag.ir_json();
        assert_eq!(validated(baked), baked, "dag `{}`", dag.name());
        assert!(baked.contains("\"topological_order\""));
        assert!(baked.contains(&format!("\"hash\":\"{}\"", dag.hash())));
    }
}

#[test]
fn docs_example_matches() {
    let by_hand = r#"{
  "ir_version": 1,
  "name": "etl_pipeline",
  "description": "Extract, transform, load",
  "schedule": "0 * * * *",
  "defaults": { "retries": 2, "queue": "etl" },
  "on_failure": "alert",
  "tasks": [
    { "id": "extract", "handler": "extract", "timeout": 300 },
    { "id": "transform", "handler": "crate::tasks::transform", "depends_on": ["extract"] },
    { "id": "load", "handler": "load", "depends_on": ["transform"], "retries": 3, "retry_delay": 10,
      "trigger_rule": "all_success", "on_retry": "log_retry" },
    { "id": "cleanup", "type": "shell", "command": "rm -rf /tmp/etl", "env": { "RUST_LOG": "info" },
      "cwd": "/tmp", "depends_on": ["load"], "trigger_rule": "all_done" }
  ]
}"#;
    assert_eq!(etl_pipeline().ir_json(), validated(by_hand));
}
