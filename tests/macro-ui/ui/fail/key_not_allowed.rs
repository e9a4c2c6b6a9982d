use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: mixed,
    tasks: {
        local_with_command: { run: step, command: "echo hi" },
        shell_with_run: { type: shell, command: "echo hi", run: step },
    }
}

fn main() {}
