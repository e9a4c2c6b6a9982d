//! Job ownership is fenced, and leases run on the database's clock.
//!
//! - Two all-in-one engines on PostgreSQL: the one running a job is frozen
//!   (SIGSTOP) for twice its lease while its slow task runs; the other takes
//!   the job over and runs the task again. Once continued, the frozen engine
//!   stops its stale attempt at its next lease check instead of running it
//!   to its end, and nothing it does counts: the job ends `success` with the
//!   new owner's result, the task after the slow one runs once, and the job's
//!   success callback fires once.
//! - Workers whose clocks run 60 s ahead of and behind the database (under
//!   libfaketime) keep their claims: no task is reaped as lost.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cascade_core::{Cascade, JobStatus, Role, TaskStatus};
use cascade_tests::crash::{self, marks};
use cascade_tests::{dist, init_tracing, postgres_url};
use serde_json::json;

const CHILD: &str = env!("CARGO_BIN_EXE_cascade-crash-child");
const LEASE_SECS: u64 = 2;

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The pids that wrote `what` lines to `<dir>/<name>.log`.
fn pids(dir: &Path, name: &str, what: &str) -> Vec<u32> {
    marks(dir, name)
        .iter()
        .filter(|line| line.starts_with(what))
        .filter_map(|line| line.split_whitespace().nth(2)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_is_fenced_out_and_stops_its_attempts() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = crash::temp_dir("fenced");
    let frozen = crash::start_victim(CHILD, &db.url, "fenced", &dir, LEASE_SECS, &[]);
    let a = frozen.child.id();
    let job_id = frozen.job_id;
    let b = Cascade::builder()
        .database_url(&db.url)
        .workers(2)
        .lease_duration(Duration::from_secs(LEASE_SECS))
        .build()
        .await
        .expect("engine b");
    b.register_dag(crash::fenced_dag()).await.expect("register");
    let me = std::process::id();

    crash::wait_until("engine a starts the slow task", || {
        pids(&dir, "slow", "start") == [a]
    });
    signal(a, "-STOP");
    let frozen_at = Instant::now();
    // The other engine takes the job over once the lease lapsed, and runs
    // the interrupted task again.
    crash::wait_until("engine b runs the slow task again", || {
        pids(&dir, "slow", "start").contains(&me)
    });
    let freeze = Duration::from_secs(2 * LEASE_SECS);
    tokio::time::sleep(freeze.saturating_sub(frozen_at.elapsed())).await;
    signal(a, "-CONT");

    let job = tokio::time::timeout(Duration::from_secs(60), b.wait_for_job(job_id))
        .await
        .expect("the job finishes")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success, "{:?}", job.error);
    // Engine a's slow attempt was stopped, never run to its end (it had more
    // than 3 s left when a was continued); engine b's ran once, to its end.
    assert!(
        !pids(&dir, "slow", "end").contains(&a),
        "the frozen engine ran its stale attempt to its end: {:?}",
        marks(&dir, "slow")
    );
    assert_eq!(pids(&dir, "slow", "end"), [me], "{:?}", marks(&dir, "slow"));
    assert_eq!(
        pids(&dir, "first", "start"),
        [a],
        "first ran once, before the freeze"
    );
    assert_eq!(pids(&dir, "last", "start"), [me], "{:?}", marks(&dir, "last"));
    assert_eq!(pids(&dir, "last", "end"), [me]);
    // The callback fired once, by the engine that finished the job; give a
    // late duplicate time to show.
    crash::wait_until("the success callback", || !marks(&dir, "callback").is_empty());
    tokio::time::sleep(Duration::from_secs(LEASE_SECS)).await;
    assert_eq!(
        pids(&dir, "callback", "success"),
        [me],
        "{:?}",
        marks(&dir, "callback")
    );

    let details = b.store().get_job_with_details(job_id).await.expect("details");
    let slow = details.tasks.iter().find(|t| t.task_id == "slow").expect("slow");
    assert_eq!(slow.status, TaskStatus::Success);
    assert_eq!(
        slow.result,
        Some(json!({ "pid": me })),
        "the new owner's result stands"
    );
    let attempts = b
        .store()
        .list_task_attempts(job_id, "slow")
        .await
        .expect("attempts");
    let statuses: Vec<TaskStatus> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [TaskStatus::Lost, TaskStatus::Success],
        "the interrupted attempt is on record as lost"
    );
    drop(frozen);
    b.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// libfaketime from Debian's `faketime` package, if installed.
fn libfaketime() -> Option<&'static str> {
    const PATHS: [&str; 2] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ];
    let found = PATHS.into_iter().find(|p| Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var("CASCADE_REQUIRE_FAKETIME").as_deref() != Ok("1"),
            "CASCADE_REQUIRE_FAKETIME=1 but libfaketime is not installed (apt-get install faketime)"
        );
        eprintln!(
            "\n==================================================================\n\
             SKIPPING clock-skew test: libfaketime is not installed\n\
             (apt-get install faketime). CASCADE_REQUIRE_FAKETIME=1 makes this fail.\n\
             ==================================================================\n"
        );
    }
    found
}

/// A `cascade-node` process whose wall clock is `skew` (e.g. `+60s`) off.
struct SkewedNode(Child);

impl SkewedNode {
    fn start(role: &str, url: &str, capacity: usize, preload: &str, skew: &str) -> SkewedNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cascade-node"))
            .args([role, url, &capacity.to_string()])
            .env("LD_PRELOAD", preload)
            .env("FAKETIME", skew)
            // Timers and timeouts keep the real monotonic clock.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a node process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready", "node did not start");
        SkewedNode(child)
    }
}

impl Drop for SkewedNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_with_skewed_clocks_keep_their_claims() {
    init_tracing();
    let Some(preload) = libfaketime() else { return };
    let Some(db) = postgres_url().await else { return };
    // Task leases of 600 ms (three 200 ms heartbeats) against clocks a
    // minute off: stamped on the worker's own clock, every claim of the
    // late worker would be born expired and the early one's reaper would
    // take back everybody's.
    let _scheduler = SkewedNode::start("scheduler", &db.url, 4, preload, "+0s");
    let _ahead = SkewedNode::start("worker", &db.url, 2, preload, "+60s");
    let _behind = SkewedNode::start("worker", &db.url, 2, preload, "-60s");
    let client = Cascade::builder()
        .database_url(&db.url)
        .role(Role::Worker)
        .queues(["test-client-only"])
        .capacity(1)
        .build()
        .await
        .expect("client engine");
    let record = client.register_dag(dist::fan_dag(4)).await.expect("register");
    let dir = crash::temp_dir("skew");
    let job = client
        .trigger_job(
            record.id,
            "test",
            json!({ "dir": dir.display().to_string(), "sleep_ms": 0, "part_sleep_ms": 3_000 }),
        )
        .await
        .expect("trigger");
    let job = tokio::time::timeout(Duration::from_secs(90), client.wait_for_job(job.id))
        .await
        .expect("the job finishes")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success, "{:?}", job.error);
    let details = client
        .store()
        .get_job_with_details(job.id)
        .await
        .expect("details");
    let mut workers = std::collections::HashSet::new();
    for task in &details.tasks {
        let attempts = client
            .store()
            .list_task_attempts(job.id, &task.task_id)
            .await
            .expect("attempts");
        let statuses: Vec<TaskStatus> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses,
            [TaskStatus::Success],
            "task {} was taken back from its worker: {attempts:?}",
            task.task_id
        );
        assert_eq!(task.lost_count, 0);
        workers.extend(attempts.iter().filter_map(|a| a.worker.clone()));
    }
    assert_eq!(workers.len(), 2, "both skewed workers ran tasks: {workers:?}");
    client.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
