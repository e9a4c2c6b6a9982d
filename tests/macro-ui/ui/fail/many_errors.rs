use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: broken,
    schedule: "every hour",
    tasks: {
        extract: { run: step, timeout: 0, retries: 7 },
        transform: { run: step, depends_on: [extract, missing] },
        load: { depends_on: [transform, load] },
        extract: { run: step, colour: "red" },
    }
}

fn main() {}
