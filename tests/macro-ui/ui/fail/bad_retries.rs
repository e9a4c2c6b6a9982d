use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: etl,
    defaults: { retries: 1000 },
    tasks: {
        extract: { run: step, retries: -1 },
        load: { run: step, retry_delay: 100000, retry_factor: 0.5 },
    }
}

fn main() {}
