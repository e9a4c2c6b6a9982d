//! Takeover after a crash that is quick and visible: a job whose owner was a
//! process of this host that no longer exists is taken over as soon as an
//! engine registers its DAG, not after the owner's lease; jobs that nobody
//! runs are listed by `orphaned_jobs`; a job under another host's live lease
//! waits for that lease.

use std::time::{Duration, Instant};

use cascade_core::{Cascade, JobStatus, OrphanReason, TaskStatus};
use cascade_store::{NewJob, NewTask};
use cascade_tests::backend_tests;
use cascade_tests::crash::{self, Role, marks, sigkill, start_victim, temp_dir, wait_until};
use chrono::Utc;

backend_tests!(
    a_dead_local_owner_is_taken_over_at_once,
    a_job_another_host_holds_waits_for_its_lease
);

/// An engine with the default 30 s lease: only proof that the owner is gone
/// can make it take a job over within the test's bounds.
async fn engine(url: &str) -> Cascade {
    Cascade::builder()
        .database_url(url)
        .workers(2)
        .build()
        .await
        .expect("engine")
}

async fn a_dead_local_owner_is_taken_over_at_once(url: &str) {
    let dir = temp_dir("takeover");
    // The victim holds its job with a 30 s lease.
    let victim = start_victim(
        env!("CARGO_BIN_EXE_cascade-crash-child"),
        url,
        "mid_task",
        &dir,
        30,
        &[],
    );
    let job_id = victim.job_id;
    wait_until("work to charge in the child", || {
        !marks(&dir, "ledger").is_empty()
    });
    sigkill(victim);

    // Its `work` hangs like the victim's; shutting down stops it after 1 s.
    let first = Cascade::builder()
        .database_url(url)
        .workers(2)
        .shutdown_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("engine");
    let orphans = first.orphaned_jobs().await.expect("orphaned jobs");
    let orphan = orphans
        .iter()
        .find(|o| o.job.id == job_id)
        .unwrap_or_else(|| panic!("the killed process's job is listed: {orphans:?}"));
    assert!(
        matches!(orphan.reason, OrphanReason::OwnerGone { .. }),
        "{:?}",
        orphan.reason
    );
    let lease_end = orphan.job.lease_expires_at.expect("a lease");
    assert!(
        lease_end > Utc::now() + chrono::Duration::seconds(10),
        "the lease still runs"
    );

    // A program that registers the DAG and exits at once: it takes the job
    // over, and leaves it unowned on shutdown rather than stuck.
    first
        .register_dag(crash::mid_task_dag(Role::Victim))
        .await
        .expect("register");
    let taken = first.store().get_job(job_id).await.expect("job");
    assert_eq!(
        taken.owner.as_deref(),
        Some(first.worker_id()),
        "registering the DAG took the dead owner's job over"
    );
    first.shutdown().await.expect("shutdown");
    let released = cascade_core::Store::open(Some(url))
        .await
        .expect("store")
        .get_job(job_id)
        .await
        .expect("job");
    assert_eq!((released.status, released.owner), (JobStatus::Running, None));

    let second = engine(url).await;
    let orphans = second.orphaned_jobs().await.expect("orphaned jobs");
    assert!(
        orphans
            .iter()
            .any(|o| o.job.id == job_id && o.reason == OrphanReason::Unowned),
        "a released job is listed as unowned: {orphans:?}"
    );
    let start = Instant::now();
    second
        .register_dag(crash::mid_task_dag(Role::Survivor))
        .await
        .expect("register");
    let job = tokio::time::timeout(Duration::from_secs(20), second.wait_for_job(job_id))
        .await
        .expect("the job was taken over long before the victim's lease ends")
        .expect("wait");
    eprintln!("restart to success: {:?}", start.elapsed());
    assert_eq!(job.status, JobStatus::Success);
    assert!(second.orphaned_jobs().await.expect("orphans").is_empty());
    assert_eq!(marks(&dir, "prepare").len(), 1, "a completed task ran again");
    assert_eq!(
        std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("ledger-"))
            .count(),
        1,
        "the side effect happened once"
    );
    second.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn a_job_another_host_holds_waits_for_its_lease(url: &str) {
    let dir = temp_dir("other-host");
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(2)
        .lease_duration(Duration::from_secs(1))
        .build()
        .await
        .expect("engine");
    // The DAG is stored (by an engine that then stops) before the job that
    // "another host" holds is created, and before this engine registers it.
    let record = {
        let other = Cascade::builder()
            .database_url(url)
            .workers(1)
            .build()
            .await
            .expect("engine");
        let record = other
            .register_dag(crash::retry_backoff_dag())
            .await
            .expect("register");
        other.shutdown().await.expect("shutdown");
        record
    };
    let lease_end = Utc::now() + chrono::Duration::seconds(3);
    let created = cascade_core::Store::open(Some(url))
        .await
        .expect("store")
        .create_job(NewJob {
            dag_id: record.id,
            dag_version: record.version,
            status: JobStatus::Pending,
            trigger: "manual".into(),
            params: serde_json::json!({ "dir": dir.display().to_string() }),
            idempotency_key: None,
            owner: Some("another-host:4242:0000abcd".into()),
            lease_expires_at: Some(lease_end),
            tasks: vec![NewTask {
                task_id: "flaky".into(),
                queue: "default".into(),
                status: TaskStatus::Pending,
                attempt: 0,
                fencing_token: 0,
                started_at: None,
                priority: 0,
                labels: vec![],
            }],
        })
        .await
        .expect("create");
    let job_id = created.job.id;
    let orphans = cascade.orphaned_jobs().await.expect("orphans");
    assert!(
        orphans.iter().all(|o| o.job.id != job_id),
        "a live lease of another host is not an orphan: {orphans:?}"
    );
    cascade
        .register_dag(crash::retry_backoff_dag())
        .await
        .expect("register");
    let job = cascade.store().get_job(job_id).await.expect("job");
    assert_eq!(
        job.owner.as_deref(),
        Some("another-host:4242:0000abcd"),
        "another host's live lease is respected"
    );
    let job = tokio::time::timeout(Duration::from_secs(30), cascade.wait_for_job(job_id))
        .await
        .expect("taken over once the lease ended")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    let attempts = cascade
        .store()
        .list_task_attempts(job_id, "flaky")
        .await
        .expect("attempts");
    // The lease is judged on the database's clock and the attempt stamped
    // on this process's: one host, so they read apart by milliseconds.
    let stored_end = created.job.lease_expires_at.expect("a stored lease");
    assert!(
        attempts[0].started_at.expect("started") >= stored_end - chrono::Duration::milliseconds(50),
        "something ran before the other host's lease ended: started {:?}, lease until {stored_end}",
        attempts[0].started_at
    );
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
