//! The smallest DAG: a private fn, one task, every setting from the defaults.

use cascade_core::{TaskContext, TaskResult, dag};

async fn hello(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::json!("hello"))
}

dag! {
    name: hello_world,
    tasks: {
        hi: { run: hello },
    }
}

fn main() {
    let dag = hello_world();
    let ir: serde_json::Value = serde_json::from_str(dag.ir_json()).expect("JSON");
    assert_eq!(ir["ir_version"], 1);
    let task = &ir["tasks"][0];
    assert_eq!(task["id"], "hi");
    assert_eq!(task["type"], "local");
    assert_eq!(task["handler"], "hello");
    assert_eq!(task["retries"], 0);
    assert_eq!(task["queue"], "default");
    assert_eq!(task["trigger_rule"], "all_success");
    assert!(task.get("timeout").is_none());
    assert_eq!(ir["hash"].as_str().map(str::len), Some(64));
    assert!(dag.handler("hello").is_some());
}
