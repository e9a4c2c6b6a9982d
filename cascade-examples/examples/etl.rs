//! Runs the ETL pipeline once and prints what happened.
//!
//! ```text
//! cargo run -p cascade-examples --example etl                                  # SQLite: ./cascade.db
//! DATABASE_URL=postgres://root@127.0.0.1/test cargo run -p cascade-examples --example etl
//! ```

use cascade_core::{Cascade, JobStatus};
use cascade_examples::{etl, init_tracing};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_tracing();
    let mut builder = Cascade::builder();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        builder = builder.database_url(url);
    }
    let cascade = builder.build().await?;

    let dag = cascade.register_dag(etl::etl_pipeline()).await?;
    tracing::info!(dag = %dag.name, version = dag.version, "registered");

    let job = cascade
        .trigger_job(dag.id, "manual", json!({ "environment": "dev" }))
        .await?;
    tracing::info!(job.id = %job.id, "triggered");
    let job = cascade.wait_for_job(job.id).await?;

    for task in cascade.store().list_task_executions_for_job(job.id).await? {
        tracing::info!(
            task = %task.task_id,
            status = %task.status,
            attempt = task.attempt,
            result = %task.result.unwrap_or_default(),
            "task execution"
        );
    }
    match job.status {
        JobStatus::Success => tracing::info!(job.id = %job.id, status = %job.status, "job finished"),
        _ => {
            tracing::error!(job.id = %job.id, status = %job.status, error = ?job.error, "job did not succeed")
        }
    }
    cascade.shutdown().await?;
    if job.status != JobStatus::Success {
        std::process::exit(1);
    }
    Ok(())
}
