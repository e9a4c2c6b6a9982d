use cascade_core::{dag, TaskContext, TaskResult};

async fn extract(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::json!(null))
}

dag! {
    name: etl,
    tasks: {
        extract: { run: extract, clean_env: true },
    }
}

fn main() {}
