//! Cron: ticks fire in UTC, pause and unpause, catch-up, the persisted next
//! fire time, and two engines on one database never firing a tick twice.

use std::collections::BTreeMap;
use std::time::Duration;

use cascade_core::{Cascade, Dag, DagId, JobFilter, TaskContext};
use cascade_tests::{backend_tests, dag_from};
use chrono::{DateTime, Utc};
use serde_json::json;

backend_tests!(
    cron_fires_ticks_and_pauses,
    catchup_backfills_missed_ticks,
    two_engines_never_fire_a_tick_twice
);

fn every_second(name: &str, catchup: bool) -> Dag {
    let ir = json!({
        "ir_version": 1,
        "name": name,
        "schedule": "* * * * * *",
        "catchup": catchup,
        "tasks": [{ "id": "tick", "handler": "tick" }]
    });
    dag_from(&ir.to_string()).with_handler("tick", |ctx: TaskContext| async move {
        Ok(ctx.params()["scheduled_for"].clone())
    })
}

async fn engine(url: &str) -> Cascade {
    Cascade::builder()
        .database_url(url)
        .workers(4)
        .build()
        .await
        .expect("engine")
}

/// The cron jobs of a DAG by scheduled tick, with how many jobs each tick got.
async fn ticks(cascade: &Cascade, dag_id: DagId) -> BTreeMap<DateTime<Utc>, usize> {
    let jobs = cascade
        .store()
        .list_jobs(JobFilter {
            dag_id: Some(dag_id),
            limit: 10_000,
            ..JobFilter::default()
        })
        .await
        .expect("jobs");
    let mut ticks = BTreeMap::new();
    for job in jobs {
        assert_eq!(job.trigger, "cron");
        let at: DateTime<Utc> = job.params["scheduled_for"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("scheduled_for");
        *ticks.entry(at).or_insert(0) += 1;
    }
    ticks
}

async fn cron_fires_ticks_and_pauses(url: &str) {
    let cascade = engine(url).await;
    let record = cascade
        .register_dag(every_second("every_second", false))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let fired = ticks(&cascade, record.id).await;
    assert!(fired.len() >= 2, "expected ticks every second, got {fired:?}");
    assert!(fired.values().all(|&n| n == 1));
    for at in fired.keys() {
        assert_eq!(at.timestamp_subsec_nanos(), 0, "ticks are whole seconds");
    }
    let stored = cascade.store().get_dag(record.id).await.expect("dag");
    assert!(
        stored
            .next_fire_at
            .is_some_and(|next| next > *fired.keys().last().expect("a tick")),
        "next fire time persisted"
    );

    let paused = cascade.pause_dag(record.id).await.expect("pause");
    assert!(paused.paused);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ticks(&cascade, record.id).await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        ticks(&cascade, record.id).await.len(),
        before,
        "a paused dag fired"
    );

    // Catch-up is off: unpausing fires only the latest missed tick, then carries on.
    cascade.unpause_dag(record.id).await.expect("unpause");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = ticks(&cascade, record.id).await.len();
    assert!(
        after - before <= 2,
        "catch-up off must not backfill: {before} -> {after}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        ticks(&cascade, record.id).await.len() > after,
        "the schedule continues after unpause"
    );
    assert!(matches!(
        cascade.pause_dag(DagId(9_999_999)).await,
        Err(cascade_core::Error::DagNotFound { .. })
    ));
    cascade.shutdown().await.expect("shutdown");
}

async fn catchup_backfills_missed_ticks(url: &str) {
    let first = engine(url).await;
    let record = first
        .register_dag(every_second("catching_up", true))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.shutdown().await.expect("shutdown");
    let before = ticks(&first, record.id).await;
    let last_before = *before.keys().last().expect("fired before the gap");
    drop(first);

    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = engine(url).await;
    second
        .register_dag(every_second("catching_up", true))
        .await
        .expect("register");
    // The backfill runs on registration; give it up to 10 s on a loaded machine.
    let waiting = std::time::Instant::now();
    let mut after = ticks(&second, record.id).await;
    while after.keys().filter(|t| **t > last_before).count() < 3
        && waiting.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = ticks(&second, record.id).await;
    }
    let seconds: Vec<i64> = after.keys().map(|t| t.timestamp()).collect();
    assert!(after.values().all(|&n| n == 1), "a tick fired twice: {after:?}");
    // Every second from the first tick to now, including the ones missed while no engine ran.
    for pair in seconds.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "a tick was lost: {seconds:?}");
    }
    let missed = after.keys().filter(|t| **t > last_before).count();
    assert!(
        missed >= 3,
        "expected the missed ticks to be backfilled, got {missed}: {seconds:?}"
    );
    second.shutdown().await.expect("shutdown");
}

async fn two_engines_never_fire_a_tick_twice(url: &str) {
    let one = engine(url).await;
    let two = engine(url).await;
    let record = one
        .register_dag(every_second("shared_schedule", false))
        .await
        .expect("register");
    two.register_dag(every_second("shared_schedule", false))
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    one.shutdown().await.expect("shutdown");
    two.shutdown().await.expect("shutdown");
    let fired = ticks(&one, record.id).await;
    assert!(fired.len() >= 3, "expected at least three ticks: {fired:?}");
    assert!(
        fired.values().all(|&n| n == 1),
        "a tick was fired twice: {fired:?}"
    );
}
