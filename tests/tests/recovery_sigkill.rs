//! Crash recovery with a real process killed by SIGKILL: in the middle of a
//! task, and during a retry's backoff. The job finishes in the next engine;
//! finished tasks never run again; the interrupted task runs again with its
//! attempt number kept and its side effect made once through the idempotency key.

use std::time::{Duration, Instant};

use cascade_core::{Cascade, JobStatus, TaskStatus};
use cascade_tests::backend_tests;
use cascade_tests::crash::{self, Role, marks, sigkill, start_victim, temp_dir, wait_until};

backend_tests!(sigkill_mid_task, sigkill_during_retry_backoff);

/// The recovering engine; its lease keeper looks for lapsed leases every third of a second.
async fn survivor(url: &str) -> Cascade {
    Cascade::builder()
        .database_url(url)
        .workers(2)
        .lease_duration(Duration::from_secs(1))
        .build()
        .await
        .expect("engine")
}

async fn sigkill_mid_task(url: &str) {
    let dir = temp_dir("mid");
    let victim = start_victim(
        env!("CARGO_BIN_EXE_cascade-crash-child"),
        url,
        "mid_task",
        &dir,
        1,
        &[],
    );
    let job_id = victim.job_id;
    // Kill it while `work` hangs, after its side effect (the ledger entry and
    // its mark, written one after the other) is complete.
    wait_until("work to charge in the child", || {
        !marks(&dir, "ledger").is_empty()
    });
    sigkill(victim);

    let cascade = survivor(url).await;
    let stored = cascade.store().get_job_with_details(job_id).await.expect("job");
    assert_eq!(
        stored.job.status,
        JobStatus::Running,
        "the killed process left the job running"
    );
    cascade
        .register_dag(crash::mid_task_dag(Role::Survivor))
        .await
        .expect("register");
    let job = tokio::time::timeout(Duration::from_secs(30), cascade.wait_for_job(job_id))
        .await
        .expect("the job was not recovered")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success);

    assert_eq!(marks(&dir, "prepare").len(), 1, "a completed task ran again");
    let work = marks(&dir, "work");
    assert_eq!(
        work.len(),
        2,
        "the interrupted task ran again (at least once): {work:?}"
    );
    assert!(
        work.iter().all(|line| line.ends_with("attempt 1")),
        "the attempt number was kept: {work:?}"
    );
    let ledger_entries = std::fs::read_dir(&dir)
        .expect("read the job dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("ledger-"))
        .count();
    assert_eq!(
        (ledger_entries, marks(&dir, "ledger").len()),
        (1, 1),
        "the idempotency key made the side effect exactly-once"
    );
    assert_eq!(marks(&dir, "finish").len(), 1);
    let tasks = cascade
        .store()
        .list_task_executions_for_job(job_id)
        .await
        .expect("tasks");
    let work_row = tasks.iter().find(|t| t.task_id == "work").expect("work");
    assert_eq!(
        (work_row.status, work_row.attempt, work_row.lost_count),
        (TaskStatus::Success, 1, 1)
    );
    // The attempt lost with the killed engine is on record, with that engine.
    let attempts = cascade
        .store()
        .list_task_attempts(job_id, "work")
        .await
        .expect("attempts");
    let statuses: Vec<(u32, TaskStatus)> = attempts.iter().map(|a| (a.attempt, a.status)).collect();
    assert_eq!(statuses, vec![(1, TaskStatus::Lost), (1, TaskStatus::Success)]);
    let lost_with = attempts[0]
        .worker
        .as_deref()
        .expect("the engine it was lost with");
    assert_ne!(lost_with, cascade.worker_id());
    assert!(
        attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains(lost_with)),
        "{:?}",
        attempts[0].error
    );
    assert!(attempts[0].started_at.is_some() && attempts[0].finished_at >= attempts[0].started_at);
    assert_eq!(
        work_row.result.as_ref().map(|r| r["charged_now"].clone()),
        Some(serde_json::json!(false))
    );
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn sigkill_during_retry_backoff(url: &str) {
    let dir = temp_dir("backoff");
    let victim = start_victim(
        env!("CARGO_BIN_EXE_cascade-crash-child"),
        url,
        "retry_backoff",
        &dir,
        1,
        &[],
    );
    let job_id = victim.job_id;
    let probe = cascade_core::Store::open(Some(url)).await.expect("store");
    let start = Instant::now();
    loop {
        let rows = probe.list_task_executions_for_job(job_id).await.expect("rows");
        if rows.first().is_some_and(|r| r.status == TaskStatus::UpForRetry) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first attempt never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigkill(victim);
    let next_attempt_at = probe.list_task_executions_for_job(job_id).await.expect("rows")[0]
        .next_attempt_at
        .expect("persisted retry time");

    let cascade = survivor(url).await;
    cascade
        .register_dag(crash::retry_backoff_dag())
        .await
        .expect("register");
    let job = tokio::time::timeout(Duration::from_secs(30), cascade.wait_for_job(job_id))
        .await
        .expect("the retry never happened")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    let flaky = marks(&dir, "flaky");
    assert_eq!(flaky.len(), 2, "{flaky:?}");
    assert!(flaky[1].ends_with("attempt 2"));
    let attempts = cascade
        .store()
        .list_task_attempts(job_id, "flaky")
        .await
        .expect("attempts");
    assert!(
        attempts[1].started_at.expect("started") >= next_attempt_at,
        "the retry ignored its backoff"
    );
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
