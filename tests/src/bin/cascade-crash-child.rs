//! The process the crash-recovery tests kill with SIGKILL: starts an engine,
//! triggers one job, prints `job <id>` and runs until killed.
//!
//! Usage: `cascade-crash-child <database-url> <scenario> <dir> [lease-secs]`
//! (the lease defaults to 1 s, so that a test's engine takes the job over
//! soon after the kill even without knowing that the process is gone).
//! Scenarios: `mid_task`, `retry_backoff`, `shell_env`, `shell_sleep`, `fenced`.

use cascade_core::Cascade;
use cascade_tests::crash::{self, Role};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, scenario, dir, lease) = match args.as_slice() {
        [_, url, scenario, dir] => (url, scenario, dir, 1),
        [_, url, scenario, dir, lease] => (url, scenario, dir, lease.parse()?),
        _ => {
            return Err("usage: cascade-crash-child <database-url> <scenario> <dir> [lease-secs]".into());
        }
    };
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(2)
        .lease_duration(std::time::Duration::from_secs(lease))
        .build()
        .await?;
    let dag = match scenario.as_str() {
        "mid_task" => crash::mid_task_dag(Role::Victim),
        "retry_backoff" => crash::retry_backoff_dag(),
        "shell_env" => crash::shell_env_dag(),
        "shell_sleep" => crash::shell_sleep_dag(),
        "fenced" => crash::fenced_dag(),
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
