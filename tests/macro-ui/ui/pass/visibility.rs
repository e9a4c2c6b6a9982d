//! `pub` and `pub(crate)` DAG fns, called from outside their module; the
//! generated fn is documented, so `missing_docs` is satisfied.
#![deny(missing_docs)]

use cascade_core::{TaskContext, TaskResult};

async fn step(_ctx: TaskContext) -> TaskResult {
    Ok(serde_json::Value::Null)
}

/// DAGs.
pub mod dags {
    use cascade_core::dag;

    dag! {
        name: pub public_dag,
        tasks: { a: { run: super::step } },
    }

    dag! {
        /// Crate-visible.
        name: pub(crate) crate_dag,
        tasks: { a: { run: crate::step } },
    }

    dag! {
        name: private_dag,
        tasks: { a: { run: self::super::step } },
    }

    /// Uses the private one.
    pub fn private_name() -> String {
        private_dag().name().to_owned()
    }
}

fn main() {
    assert_eq!(dags::public_dag().name(), "public_dag");
    assert_eq!(dags::crate_dag().name(), "crate_dag");
    assert_eq!(dags::private_name(), "private_dag");
    assert!(dags::public_dag().handler("super::step").is_some());
    assert!(dags::crate_dag().handler("crate::step").is_some());
}
