use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: etl,
    on_failure: step,
    tasks: {
        a: { run: step },
    }
}

fn main() {}
