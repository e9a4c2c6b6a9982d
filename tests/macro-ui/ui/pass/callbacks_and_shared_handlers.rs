//! DAG-level and task-level callbacks by path; a handler or callback used
//! several times gets one table entry.

use cascade_core::{CallbackContext, CallbackResult, TaskContext, TaskResult, dag};

mod hooks {
    use cascade_core::{CallbackContext, CallbackResult};

    pub async fn page(_ctx: CallbackContext) -> CallbackResult {
        Ok(())
    }
}

async fn log(_ctx: CallbackContext) -> CallbackResult {
    Ok(())
}

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

dag! {
    name: with_callbacks,
    on_failure: hooks::page,
    on_success: log,
    tasks: {
        a: { run: step, on_failure: hooks::page, on_retry: log },
        b: { run: step, depends_on: [a], on_success: log },
        c: { run: step, depends_on: [a], on_failure: crate::hooks::page },
    }
}

fn main() {
    let dag = with_callbacks();
    assert!(dag.missing_handlers().is_empty(), "{:?}", dag.missing_handlers());
    assert!(dag.callback("hooks::page").is_some());
    assert!(dag.callback("crate::hooks::page").is_some());
    assert!(dag.callback("log").is_some());
    let ir: serde_json::Value = serde_json::from_str(dag.ir_json()).expect("JSON");
    assert_eq!(ir["on_failure"], "hooks::page");
    assert_eq!(ir["on_success"], "log");
    assert_eq!(ir["tasks"][2]["on_failure"], "crate::hooks::page");
    assert_eq!(ir["topological_order"], serde_json::json!(["a", "b", "c"]));
}
