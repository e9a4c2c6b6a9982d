use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: etl,
    tasks: {
        extract: { timeout: 30 },
    }
}

fn main() {}
