//! A node of a distributed Cascade deployment on PostgreSQL.
//!
//! ```text
//! export DATABASE_URL=postgres://root@127.0.0.1:5432/test
//! cargo run -p cascade-examples --example worker -- scheduler        # one or more, anywhere
//! cargo run -p cascade-examples --example worker -- worker 8         # N workers, capacity 8 each
//! cargo run -p cascade-examples --example worker -- trigger 10       # trigger 10 ETL jobs from any node
//! ```
//!
//! Schedulers own jobs and queue their ready tasks; workers claim and run
//! them; every node registers the ETL DAG so that it has its handlers. Stop a
//! node with Ctrl-C or SIGTERM: it finishes its running tasks first.

use cascade_core::{Cascade, JobStatus, Role};
use cascade_examples::{etl, init_tracing};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_tracing();
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL=postgres://…: distributed mode shares work through PostgreSQL")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("worker", String::as_str);
    let number: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(4);
    let role = match mode {
        "scheduler" => Role::Scheduler,
        "worker" | "trigger" => Role::Worker,
        other => return Err(format!("unknown mode `{other}`: use scheduler, worker or trigger").into()),
    };
    let mut builder = Cascade::builder().database_url(url).role(role);
    builder = match mode {
        "worker" => builder.capacity(number).queues(["default"]),
        // A node that only triggers: it listens on no queue anyone uses.
        "trigger" => builder.capacity(1).queues(["trigger-only"]),
        _ => builder,
    };
    let cascade = builder.build().await?;
    let dag = cascade.register_dag(etl::etl_pipeline()).await?;

    if mode == "trigger" {
        let mut jobs = Vec::new();
        for i in 0..number {
            let job = cascade
                .trigger_job(dag.id, "manual", json!({ "environment": "demo", "run": i }))
                .await?;
            tracing::info!(job.id = %job.id, "triggered");
            jobs.push(job.id);
        }
        for id in jobs {
            let job = cascade.wait_for_job(id).await?;
            tracing::info!(job.id = %job.id, status = %job.status, "finished");
            if job.status != JobStatus::Success {
                tracing::error!(error = ?job.error, "job failed");
            }
        }
        cascade.shutdown().await?;
        return Ok(());
    }
    tracing::info!(?role, "running until Ctrl-C or SIGTERM");
    cascade.run_until_shutdown().await?;
    Ok(())
}
