use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: hourly,
    schedule: "61 * * * *",
    tasks: {
        extract: { run: step },
    }
}

fn main() {}
