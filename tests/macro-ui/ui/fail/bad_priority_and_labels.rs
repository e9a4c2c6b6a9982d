use cascade_core::{dag, TaskContext, TaskResult};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: ranked,
    tasks: {
        urgent: { run: step, priority: 5000 },
        picky: { run: step, labels: ["gpu", "gpu"] },
    }
}

fn main() {}
