use cascade_core::{TaskContext, TaskResult, dag};

fn not_async(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

async fn wrong_argument(_input: u32) -> TaskResult {
    Ok(serde_json::Value::Null)
}

async fn wrong_return(_ctx: TaskContext) -> String {
    String::new()
}

dag! {
    name: etl,
    tasks: {
        a: { run: not_async },
        b: { run: wrong_argument },
        c: { run: wrong_return },
    }
}

fn main() {}
