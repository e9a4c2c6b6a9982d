//! A node of a distributed Cascade deployment, for the multi-process tests:
//! `cascade-node <scheduler|worker|all> <database-url> [capacity] [cron]`.
//! Registers the test DAGs (and the every-second cron DAG with `cron`), prints
//! `ready`, and runs until SIGTERM.

use std::time::Duration;

use cascade_core::{Cascade, Role};
use cascade_tests::dist;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    cascade_tests::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let (role, url) = match args.as_slice() {
        [_, role, url, ..] => (role.as_str(), url.as_str()),
        _ => return Err("usage: cascade-node <scheduler|worker|all> <database-url> [capacity]".into()),
    };
    let capacity = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(4);
    let role = match role {
        "scheduler" => Role::Scheduler,
        "worker" => Role::Worker,
        "all" => Role::All,
        other => return Err(format!("unknown role {other}").into()),
    };
    let cascade = Cascade::builder()
        .database_url(url)
        .role(role)
        .capacity(capacity)
        .heartbeat_interval(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(200))
        .lease_duration(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await?;
    for width in [4, 40] {
        cascade.register_dag(dist::fan_dag(width)).await?;
    }
    cascade.register_dag(dist::flaky_dag()).await?;
    if args.get(4).map(String::as_str) == Some("cron") {
        cascade.register_dag(dist::cron_dag()).await?;
    }
    println!("ready");
    cascade.run_until_shutdown().await?;
    Ok(())
}
