use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: leap,
    schedule: "0 0 30 2 *",
    tasks: {
        extract: { run: step },
    }
}

fn main() {}
