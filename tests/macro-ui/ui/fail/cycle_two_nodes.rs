use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: ping_pong,
    tasks: {
        ping: { run: step, depends_on: [pong] },
        pong: { run: step, depends_on: [ping] },
    }
}

fn main() {}
