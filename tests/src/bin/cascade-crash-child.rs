//! The process the crash-recovery tests kill with SIGKILL: starts an engine,
//! triggers one job, prints `job <id>` and runs until killed.
//!
//! Usage: `cascade-crash-child <database-url> <mid_task|retry_backoff> <dir>`

use cascade_core::Cascade;
use cascade_tests::crash::{self, Role};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, scenario, dir] = args.as_slice() else {
        return Err("usage: cascade-crash-child <database-url> <mid_task|retry_backoff> <dir>".into());
    };
    // A short lease, so that the test's engine takes the job over soon after the kill.
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(2)
        .lease_duration(std::time::Duration::from_secs(1))
        .build()
        .await?;
    let dag = match scenario.as_str() {
        "mid_task" => crash::mid_task_dag(Role::Victim),
        "retry_backoff" => crash::retry_backoff_dag(),
        other => return Err(format!("unknown scenario {other}").into()),
    };
    let record = cascade.register_dag(dag).await?;
    let job = cascade
        .trigger_job(record.id, "crash-test", json!({ "dir": dir }))
        .await?;
    println!("job {}", job.id);
    std::future::pending::<()>().await;
    Ok(())
}
