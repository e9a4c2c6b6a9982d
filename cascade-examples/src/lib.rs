//! Runnable examples for Cascade.
//!
//! - [`etl`]: the ETL pipeline (extract → transform → load → notify) with real
//!   data passed between the steps, and its task functions.
//! - [`load_dags`]: the loader that registers every example DAG with an engine.
//!
//! Run `cargo run -p cascade-examples --example etl` (embedded SQLite in
//! `./cascade.db`), or set `DATABASE_URL=postgres://…` to use PostgreSQL.

pub mod etl;

use cascade_core::{Cascade, DagRecord};

/// Registers every example DAG with the engine and returns their records.
pub async fn load_dags(cascade: &Cascade) -> cascade_core::Result<Vec<DagRecord>> {
    Ok(vec![cascade.register_dag(etl::etl_pipeline()).await?])
}

/// Logs to stderr through `tracing`: `RUST_LOG` decides the level, `info` by default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
