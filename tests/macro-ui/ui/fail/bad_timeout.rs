use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: etl,
    tasks: {
        zero: { run: step, timeout: 0 },
        negative: { run: step, timeout: -5 },
        absurd: { run: step, timeout: 99999999 },
    }
}

fn main() {}
