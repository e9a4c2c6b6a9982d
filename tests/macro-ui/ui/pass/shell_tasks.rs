//! Shell tasks: `type: shell` with `command`, `env` and `cwd`, mixed with local ones.

use cascade_core::{TaskContext, TaskResult, dag};
use serde_json::json;

async fn report(_ctx: TaskContext) -> TaskResult {
    Ok(json!(null))
}

dag! {
    name: housekeeping,
    tasks: {
        build: { type: shell, command: "make all" },
        archive: {
            type: shell,
            command: "tar czf out.tgz out/",
            env: { "GZIP": "-9", "LANG": "C", },
            cwd: "/srv/app",
            depends_on: [build],
        },
        report: { type: local, run: report, depends_on: [archive] },
    }
}

fn main() {
    let dag = housekeeping();
    let ir: serde_json::Value = serde_json::from_str(dag.ir_json()).expect("JSON");
    let tasks = &ir["tasks"];
    assert_eq!(tasks[0]["type"], "shell");
    assert_eq!(tasks[0]["command"], "make all");
    assert!(tasks[0].get("handler").is_none());
    assert_eq!(tasks[1]["env"], json!({ "GZIP": "-9", "LANG": "C" }));
    assert_eq!(tasks[1]["cwd"], "/srv/app");
    assert_eq!(tasks[2]["type"], "local");
    assert!(dag.missing_handlers().is_empty());
}
