use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: cleanup,
    tasks: {
        clean: { type: shell, cwd: "/tmp" },
    }
}

fn main() {}
