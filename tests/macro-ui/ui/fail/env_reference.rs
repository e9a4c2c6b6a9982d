use cascade_core::{dag, TaskContext, TaskResult};

async fn extract(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::json!({ "count": 3 }))
}

dag! {
    name: etl,
    tasks: {
        extract: { run: extract },
        transform: { run: extract, depends_on: [extract] },
        load: {
            type: shell, command: "echo \"$N\"", depends_on: [transform],
            env: { "OK": "${upstream.transform.rows}", "N": "${upstream.extract.count}", "H": "${HOME}/bin" },
        },
    }
}

fn main() {}
