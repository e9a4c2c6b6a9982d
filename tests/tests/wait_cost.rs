//! Waiting for a job that another engine runs costs next to nothing: the
//! wait wakes on the job's events or re-reads the store with a backoff, it
//! never polls flat out.
//!
//! The wait lasts `CASCADE_WAIT_COST_SECS` seconds (default 3).

use std::time::{Duration, Instant};

use cascade_core::{Dag, JobStatus, TaskContext, TaskResult};
use cascade_tests::{backend_tests, dag_from, engine, ir};

backend_tests!(waiting_for_a_job_run_elsewhere_is_cheap);

/// This process's CPU time (user + system) from `/proc/self/stat`, if readable.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports them in USER_HZ, 100 per second on every common platform.
    Some(Duration::from_millis(ticks * 10))
}

async fn sleeper(ctx: TaskContext) -> TaskResult {
    let secs = ctx.params()["secs"].as_u64().unwrap_or(3);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(serde_json::json!("slept"))
}

fn dag() -> Dag {
    dag_from(&ir("wait_cost", &[("sleep", "sleep", &[])])).with_handler("sleep", sleeper)
}

async fn waiting_for_a_job_run_elsewhere_is_cheap(url: &str) {
    let secs: u64 = std::env::var("CASCADE_WAIT_COST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runner = engine(url, 2).await;
    let waiter = engine(url, 2).await;
    let record = runner.register_dag(dag()).await.expect("register");
    let job = runner
        .trigger_job(record.id, "manual", serde_json::json!({ "secs": secs }))
        .await
        .expect("trigger");
    let Some(cpu_before) = process_cpu() else {
        cascade_tests::cannot_run("the CPU check needs /proc/self/stat");
        return;
    };
    let start = Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(secs + 30), waiter.wait_for_job(job.id))
        .await
        .expect("the wait ended")
        .expect("wait");
    let waited = start.elapsed();
    let cpu = process_cpu().expect("cpu") - cpu_before;
    eprintln!("waited {waited:?} for a job run by another engine, using {cpu:?} of CPU");
    assert_eq!(done.status, JobStatus::Success);
    // A wait that polls flat out burns a whole core for the whole wait; a
    // cheap one uses a small fraction of one (the runner engine included).
    assert!(
        cpu < waited / 4,
        "waiting {waited:?} used {cpu:?} of CPU: the wait is polling, not waiting"
    );
    waiter.shutdown().await.expect("shutdown");
    runner.shutdown().await.expect("shutdown");
}
