//! Every key of `dag!`, doc comments, visibility, handler paths and callbacks.

use cascade_core::{CallbackContext, CallbackResult, TaskContext, TaskResult, dag};
use serde_json::{Value, json};

mod tasks {
    use cascade_core::{TaskContext, TaskResult};

    pub async fn transform(_ctx: TaskContext) -> TaskResult {
        Ok(serde_json::json!("transformed"))
    }
}

mod hooks {
    use cascade_core::{CallbackContext, CallbackResult};

    pub async fn done(_ctx: CallbackContext) -> CallbackResult {
        Ok(())
    }
}

async fn extract(_ctx: TaskContext) -> TaskResult {
    Ok(json!({ "rows": [1, 2, 3] }))
}

async fn load(_ctx: TaskContext) -> TaskResult {
    Ok(json!(null))
}

async fn alert_team(_ctx: CallbackContext) -> CallbackResult {
    Ok(())
}

async fn notify_ops(_ctx: CallbackContext) -> CallbackResult {
    Ok(())
}

async fn log_ok(_ctx: CallbackContext) -> CallbackResult {
    Ok(())
}

async fn log_retry(_ctx: CallbackContext) -> CallbackResult {
    Ok(())
}

dag! {
    /// Docs for the generated fn.
    name: pub etl_pipeline,
    description: "Extract, transform, load, notify",
    schedule: "0 * * * *",
    catchup: true,
    on_failure: alert_team,
    on_success: crate::hooks::done,
    defaults: {
        timeout: 60, retries: 2, retry_delay: 5, retry_factor: 2.0, retry_max_delay: 600,
        retry_jitter: false, trigger_rule: all_done, queue: "etl",
    },
    tasks: {
        /// Reads the rows.
        extract: { run: extract, timeout: 300 },
        transform: { run: crate::tasks::transform, depends_on: [extract] },
        load: {
            run: load, depends_on: [transform], retries: 3, retry_delay: 10, trigger_rule: all_success,
            queue: "db", priority: 10, labels: ["ssd", "eu-west"],
            on_failure: notify_ops, on_success: log_ok, on_retry: log_retry,
        },
        cleanup: {
            type: shell, command: "rm -rf /tmp/etl", cwd: "/tmp", clean_env: true,
            env: { "RUST_LOG": "info", "REGION": "${params.region}", "ROWS": "${upstream.load.rows}" },
            depends_on: [load],
        },
    }
}

fn main() {
    let dag = etl_pipeline();
    let ir: Value = serde_json::from_str(dag.ir_json()).expect("the IR is JSON");
    assert_eq!(ir["name"], "etl_pipeline");
    assert_eq!(ir["description"], "Extract, transform, load, notify");
    assert_eq!(ir["schedule"], "0 * * * *");
    assert_eq!(ir["catchup"], true);
    assert_eq!(ir["on_failure"], "alert_team");
    assert_eq!(ir["on_success"], "crate::hooks::done");
    assert_eq!(ir["defaults"]["queue"], "etl");
    let tasks = ir["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks[0]["timeout"], 300);
    assert_eq!(tasks[0]["retries"], 2);
    assert_eq!(tasks[1]["handler"], "crate::tasks::transform");
    assert_eq!(tasks[1]["timeout"], 60);
    assert_eq!(tasks[1]["trigger_rule"], "all_done");
    assert_eq!(tasks[2]["retries"], 3);
    assert_eq!(tasks[2]["retry_delay"], 10);
    assert_eq!(tasks[2]["retry_factor"], 2.0);
    assert_eq!(tasks[2]["retry_max_delay"], 600);
    assert_eq!(tasks[2]["retry_jitter"], false);
    assert_eq!(tasks[2]["trigger_rule"], "all_success");
    assert_eq!(tasks[2]["queue"], "db");
    assert_eq!(tasks[2]["priority"], 10);
    assert_eq!(tasks[2]["labels"], serde_json::json!(["ssd", "eu-west"]));
    assert!(tasks[0].get("priority").is_none(), "priority 0 is the default and not written");
    assert_eq!(tasks[2]["on_failure"], "notify_ops");
    assert_eq!(tasks[2]["on_success"], "log_ok");
    assert_eq!(tasks[2]["on_retry"], "log_retry");
    assert_eq!(tasks[3]["type"], "shell");
    assert_eq!(tasks[3]["command"], "rm -rf /tmp/etl");
    assert_eq!(tasks[3]["env"]["RUST_LOG"], "info");
    assert_eq!(tasks[3]["cwd"], "/tmp");
    assert_eq!(tasks[3]["clean_env"], true);
    assert_eq!(tasks[3]["env"]["REGION"], "${params.region}");
    assert_eq!(ir["topological_order"], json!(["extract", "transform", "load", "cleanup"]));
    assert_eq!(dag.name(), "etl_pipeline");
    assert!(dag.missing_handlers().is_empty(), "{:?}", dag.missing_handlers());
    assert!(dag.handler("crate::tasks::transform").is_some());
    assert!(dag.callback("crate::hooks::done").is_some());
}
