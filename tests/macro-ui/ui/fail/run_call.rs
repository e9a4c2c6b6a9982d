use cascade_core::{dag, TaskContext, TaskResult};

async fn extract(_ctx: TaskContext, _limit: u32) -> TaskResult {
    Ok(serde_json::json!(null))
}

dag! {
    name: etl,
    tasks: {
        a: { run: extract(ctx, 10) },
    }
}

fn main() {}
