use cascade_core::{TaskContext, TaskResult, dag};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: etl,
    tasks: {
        extract: { run: step },
        load: { run: step, depends_on: [extract], trigger_rule: all_sucess },
    }
}

fn main() {}
