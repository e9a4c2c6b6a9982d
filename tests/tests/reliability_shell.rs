//! Shell tasks: output captured and bounded, exit codes, missing commands,
//! and no orphan process after a timeout or a cancellation.

use std::process::Command;
use std::time::Duration;

use cascade_core::{JobStatus, TaskEventKind, TaskStatus, Topic};
use cascade_tests::{backend_tests, dag_from, engine, wait_for_task_event};
use serde_json::json;

backend_tests!(
    shell_output_env_and_exit_codes,
    shell_timeout_and_cancel_leave_no_orphans
);

fn unique_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}{:09}", std::process::id(), nanos)
}

fn processes_matching(pattern: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The number of processes matching `pattern` once it reaches `expected`, or
/// after 10 s: processes start and die a little after the call that
/// caused it, later on a loaded machine.
async fn processes_settled(pattern: &str, expected: usize) -> usize {
    let start = std::time::Instant::now();
    loop {
        let n = processes_matching(pattern);
        if n == expected || start.elapsed() > Duration::from_secs(10) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shell_output_env_and_exit_codes(url: &str) {
    let cascade = engine(url, 4).await;
    let dir = std::env::temp_dir();
    let ir = json!({
        "ir_version": 1,
        "name": "shell_basics",
        "tasks": [
            { "id": "greet", "type": "shell", "command": "echo \"$GREETING from $(pwd)\"; echo warning >&2",
              "env": { "GREETING": "hello" }, "cwd": dir.display().to_string() },
            { "id": "noisy", "type": "shell", "command": "head -c 200000 /dev/zero | tr '\\0' 'x'" },
            { "id": "exit3", "type": "shell", "command": "echo failing >&2; exit 3", "retries": 1, "retry_delay": 0 },
            { "id": "missing", "type": "shell", "command": "definitely-not-a-command-cascade", "retries": 3, "retry_delay": 0 }
        ]
    });
    let record = cascade
        .register_dag(dag_from(&ir.to_string()))
        .await
        .expect("register");
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Failed);
    let rows = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    let row = |id: &str| rows.iter().find(|t| t.task_id == id).expect("row").clone();

    let greet = row("greet");
    assert_eq!(greet.status, TaskStatus::Success);
    let result = greet.result.expect("result");
    assert_eq!(result["exit_code"], json!(0));
    assert_eq!(result["stdout"], json!(format!("hello from {}\n", dir.display())));
    assert_eq!(result["stderr"], json!("warning\n"));
    let attempts = cascade
        .store()
        .list_task_attempts(job.id, "greet")
        .await
        .expect("attempts");
    let output = attempts[0].output.clone().unwrap_or_default();
    assert!(
        output.contains("hello from") && output.contains("warning"),
        "output: {output}"
    );

    let noisy = row("noisy").result.expect("result");
    let stdout = noisy["stdout"].as_str().expect("stdout");
    assert!(
        stdout.len() < 70 * 1024,
        "output is bounded: {} bytes",
        stdout.len()
    );
    assert!(
        stdout.contains("earlier bytes dropped") && stdout.ends_with("xxxx"),
        "the tail is kept"
    );

    let exit3 = row("exit3");
    assert_eq!(exit3.status, TaskStatus::Failed);
    assert_eq!(exit3.attempt, 2, "a non-zero exit is retried");
    let error = exit3.error.unwrap_or_default();
    assert!(
        error.contains("status 3") && error.contains("failing"),
        "error: {error}"
    );
    let attempts = cascade
        .store()
        .list_task_attempts(job.id, "exit3")
        .await
        .expect("attempts");
    assert!(
        attempts
            .iter()
            .all(|a| a.output.as_deref().is_some_and(|o| o.contains("failing")))
    );

    let missing = row("missing");
    assert_eq!(missing.status, TaskStatus::Failed);
    assert_eq!(missing.attempt, 1, "a missing command is not retried");
    let error = missing.error.unwrap_or_default();
    assert!(
        error.contains("127") && error.contains("not found"),
        "error: {error}"
    );
    cascade.shutdown().await.expect("shutdown");
}

async fn shell_timeout_and_cancel_leave_no_orphans(url: &str) {
    let cascade = engine(url, 4).await;
    let timeout_marker = format!("{}1", unique_marker());
    let cancel_marker = format!("{}2", unique_marker());
    let ir = json!({
        "ir_version": 1,
        "name": "shell_groups",
        "tasks": [
            { "id": "slow", "type": "shell", "timeout": 1,
              "command": format!("sleep {timeout_marker} & sleep {timeout_marker}; wait") }
        ]
    });
    let record = cascade
        .register_dag(dag_from(&ir.to_string()))
        .await
        .expect("register");
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Failed);
    let error = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("rows")[0]
        .error
        .clone();
    assert!(error.unwrap_or_default().contains("timed out after 1s"));
    assert_eq!(
        processes_settled(&format!("^sleep {timeout_marker}"), 0).await,
        0,
        "the timed-out command left processes behind"
    );

    let ir = json!({
        "ir_version": 1,
        "name": "shell_cancel",
        "tasks": [{ "id": "slow", "type": "shell", "command": format!("sleep {cancel_marker} & sleep {cancel_marker}; wait") }]
    });
    let record = cascade
        .register_dag(dag_from(&ir.to_string()))
        .await
        .expect("register");
    let mut events = cascade.subscribe(Topic::Dag(record.id));
    let job = cascade
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    wait_for_task_event(&mut events, None, TaskEventKind::Started).await;
    assert_eq!(
        processes_settled(&format!("^sleep {cancel_marker}"), 2).await,
        2,
        "both sleeps run"
    );
    cascade.cancel_job(job.id).await.expect("cancel");
    assert_eq!(
        processes_settled(&format!("^sleep {cancel_marker}"), 0).await,
        0,
        "the cancelled command left processes behind"
    );
    assert_eq!(
        cascade.store().get_job(job.id).await.expect("job").status,
        JobStatus::Cancelled
    );
    cascade.shutdown().await.expect("shutdown");
}
