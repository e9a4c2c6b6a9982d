//! Cancel against a completion in flight: once `cancel_job` has stored its
//! request, an attempt that was running then cannot commit `success`, even
//! when its worker has not heard of the cancel and its commit reaches the
//! database only afterwards (held on the way, as by a stalled link).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_core::{Cascade, Dag, JobStatus, Role, TaskContext, TaskStatus};
use cascade_store::testing::{TcpProxy, ThrowawayCluster};
use cascade_tests::{dag_from, init_tracing, ir, wait_for};
use serde_json::json;
use tokio::sync::Notify;

#[derive(Clone, Default)]
struct Held {
    started: Arc<AtomicBool>,
    go: Arc<Notify>,
    returned: Arc<AtomicBool>,
}

/// One task whose handler ignores cancellation: it returns success when the
/// test says so.
fn held_dag(held: &Held) -> Dag {
    let held = held.clone();
    dag_from(&ir("held", &[("held", "held", &[])])).with_handler("held", move |_ctx: TaskContext| {
        let held = held.clone();
        async move {
            let go = held.go.notified();
            held.started.store(true, Ordering::SeqCst);
            go.await;
            held.returned.store(true, Ordering::SeqCst);
            Ok(json!("done"))
        }
    })
}

/// A scheduler and a worker on PostgreSQL; the worker reaches the database
/// through a proxy. The task's handler returns success while the proxy holds
/// everything the worker sends and receives, so the worker decides on
/// `success` without having heard of any cancel; then `cancel_job` stores its
/// request, and only then does the worker's commit reach the database. It is
/// refused: the task ends `cancelled`, with no `success` in its row or its
/// attempts, and so does the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_success_after_the_cancel_request_is_refused() {
    init_tracing();
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let url = cluster.url();
    let proxy = TcpProxy::start(cluster.addr()).await;
    let held = Held::default();
    let scheduler = Cascade::builder()
        .database_url(&url)
        .role(Role::Scheduler)
        .heartbeat_interval(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .cancel_grace_period(Duration::from_secs(3))
        .build()
        .await
        .expect("scheduler");
    // A long heartbeat (the task lease is three of them) outlasts the hold.
    let worker = Cascade::builder()
        .database_url(proxy.url_through(&url))
        .role(Role::Worker)
        .capacity(1)
        .heartbeat_interval(Duration::from_secs(4))
        .poll_interval(Duration::from_millis(100))
        .build()
        .await
        .expect("worker");
    let record = scheduler.register_dag(held_dag(&held)).await.expect("register");
    worker.register_dag(held_dag(&held)).await.expect("register");
    let job = scheduler
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger")
        .id;
    wait_for("the handler runs on the worker", async || {
        held.started.load(Ordering::SeqCst)
    })
    .await;

    proxy.hold();
    held.go.notify_one();
    wait_for("the handler returned", async || {
        held.returned.load(Ordering::SeqCst)
    })
    .await;
    let cancel = tokio::spawn({
        let scheduler = scheduler.clone();
        async move { scheduler.cancel_job(job).await }
    });
    wait_for("the cancel request is stored", async || {
        scheduler
            .store()
            .get_job(job)
            .await
            .expect("job")
            .cancel_requested_at
            .is_some()
    })
    .await;
    proxy.release();

    tokio::time::timeout(Duration::from_secs(60), cancel)
        .await
        .expect("cancel_job returned")
        .expect("cancel task")
        .expect("cancel_job");
    // The worker has committed whatever it will commit once it shut down.
    worker.shutdown().await.expect("worker shutdown");
    let details = scheduler.store().get_job_with_details(job).await.expect("job");
    assert_eq!(details.job.status, JobStatus::Cancelled);
    let task = &details.tasks[0];
    assert_eq!(task.status, TaskStatus::Cancelled, "{task:?}");
    assert_eq!(task.result, None);
    let attempts = scheduler
        .store()
        .list_task_attempts(job, "held")
        .await
        .expect("attempts");
    assert!(
        attempts.iter().all(|a| a.status != TaskStatus::Success),
        "a success was committed after the cancel request: {attempts:?}"
    );
    scheduler.shutdown().await.expect("scheduler shutdown");
}
