//! Doc comments on the DAG and on tasks; task ids that are keywords of
//! `dag!` itself; order of keys is free.
#![deny(missing_docs)]

use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    /// The nightly run.
    ///
    /// Two lines of docs.
    name: pub nightly,
    tasks: {
        /// Runs first.
        run: { run: step },
        /// Runs second,
        /// after `run`.
        timeout: { depends_on: [run], timeout: 5, run: step },
        tasks: { run: step, depends_on: [timeout, run] },
    },
    description: "keys in any order",
}

fn main() {
    let dag = nightly();
    let ir: serde_json::Value = serde_json::from_str(dag.ir_json()).expect("JSON");
    assert_eq!(ir["description"], "keys in any order");
    assert_eq!(ir["topological_order"], serde_json::json!(["run", "timeout", "tasks"]));
}
