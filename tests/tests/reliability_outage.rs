//! The store goes away mid-job and comes back: a PostgreSQL cluster of the
//! test's own restarted (fast and immediate) or stopped for seconds while a
//! 200-task job has tasks in flight, on an all-in-one engine and on a
//! scheduler with a worker, and a SQLite file whose write lock another
//! process holds for 10 s. The engine holds its commits (a worker its
//! outcomes), starts nothing new, and finishes the job; no task whose success
//! was committed runs again.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cascade_core::{Cascade, Dag, JobStatus, Role, TaskContext, TaskResult, TaskStatus};
use cascade_store::testing::{TcpProxy, ThrowawayCluster};
use cascade_tests::crash::{mark, marks, temp_dir};
use cascade_tests::{dag_from, init_tracing, ir, sqlite_url};

const TASKS: usize = 200;
const RUNNERS: usize = 8;

async fn work(ctx: TaskContext) -> TaskResult {
    let dir = PathBuf::from(ctx.params()["dir"].as_str().unwrap_or("/nonexistent"));
    mark(&dir, "runs", ctx.idempotency_key())?;
    let ms = ctx.params()["ms"].as_u64().unwrap_or(30);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    mark(&dir, "done", ctx.idempotency_key())?;
    Ok(serde_json::json!({ "task": ctx.task_id() }))
}

fn wide_dag(name: &str, n: usize) -> Dag {
    let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let tasks: Vec<(&str, &str, &[&str])> = ids.iter().map(|id| (id.as_str(), "work", &[][..])).collect();
    dag_from(&ir(name, &tasks)).with_handler("work", work)
}

async fn engine(url: &str) -> Cascade {
    Cascade::builder()
        .database_url(url)
        .workers(RUNNERS)
        .shutdown_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("engine")
}

async fn wait_for_marks(dir: &Path, name: &str, n: usize) {
    let start = Instant::now();
    while marks(dir, name).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fewer than {n} {name} marks"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every task succeeded once in the store; a task ran twice only if its
/// completion was not committed when the store went away. Returns the tasks
/// (idempotency keys) that ran twice.
async fn check_job(cascade: &Cascade, job_id: cascade_core::JobId, dir: &Path, n: usize) -> Vec<String> {
    let job = tokio::time::timeout(Duration::from_secs(120), cascade.wait_for_job(job_id))
        .await
        .expect("the job finished after the outage")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success, "{:?}", job.error);
    let details = cascade
        .store()
        .get_job_with_details(job_id)
        .await
        .expect("details");
    assert!(details.tasks.iter().all(|t| t.status == TaskStatus::Success));
    let mut runs: HashMap<String, usize> = HashMap::new();
    for key in marks(dir, "runs") {
        *runs.entry(key).or_default() += 1;
    }
    assert_eq!(runs.len(), n, "every task ran");
    let again: Vec<_> = runs.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        runs.values().all(|&count| count <= 2),
        "a task ran more than twice: {again:?}"
    );
    assert!(
        again.len() <= RUNNERS,
        "only tasks in flight during the outage may run again: {again:?}"
    );
    for summary in &details.attempt_summaries {
        let attempts = cascade
            .store()
            .list_task_attempts(job_id, &summary.task_id)
            .await
            .expect("attempts");
        let successes = attempts
            .iter()
            .filter(|a| a.status == TaskStatus::Success)
            .count();
        assert_eq!(successes, 1, "{}: {attempts:?}", summary.task_id);
    }
    let mut again: Vec<String> = again.into_iter().map(|(key, _)| key.clone()).collect();
    again.sort();
    again
}

/// Prints how long after the server was back (now) the first task started
/// (`--nocapture` shows it): the recovery time of a database restart.
async fn report_recovery(dir: &Path, what: &str) {
    let back = Instant::now();
    let started = marks(dir, "runs").len();
    wait_for_marks(dir, "runs", started + 1).await;
    eprintln!(
        "recovery ({what}): first task started {:?} after the server was back",
        back.elapsed()
    );
}

enum Outage {
    Restart(&'static str),
    Down(Duration),
}

impl Outage {
    async fn happen(self, cluster: &ThrowawayCluster) {
        match self {
            Outage::Restart(mode) => cluster.restart(mode).await,
            Outage::Down(down) => {
                cluster.stop("immediate").await;
                tokio::time::sleep(down).await;
                cluster.start_again().await;
            }
        }
    }
}

async fn outage_mid_job(outage: Outage) {
    init_tracing();
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let cascade = engine(&cluster.url()).await;
    let dir = temp_dir("outage");
    let record = cascade
        .register_dag(wide_dag("outage", TASKS))
        .await
        .expect("register");
    let job = cascade
        .trigger_job(
            record.id,
            "manual",
            serde_json::json!({ "dir": dir.display().to_string(), "ms": 30 }),
        )
        .await
        .expect("trigger");
    wait_for_marks(&dir, "done", 40).await;
    outage.happen(&cluster).await;
    report_recovery(&dir, "all-in-one").await;
    check_job(&cascade, job.id, &dir, TASKS).await;
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_restart_mid_job() {
    outage_mid_job(Outage::Restart("fast")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_immediate_restart_mid_job() {
    outage_mid_job(Outage::Restart("immediate")).await;
}

/// Down for longer than any short retry: the commits are held meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_seconds_mid_job() {
    outage_mid_job(Outage::Down(Duration::from_secs(4))).await;
}

/// The worker's heartbeat in the tests below; its claims' leases last three.
const WORKER_HEARTBEAT: Duration = Duration::from_secs(6);

/// A scheduler and a worker (two engines) on `url` and `worker_url`, with
/// the wide DAG of `n` tasks registered on both.
async fn pair(url: &str, worker_url: &str, n: usize) -> (Cascade, Cascade, cascade_core::DagId) {
    let node = |role: Role, url: &str| {
        Cascade::builder()
            .database_url(url)
            .role(role)
            .capacity(RUNNERS)
            .heartbeat_interval(WORKER_HEARTBEAT)
            .poll_interval(Duration::from_millis(50))
            .shutdown_timeout(Duration::from_secs(5))
            .build()
    };
    let scheduler = node(Role::Scheduler, url).await.expect("scheduler");
    let worker = node(Role::Worker, worker_url).await.expect("worker");
    let record = scheduler
        .register_dag(wide_dag("outage_worker", n))
        .await
        .expect("register");
    worker
        .register_dag(wide_dag("outage_worker", n))
        .await
        .expect("register");
    (scheduler, worker, record.id)
}

/// No task ran twice, unless the outage outlasted the leases the worker had
/// (three heartbeats, at least two of them left when it began): until then
/// the worker holds the outcomes it could not commit, and keeps their leases.
fn check_no_rerun(outage: Duration, again: &[String]) {
    if outage < WORKER_HEARTBEAT {
        assert!(
            again.is_empty(),
            "tasks ran again after a {outage:?} outage, though the worker held their outcomes: {again:?}"
        );
    } else {
        eprintln!(
            "a {outage:?} outage may outlast a lease: {} tasks ran again",
            again.len()
        );
    }
}

/// A scheduler and a worker share the cluster, restarted mid-job: the job
/// succeeds, no task whose success was committed runs again, and the
/// outcomes of attempts that end while the server is away are held by the
/// worker and committed once it is back, so no task runs twice at all.
async fn outage_mid_job_on_a_worker(outage: Outage) {
    init_tracing();
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let url = cluster.url();
    let (scheduler, worker, dag_id) = pair(&url, &url, TASKS).await;
    let dir = temp_dir("outage-worker");
    let job = scheduler
        .trigger_job(
            dag_id,
            "manual",
            serde_json::json!({ "dir": dir.display().to_string(), "ms": 30 }),
        )
        .await
        .expect("trigger");
    wait_for_marks(&dir, "done", 40).await;
    let began = Instant::now();
    outage.happen(&cluster).await;
    let outage = began.elapsed();
    report_recovery(&dir, "scheduler + worker").await;
    let again = check_job(&scheduler, job.id, &dir, TASKS).await;
    check_no_rerun(outage, &again);
    worker.shutdown().await.expect("shutdown");
    scheduler.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_restart_mid_job_on_a_worker() {
    outage_mid_job_on_a_worker(Outage::Restart("fast")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_immediate_restart_mid_job_on_a_worker() {
    outage_mid_job_on_a_worker(Outage::Restart("immediate")).await;
}

/// The commit of a worker's outcomes is on its way when the server restarts
/// (the worker reaches it through a proxy that holds the commit until then),
/// so that commit fails: the worker holds the outcomes and commits them
/// again once the server is back, rather than dropping them and letting the
/// tasks run a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_with_outcomes_on_the_wire() {
    init_tracing();
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let url = cluster.url();
    let proxy = TcpProxy::start(cluster.addr()).await;
    // As many tasks as the worker runs at once: it claims them together, and
    // then, full, nothing more until their outcomes are in.
    let (scheduler, worker, dag_id) = pair(&url, &proxy.url_through(&url), RUNNERS).await;
    let dir = temp_dir("outage-wire");
    let job = scheduler
        .trigger_job(
            dag_id,
            "manual",
            serde_json::json!({ "dir": dir.display().to_string(), "ms": 1000 }),
        )
        .await
        .expect("trigger");
    // Running, and their claims announced (the scheduler has heard of them):
    // the worker has nothing more to send until their outcomes.
    wait_for_marks(&dir, "runs", RUNNERS).await;
    let start = Instant::now();
    loop {
        let state = scheduler.job_state(job.id).await.expect("state");
        if state.tasks.iter().all(|t| t.status == TaskStatus::Running) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the claims were not announced: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.hold();
    wait_for_marks(&dir, "done", RUNNERS).await;
    let start = Instant::now();
    while proxy.held_from_clients() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker sent no commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let began = Instant::now();
    cluster.restart("immediate").await;
    // The held commit goes on to a connection the server has closed.
    proxy.release();
    let outage = began.elapsed();
    let again = check_job(&scheduler, job.id, &dir, RUNNERS).await;
    check_no_rerun(outage, &again);
    worker.shutdown().await.expect("shutdown");
    scheduler.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_for_ten_seconds() {
    init_tracing();
    if Command::new("python3").arg("--version").output().is_err() {
        cascade_tests::cannot_run("python3 is needed to hold the SQLite lock from another process");
        return;
    }
    let db = sqlite_url();
    let cascade = engine(&db.url).await;
    let dir = temp_dir("sqlite-lock");
    let n = 40;
    let record = cascade
        .register_dag(wide_dag("sqlite_lock", n))
        .await
        .expect("register");
    let job = cascade
        .trigger_job(
            record.id,
            "manual",
            serde_json::json!({ "dir": dir.display().to_string(), "ms": 100 }),
        )
        .await
        .expect("trigger");
    wait_for_marks(&dir, "done", 8).await;
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(10)\n\
             c.execute('COMMIT')\n",
            &path,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "locked");
    let locked_at = Instant::now();
    check_job(&cascade, job.id, &dir, n).await;
    assert!(holder.wait().expect("holder").success());
    eprintln!("finished {:?} after the lock was taken", locked_at.elapsed());
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
