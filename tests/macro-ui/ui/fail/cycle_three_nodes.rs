use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: cyclic,
    tasks: {
        alpha: { run: step, depends_on: [gamma] },
        beta: { run: step, depends_on: [alpha] },
        gamma: { run: step, depends_on: [beta] },
    }
}

fn main() {}
