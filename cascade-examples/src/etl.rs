//! The ETL pipeline: extract orders, transform them into revenue per region,
//! load the report into a file, and notify.
//!
//! Each step receives the previous step's result through
//! [`TaskContext::upstream`]; the job's parameters (`environment`,
//! `output_dir`) arrive through [`TaskContext::params`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use cascade_core::{TaskContext, TaskError, TaskResult, dag};
use serde_json::{Value, json};

/// The source data: one order per line, `id,region,amount_cents`.
const ORDERS: &str = "\
1001,emea,1999
1002,amer,4550
1003,apac,1200
1004,emea,3500
1005,amer,999
1006,apac,2500
1007,emea,750
";

/// Reads the orders and returns them as JSON rows.
pub async fn extract(ctx: TaskContext) -> TaskResult {
    let mut rows = Vec::new();
    for (line_no, line) in ORDERS.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let [id, region, amount] = fields.as_slice() else {
            return Err(TaskError::fatal(format!(
                "orders line {}: expected 3 fields",
                line_no + 1
            )));
        };
        rows.push(
            json!({ "id": id.parse::<i64>()?, "region": region, "amount_cents": amount.parse::<i64>()? }),
        );
    }
    tracing::info!(rows = rows.len(), environment = %ctx.params()["environment"], "extracted orders");
    Ok(json!({ "rows": rows, "environment": ctx.params()["environment"] }))
}

/// Sums revenue per region from the extracted rows.
pub async fn transform(ctx: TaskContext) -> TaskResult {
    let rows = ctx
        .upstream("extract")
        .and_then(|extracted| extracted["rows"].as_array())
        .ok_or_else(|| TaskError::fatal("extract produced no rows"))?;
    let mut revenue: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        let region = row["region"]
            .as_str()
            .ok_or_else(|| TaskError::fatal("row without region"))?;
        let amount = row["amount_cents"]
            .as_i64()
            .ok_or_else(|| TaskError::fatal("row without amount"))?;
        *revenue.entry(region.to_owned()).or_default() += amount;
    }
    let total: i64 = revenue.values().sum();
    tracing::info!(regions = revenue.len(), total_cents = total, "transformed orders");
    Ok(json!({ "revenue_cents": revenue, "total_cents": total, "orders": rows.len() }))
}

/// Writes the report to `<output_dir>/etl-report-<job>.json` (the system temp
/// directory unless the job's params name `output_dir`). The file name comes
/// from the task's idempotency key, so a re-run after a crash overwrites the
/// same file instead of writing a second one.
pub async fn load(ctx: TaskContext) -> TaskResult {
    let report = ctx
        .upstream("transform")
        .ok_or_else(|| TaskError::fatal("transform produced nothing"))?;
    let dir = ctx.params()["output_dir"]
        .as_str()
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let file_name = format!("etl-report-{}.json", ctx.idempotency_key().replace(':', "-"));
    let path = dir.join(file_name);
    let body = serde_json::to_vec_pretty(report)?;
    tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::write(path, body)
    })
    .await
    .map_err(|e| TaskError::new(format!("writing the report was interrupted: {e}")))??;
    tracing::info!(path = %path.display(), "loaded report");
    Ok(json!({ "path": path.display().to_string(), "total_cents": report["total_cents"] }))
}

/// Announces the result.
pub async fn notify(ctx: TaskContext) -> TaskResult {
    let loaded = ctx
        .upstream("load")
        .ok_or_else(|| TaskError::fatal("load produced nothing"))?;
    let message = format!(
        "ETL for {} finished: total revenue {} cents, report at {}",
        ctx.params()["environment"].as_str().unwrap_or("unknown"),
        loaded["total_cents"],
        loaded["path"].as_str().unwrap_or("?"),
    );
    tracing::info!(%message, "notify");
    Ok(Value::String(message))
}

dag! {
    /// The ETL pipeline: extract → transform → load → notify.
    name: pub etl_pipeline,
    description: "Extract, transform, load, notify",
    tasks: {
        extract:   { run: extract, timeout: 300 },
        transform: { run: transform, depends_on: [extract] },
        load:      { run: load, depends_on: [transform], retries: 3, retry_delay: 1 },
        notify:    { run: notify, depends_on: [load] },
    }
}
