//! An all-in-one engine runs tasks, so it is listed with the workers while it
//! runs: registered, heartbeating, and stopped after a graceful shutdown.

use std::time::{Duration, Instant};

use cascade_core::{Cascade, WorkerRecord, WorkerRole, WorkerState};
use cascade_tests::backend_tests;

backend_tests!(all_in_one_engine_is_a_listed_worker);

/// Polls the workers table until `ready` holds for this engine's row.
async fn wait_for_row(cascade: &Cascade, what: &str, ready: impl Fn(&WorkerRecord) -> bool) -> WorkerRecord {
    let start = Instant::now();
    loop {
        let workers = cascade.store().list_workers().await.expect("list_workers");
        if let Some(row) = workers
            .into_iter()
            .find(|w| w.id == cascade.worker_id() && ready(w))
        {
            return row;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no worker row {what} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn all_in_one_engine_is_a_listed_worker(url: &str) {
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(3)
        .labels(["zone-a"])
        .heartbeat_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("engine");
    let row = wait_for_row(&cascade, "registered", |_| true).await;
    assert_eq!(
        (row.role, row.state, row.capacity, row.pid),
        (
            WorkerRole::All,
            WorkerState::Active,
            3,
            i64::from(std::process::id())
        )
    );
    assert!(
        row.queues.is_empty(),
        "an all-in-one engine runs every queue: {:?}",
        row.queues
    );
    assert_eq!(row.labels, ["zone-a"]);
    let registered_at = row.last_heartbeat;
    wait_for_row(&cascade, "heartbeating", |w| w.last_heartbeat > registered_at).await;

    cascade.shutdown().await.expect("shutdown");
    let row = wait_for_row(&cascade, "stopped", |_| true).await;
    assert_eq!(row.state, WorkerState::Stopped, "deregistered on shutdown");
}
