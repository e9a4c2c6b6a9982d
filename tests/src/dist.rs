//! DAGs for the distributed tests, shared by the test and the node processes
//! it starts (`src/bin/cascade-node.rs`).
//!
//! Handlers record each run in `<dir>/runs.log` and make their side effect
//! exactly once with the idempotency key (`<dir>/ledger/<key>`). With the job
//! param `watch_cancel: true` they stop as soon as their job is cancelled.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cascade_core::{Dag, TaskContext, TaskError, TaskResult};
use serde_json::json;

fn dir(ctx: &TaskContext) -> Result<PathBuf, TaskError> {
    ctx.params()["dir"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| TaskError::fatal("param dir missing"))
}

/// Appends one line to a file (atomic for short lines with O_APPEND).
pub fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(format!("{line}\n").as_bytes())
}

/// Writes `stopped <pid> <job:task> <unix ms>` to `<dir>/stopped.log` if the
/// attempt is dropped before it finishes (cancelled or aborted).
struct StopWitness {
    path: PathBuf,
    task: String,
    finished: bool,
}

impl Drop for StopWitness {
    fn drop(&mut self) {
        if !self.finished {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let _ = append(
                &self.path,
                &format!("stopped {} {} {now}", std::process::id(), self.task),
            );
        }
    }
}

async fn step(ctx: TaskContext) -> TaskResult {
    let dir = dir(&ctx)?;
    let mut witness = StopWitness {
        path: dir.join("stopped.log"),
        task: format!("{}:{}", ctx.job_id(), ctx.task_id()),
        finished: false,
    };
    append(
        &dir.join("runs.log"),
        &format!("{} {} {}", std::process::id(), ctx.job_id(), ctx.task_id()),
    )?;
    let key = if ctx.task_id().starts_with("part") {
        "part_sleep_ms"
    } else {
        "sleep_ms"
    };
    let sleep_ms = ctx.params()[key]
        .as_u64()
        .or_else(|| ctx.params()["sleep_ms"].as_u64())
        .unwrap_or(0);
    if ctx.params()["watch_cancel"].as_bool() == Some(true) {
        tokio::select! {
            () = ctx.cancelled() => return Err(TaskError::new("stopped: the job was cancelled")),
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
        }
    } else {
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    }
    // The side effect, exactly once per task execution.
    let ledger = dir.join("ledger");
    std::fs::create_dir_all(&ledger)?;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(ledger.join(ctx.idempotency_key().replace(':', "-")))
    {
        Ok(_) => append(&dir.join("effects.log"), ctx.idempotency_key())?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    witness.finished = true;
    let inputs: usize = ctx.params()["width"].as_u64().map_or(0, |w| w as usize);
    Ok(json!({ "task": ctx.task_id(), "pid": std::process::id(), "inputs": inputs }))
}

/// start → `width` parallel steps → finish.
pub fn fan_dag(width: usize) -> Dag {
    let mut tasks = vec![json!({ "id": "start", "handler": "step" })];
    for i in 0..width {
        tasks.push(json!({ "id": format!("part{i}"), "handler": "step", "depends_on": ["start"] }));
    }
    let parts: Vec<String> = (0..width).map(|i| format!("part{i}")).collect();
    tasks.push(json!({ "id": "finish", "handler": "step", "depends_on": parts }));
    let ir = json!({ "ir_version": 1, "name": format!("fan{width}"), "tasks": tasks });
    Dag::from_ir_json(&ir.to_string())
        .unwrap_or_else(|e| panic!("fan IR: {e}"))
        .with_handler("step", step)
}

/// One task with `retries: 1` that fails its first `fail_until` attempts
/// (a job param).
pub fn flaky_dag() -> Dag {
    let ir = json!({
        "ir_version": 1, "name": "flaky",
        "tasks": [{ "id": "flaky", "handler": "flaky", "retries": 1, "retry_delay": 1, "retry_jitter": false }]
    });
    Dag::from_ir_json(&ir.to_string())
        .unwrap_or_else(|e| panic!("flaky IR: {e}"))
        .with_handler("flaky", |ctx: TaskContext| async move {
            let fail_until = ctx.params()["fail_until"].as_u64().unwrap_or(0);
            if u64::from(ctx.attempt()) <= fail_until {
                return Err(TaskError::new(format!("attempt {} fails", ctx.attempt())));
            }
            Ok(json!({ "attempt": ctx.attempt(), "pid": std::process::id() }))
        })
}

/// A cron DAG firing every second, backfilling missed ticks.
pub fn cron_dag() -> Dag {
    let ir = json!({
        "ir_version": 1, "name": "heartbeat_cron", "schedule": "* * * * * *", "catchup": true,
        "tasks": [{ "id": "tick", "handler": "tick" }]
    });
    Dag::from_ir_json(&ir.to_string())
        .unwrap_or_else(|e| panic!("cron IR: {e}"))
        .with_handler("tick", |ctx: TaskContext| async move {
            Ok(ctx.params()["scheduled_for"].clone())
        })
}
