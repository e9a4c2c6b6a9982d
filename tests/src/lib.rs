//! Shared helpers for the workspace integration tests: fresh databases on both
//! backends, engines, and small DAG builders.
#![allow(missing_docs)]

pub mod crash;
pub mod dist;

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use cascade_core::{Cascade, Dag, Event, EventStream, Job, TaskEventKind};
pub use cascade_store::testing::{TestDb, execute_sql, postgres_url, sqlite_url};
use tokio_stream::StreamExt;

/// Runs an async test body once per backend: `name::sqlite` and
/// `name::postgres` (skipped loudly when no PostgreSQL is available, a failure
/// under `CASCADE_REQUIRE_POSTGRES=1`). Each run gets a fresh database.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::init_tracing();
                let db = $crate::sqlite_url();
                super::$name(&db.url).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::init_tracing();
                if let Some(db) = $crate::postgres_url().await {
                    super::$name(&db.url).await;
                }
            }
        }
    )*};
}

/// A test that cannot run here (a tool or a file it needs is missing): a
/// failure under `CASCADE_REQUIRE_POSTGRES=1`, where every test must run,
/// and otherwise a loud banner. The caller returns after it.
pub fn cannot_run(reason: &str) {
    assert!(
        std::env::var("CASCADE_REQUIRE_POSTGRES").as_deref() != Ok("1"),
        "CASCADE_REQUIRE_POSTGRES=1, but this test cannot run: {reason}"
    );
    eprintln!(
        "\n==================================================================\n\
         SKIPPING: {reason}\n\
         ==================================================================\n"
    );
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// An engine on `url` with `workers` runners and short timeouts for tests.
pub async fn engine(url: &str, workers: usize) -> Cascade {
    Cascade::builder()
        .database_url(url)
        .workers(workers)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("engine starts")
}

/// Registers `dag`, triggers one manual job without params, and waits until
/// it finishes.
pub async fn run_job(cascade: &Cascade, dag: Dag) -> Job {
    let record = cascade.register_dag(dag).await.expect("register");
    let job = cascade
        .trigger_job(record.id, "manual", serde_json::json!({}))
        .await
        .expect("trigger");
    cascade.wait_for_job(job.id).await.expect("wait")
}

/// JSON IR for a DAG: `tasks` is a list of `(id, handler, depends_on)`.
pub fn ir(name: &str, tasks: &[(&str, &str, &[&str])]) -> String {
    let tasks: Vec<serde_json::Value> = tasks
        .iter()
        .map(|(id, handler, deps)| serde_json::json!({ "id": id, "handler": handler, "depends_on": deps }))
        .collect();
    serde_json::json!({ "ir_version": 1, "name": name, "tasks": tasks }).to_string()
}

/// Parses IR that a test wrote; panics with the validator's message.
pub fn dag_from(json: &str) -> Dag {
    Dag::from_ir_json(json).unwrap_or_else(|e| panic!("test IR is invalid: {e}"))
}

/// A shared, ordered log of what handlers did.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.into());
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Polls `check` every 20 ms until it holds; panics after 60 s.
pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `events` until a task event of `kind` arrives (for `task`, or any
/// task when `None`); panics after 10 s without one.
pub async fn wait_for_task_event(events: &mut EventStream, task: Option<&str>, kind: TaskEventKind) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Event::Task(e))) if e.kind == kind && task.is_none_or(|t| t == e.task_id) => return,
            Ok(Some(_)) => {}
            other => panic!("no {kind:?} event for {task:?}: {other:?}"),
        }
    }
}
