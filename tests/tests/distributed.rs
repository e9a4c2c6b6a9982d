//! Distributed mode with real processes on one PostgreSQL database: a
//! scheduler process and worker processes, workers killed with SIGKILL and
//! frozen with SIGSTOP past their lease, load spread by capacity, events
//! crossing processes, and cron surviving the loss of the leader.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cascade_core::{
    Cascade, DagId, Error, Event, JobFilter, JobId, JobStatus, Role, TaskStatus, Topic, WorkerEventKind,
};
use cascade_store::testing::{TcpProxy, ThrowawayCluster};
use cascade_tests::{dist, init_tracing, postgres_url, sqlite_url};
use serde_json::json;
use tokio_stream::StreamExt;

struct Node {
    child: Child,
}

impl Node {
    fn start(role: &str, url: &str, capacity: usize, extra: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cascade-node"))
            .args([role, url, &capacity.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a node process");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read ready");
        assert_eq!(line.trim(), "ready", "node did not start");
        Node { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("cascade-dist-{label}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The test's own engine: a worker of a queue nothing uses, so it only
/// triggers jobs, reads the store and receives events.
async fn client(url: &str) -> Cascade {
    let cascade = Cascade::builder()
        .database_url(url)
        .role(Role::Worker)
        .queues(["test-client-only"])
        .capacity(1)
        .build()
        .await
        .expect("client engine");
    for width in [4, 40] {
        cascade
            .register_dag(dist::fan_dag(width))
            .await
            .expect("register");
    }
    cascade.register_dag(dist::flaky_dag()).await.expect("register");
    cascade
}

async fn dag_id(cascade: &Cascade, name: &str) -> DagId {
    cascade
        .store()
        .get_dag_by_name(name)
        .await
        .expect("dag")
        .expect("registered")
        .id
}

/// Triggers `fan4` with parts that sleep `part_sleep_ms`, marking in `dir`.
async fn trigger_fan4(cascade: &Cascade, dir: &Path, part_sleep_ms: u64) -> JobId {
    let fan = dag_id(cascade, "fan4").await;
    cascade
        .trigger_job(
            fan,
            "test",
            json!({ "dir": dir.display().to_string(), "sleep_ms": 0, "part_sleep_ms": part_sleep_ms }),
        )
        .await
        .expect("trigger")
        .id
}

/// Waits until `n` of the job's `part…` tasks are running.
async fn wait_parts_running(cascade: &Cascade, job: JobId, n: usize) {
    let start = Instant::now();
    loop {
        let tasks = cascade
            .store()
            .list_task_executions_for_job(job)
            .await
            .expect("tasks");
        let running = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Running && t.task_id.starts_with("part"))
            .count();
        if running == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {running} of {n} parts started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `n` part handlers have started in the process `pid` (each
/// writes `<pid> <job> <task>` to `runs.log` as it starts).
async fn wait_handlers_started(dir: &Path, pid: u32, n: usize) {
    let start = Instant::now();
    let pid = pid.to_string();
    loop {
        let started = lines(&dir.join("runs.log"))
            .iter()
            .filter(|l| {
                let mut words = l.split(' ');
                words.next() == Some(pid.as_str()) && words.nth(1).is_some_and(|t| t.starts_with("part"))
            })
            .count();
        if started >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {started} of {n} part handlers started in process {pid}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_all(cascade: &Cascade, jobs: &[JobId], limit: Duration) {
    let start = Instant::now();
    for &job in jobs {
        loop {
            let status = cascade.store().get_job(job).await.expect("job").status;
            if status.is_terminal() {
                break;
            }
            if start.elapsed() >= limit {
                let details = cascade.store().get_job_with_details(job).await.expect("job");
                let workers = cascade.store().list_workers().await.expect("workers");
                panic!("job {job} still {status} after {limit:?}: {details:#?} {workers:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_and_frozen_lose_nothing() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = temp_dir("chaos");
    let cascade = client(&db.url).await;
    let mut worker_events = cascade.subscribe(Topic::Workers);
    let _scheduler = Node::start("scheduler", &db.url, 4, &[]);
    let victim = Node::start("worker", &db.url, 4, &[]);
    let sleeper = Node::start("worker", &db.url, 4, &[]);
    let _steady = Node::start("worker", &db.url, 4, &[]);
    let victim_pid = victim.pid();

    let fan = dag_id(&cascade, "fan4").await;
    let mut jobs = Vec::new();
    for i in 0..200 {
        let params = json!({ "dir": dir.display().to_string(), "sleep_ms": 30, "i": i });
        jobs.push(
            cascade
                .trigger_job(fan, "test", params)
                .await
                .expect("trigger")
                .id,
        );
    }
    let effects = dir.join("effects.log");
    let wait_effects = |n: usize| {
        let effects = effects.clone();
        async move {
            let start = Instant::now();
            while lines(&effects).len() < n {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no progress past {n} effects"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_effects(200).await;
    // Kill the victim while it holds running tasks (workers can sit idle
    // between claims); what it held then is what the reaper must re-queue.
    let probe = cascade_core::Store::open(Some(&db.url)).await.expect("store");
    let victim_id = probe
        .list_workers()
        .await
        .expect("workers")
        .into_iter()
        .map(|w| w.id)
        .find(|id| id.split(':').nth(1) == Some(victim_pid.to_string().as_str()))
        .expect("the victim is registered");
    // Frozen first, so that what it holds cannot change between reading it
    // and the kill (a statement it sent just before lands meanwhile).
    let start = Instant::now();
    let lost_on_kill: Vec<(JobId, String)> = loop {
        victim.signal("-STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held = probe
            .list_running_tasks_of_worker(&victim_id)
            .await
            .expect("running");
        if !held.is_empty() {
            break held.into_iter().map(|t| (t.job_id, t.task_id)).collect();
        }
        victim.signal("-CONT");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the victim never held a task"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    victim.sigkill();
    wait_effects(500).await;
    sleeper.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sleeper.signal("-CONT");

    wait_all(&cascade, &jobs, Duration::from_secs(120)).await;
    for &job in &jobs {
        let details = cascade.store().get_job_with_details(job).await.expect("job");
        assert_eq!(
            details.job.status,
            JobStatus::Success,
            "job {job}: {:?}",
            details.job.error
        );
        assert!(details.tasks.iter().all(|t| t.status == TaskStatus::Success));
    }
    // Every task's side effect (its ledger entry, created with create_new under
    // the idempotency key) happened, and none twice, even where a task ran twice.
    let ledger = std::fs::read_dir(dir.join("ledger")).expect("ledger").count();
    assert_eq!(ledger, 200 * 6, "ledger entries");
    // The log line written after the effect is never duplicated (it can be
    // missing if a worker was killed between the two writes).
    let effects = lines(&effects);
    let unique: HashSet<&String> = effects.iter().collect();
    assert_eq!(unique.len(), effects.len(), "a side effect was logged twice");
    let runs = lines(&dir.join("runs.log"));
    assert!(runs.len() >= ledger, "every task ran at least once");
    // The tasks the killed worker held were returned to the queue by the
    // reaper, their lost attempt on record.
    assert!(
        !lost_on_kill.is_empty(),
        "the victim held no task when it was killed"
    );
    for &job in &jobs {
        let tasks = cascade
            .store()
            .list_task_executions_for_job(job)
            .await
            .expect("tasks");
        assert!(
            tasks.iter().all(|t| t.attempt == 1),
            "infrastructure loss must not spend attempts"
        );
        for task in tasks
            .iter()
            .filter(|t| lost_on_kill.contains(&(job, t.task_id.clone())))
        {
            let attempts = cascade
                .store()
                .list_task_attempts(job, &task.task_id)
                .await
                .expect("attempts");
            let by_victim = |status| {
                attempts
                    .iter()
                    .any(|a| a.status == status && a.worker.as_deref() == Some(victim_id.as_str()))
            };
            // Re-queued by the reaper with its loss on record — unless the
            // victim's outcome commit was already on its way when it died.
            assert!(
                (task.lost_count > 0 && by_victim(TaskStatus::Lost)) || by_victim(TaskStatus::Success),
                "{job}/{} was not re-queued after the SIGKILL: {attempts:?}",
                task.task_id
            );
        }
    }

    // Worker events crossed processes: three joined, the killed one was lost.
    let mut joined = 0;
    let mut lost_victim = false;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(300), worker_events.next()).await {
        if let Event::Worker(e) = event {
            match e.kind {
                WorkerEventKind::Joined => joined += 1,
                WorkerEventKind::Lost if e.worker.contains(&format!(":{victim_pid}:")) => lost_victim = true,
                _ => {}
            }
        }
    }
    assert!(joined >= 3, "joined events seen: {joined}");
    assert!(lost_victim, "the SIGKILLed worker was not reported lost");
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_spreads_by_capacity() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = temp_dir("balance");
    let cascade = client(&db.url).await;
    let mut job_events = cascade.subscribe(Topic::All);
    let _scheduler = Node::start("scheduler", &db.url, 4, &[]);
    let workers = [
        Node::start("worker", &db.url, 4, &[]),
        Node::start("worker", &db.url, 4, &[]),
    ];
    let fan = dag_id(&cascade, "fan40").await;
    let job = cascade
        .trigger_job(
            fan,
            "test",
            json!({ "dir": dir.display().to_string(), "sleep_ms": 300 }),
        )
        .await
        .expect("trigger")
        .id;
    wait_all(&cascade, &[job], Duration::from_secs(60)).await;
    assert_eq!(
        cascade.store().get_job(job).await.expect("job").status,
        JobStatus::Success
    );

    // Per worker, the most attempts that overlapped in time.
    let mut spans: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for task in cascade
        .store()
        .list_task_executions_for_job(job)
        .await
        .expect("tasks")
    {
        for attempt in cascade
            .store()
            .list_task_attempts(job, &task.task_id)
            .await
            .expect("attempts")
        {
            let (Some(worker), Some(start), Some(end)) =
                (attempt.worker, attempt.started_at, attempt.finished_at)
            else {
                panic!("attempt without worker or times");
            };
            spans
                .entry(worker)
                .or_default()
                .push((start.timestamp_micros(), end.timestamp_micros()));
        }
    }
    let pids: Vec<String> = workers.iter().map(|w| format!(":{}:", w.pid())).collect();
    for pid in &pids {
        let ran = spans
            .iter()
            .filter(|(w, _)| w.contains(pid.as_str()))
            .map(|(_, s)| s.len())
            .sum::<usize>();
        assert!(ran >= 10, "worker {pid} ran only {ran} of 42 tasks: {spans:?}");
    }
    for (worker, spans) in &spans {
        let mut edges: Vec<(i64, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
        edges.sort();
        let (mut now, mut peak) = (0, 0);
        for (_, delta) in edges {
            now += delta;
            peak = peak.max(now);
        }
        assert!(
            peak <= 4,
            "worker {worker} ran {peak} tasks at once with capacity 4"
        );
        assert!(
            peak >= 2,
            "worker {worker} was never busy with more than one task"
        );
    }
    // The scheduler's job event reached this process.
    let mut finished = false;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), job_events.next()).await {
        if let Event::Job(e) = event
            && e.job_id == job
            && e.status == JobStatus::Success
        {
            finished = true;
        }
    }
    assert!(finished, "the job's success event did not cross processes");
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_continues_when_the_leader_dies() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let first = Node::start("scheduler", &db.url, 4, &["cron"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = Node::start("scheduler", &db.url, 4, &["cron"]);
    let _worker = Node::start("worker", &db.url, 4, &[]);
    let cascade = client(&db.url).await;
    cascade.register_dag(dist::cron_dag()).await.expect("register");
    let cron = dag_id(&cascade, "heartbeat_cron").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The first scheduler took the leader lock first.
    first.sigkill();
    let killed_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let jobs = cascade
        .store()
        .list_jobs(JobFilter {
            dag_id: Some(cron),
            limit: 10_000,
            ..JobFilter::default()
        })
        .await
        .expect("jobs");
    let mut ticks: Vec<i64> = jobs
        .iter()
        .map(|j| {
            j.params["scheduled_for"]
                .as_str()
                .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .expect("tick")
                .timestamp()
        })
        .collect();
    ticks.sort();
    let distinct: HashSet<i64> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1,
            "a tick was lost across the failover: {ticks:?}"
        );
    }
    let last = *ticks.last().expect("ticks fired");
    assert!(
        last >= killed_at.timestamp() + 3,
        "cron stopped with the leader (last tick {last}, killed at {killed_at})"
    );
    cascade.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn distributed_roles_need_postgres() {
    let db = sqlite_url();
    for role in [Role::Worker, Role::Scheduler] {
        match Cascade::builder().database_url(&db.url).role(role).build().await {
            Err(Error::Config { reason }) => assert!(reason.contains("PostgreSQL"), "{reason}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_node() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = temp_dir("cancel");
    let cascade = client(&db.url).await;
    let _scheduler = Node::start("scheduler", &db.url, 4, &[]);
    let _worker = Node::start("worker", &db.url, 4, &[]);
    let fan = dag_id(&cascade, "fan40").await;
    let job = cascade
        .trigger_job(
            fan,
            "test",
            json!({ "dir": dir.display().to_string(), "sleep_ms": 0, "part_sleep_ms": 60_000 }),
        )
        .await
        .expect("trigger")
        .id;
    wait_parts_running(&cascade, job, 4).await;
    cascade
        .cancel_job(job)
        .await
        .expect("cancel from a node that does not own the job");
    let details = cascade.store().get_job_with_details(job).await.expect("job");
    assert_eq!(details.job.status, JobStatus::Cancelled);
    assert!(
        details.tasks.iter().all(|t| t.status.is_terminal()),
        "unfinished tasks after cancel: {:?}",
        details
            .tasks
            .iter()
            .filter(|t| !t.status.is_terminal())
            .map(|t| (&t.task_id, t.status))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        details
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Cancelled)
            .count(),
        41
    );
    cascade.cancel_job(job).await.expect("cancelling again is ok");
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cut_off_from_the_database_stops_its_attempts() {
    init_tracing();
    // A cluster of the test's own, on whatever port it got, with a proxy in
    // front of it for the worker that loses the network.
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let url = cluster.url();
    let dir = temp_dir("cutoff");
    let proxy = TcpProxy::start(cluster.addr()).await;
    let cascade = client(&url).await;
    let _scheduler = Node::start("scheduler", &url, 4, &[]);
    let cut_off = Node::start("worker", &proxy.url_through(&url), 4, &[]);
    let job = trigger_fan4(&cascade, &dir, 8000).await;
    // A claimed row is `running` before its handler starts; cut the network
    // only once all four handlers run on the worker.
    wait_handlers_started(&dir, cut_off.pid(), 4).await;
    // A dead link: nothing gets through any more, and nothing says so.
    proxy.cut();
    let cut_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let _rescuer = Node::start("worker", &url, 4, &[]);
    wait_all(&cascade, &[job], Duration::from_secs(60)).await;
    let details = cascade.store().get_job_with_details(job).await.expect("job");
    assert_eq!(details.job.status, JobStatus::Success, "{:?}", details.job.error);

    // The cut-off worker stopped its four attempts itself, soon after its lease
    // lapsed (lease 0.6 s), long before they would have finished (8 s).
    let pid = cut_off.pid().to_string();
    let stopped: Vec<u128> = lines(&dir.join("stopped.log"))
        .iter()
        .filter(|l| l.split(' ').nth(1) == Some(pid.as_str()))
        .filter_map(|l| l.split(' ').nth(3).and_then(|ms| ms.parse().ok()))
        .collect();
    assert_eq!(
        stopped.len(),
        4,
        "the cut-off worker did not stop its attempts: {stopped:?}"
    );
    for at in &stopped {
        assert!(
            *at - cut_at < 2_500,
            "an attempt ran on {} ms after the cut",
            at - cut_at
        );
    }
    // The parts ran again on the other worker, with their attempt number kept.
    let parts = details.tasks.iter().filter(|t| t.task_id.starts_with("part"));
    for task in parts {
        assert!(task.lost_count >= 1, "{} was not re-queued", task.task_id);
        assert_eq!(task.attempt, 1);
    }
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `retry_job` from a node that does not schedule: a scheduler takes the job
/// over, and the worker that runs the task gives it a full retry budget again
/// (`retries: 1`: attempts 1 and 2 fail the job; the re-run's attempt 3 fails
/// and is retried; attempt 4 succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_from_another_node_has_a_fresh_retry_budget() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let cascade = client(&db.url).await;
    let _scheduler = Node::start("scheduler", &db.url, 4, &[]);
    let worker = Node::start("worker", &db.url, 4, &[]);
    let flaky = dag_id(&cascade, "flaky").await;
    let job = cascade
        .trigger_job(flaky, "test", json!({ "fail_until": 3 }))
        .await
        .expect("trigger")
        .id;
    wait_all(&cascade, &[job], Duration::from_secs(60)).await;
    let failed = cascade.store().get_job(job).await.expect("job");
    assert_eq!(failed.status, JobStatus::Failed);

    let rerun = cascade.retry_job(job).await.expect("retry_job");
    assert_eq!(rerun.status, JobStatus::Running);
    wait_all(&cascade, &[job], Duration::from_secs(60)).await;
    let details = cascade.store().get_job_with_details(job).await.expect("job");
    assert_eq!(details.job.status, JobStatus::Success, "{:?}", details.job.error);
    let task = &details.tasks[0];
    assert_eq!((task.attempt, task.retry_base), (4, 2));
    assert_eq!(
        task.result,
        Some(json!({ "attempt": 4, "pid": worker.pid() })),
        "the worker process ran the re-run"
    );
    cascade.shutdown().await.expect("shutdown");
}

/// Handlers on a worker that watch the cancellation signal stop at once when
/// the job is cancelled from another node, and the worker records their
/// attempts as cancelled, not failed: a cancelled job is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_handlers_on_workers() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = temp_dir("cancel-watch");
    let cascade = client(&db.url).await;
    let _scheduler = Node::start("scheduler", &db.url, 4, &[]);
    let worker = Node::start("worker", &db.url, 4, &[]);
    let fan = dag_id(&cascade, "fan4").await;
    let job = cascade
        .trigger_job(
            fan,
            "test",
            json!({
                "dir": dir.display().to_string(), "sleep_ms": 0, "part_sleep_ms": 60_000,
                "watch_cancel": true
            }),
        )
        .await
        .expect("trigger")
        .id;
    wait_handlers_started(&dir, worker.pid(), 4).await;
    cascade.cancel_job(job).await.expect("cancel");
    let details = cascade.store().get_job_with_details(job).await.expect("job");
    assert_eq!(details.job.status, JobStatus::Cancelled);
    let statuses: Vec<(&str, TaskStatus)> = details
        .tasks
        .iter()
        .map(|t| (t.task_id.as_str(), t.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("start", TaskStatus::Success),
            ("part0", TaskStatus::Cancelled),
            ("part1", TaskStatus::Cancelled),
            ("part2", TaskStatus::Cancelled),
            ("part3", TaskStatus::Cancelled),
            ("finish", TaskStatus::Cancelled),
        ]
    );
    for part in ["part0", "part1", "part2", "part3"] {
        let attempts = cascade
            .store()
            .list_task_attempts(job, part)
            .await
            .expect("attempts");
        assert_eq!(attempts.len(), 1, "{part}: {attempts:?}");
        assert_eq!(attempts[0].status, TaskStatus::Cancelled, "{part}");
        assert!(
            attempts[0]
                .worker
                .as_deref()
                .is_some_and(|w| w.contains(&format!(":{}:", worker.pid()))),
            "{part} was not settled by its worker: {:?}",
            attempts[0].worker
        );
    }
    assert_eq!(
        lines(&dir.join("effects.log"))
            .iter()
            .filter(|l| l.contains(":part"))
            .count(),
        0,
        "a cancelled part made its side effect"
    );
    cascade.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The attempts of each `part…` task of a job, by task.
async fn part_attempts(cascade: &Cascade, job: JobId, width: usize) -> Vec<Vec<cascade_core::TaskAttempt>> {
    let mut all = Vec::new();
    for i in 0..width {
        all.push(
            cascade
                .store()
                .list_task_attempts(job, &format!("part{i}"))
                .await
                .expect("attempts"),
        );
    }
    all
}

/// How many times each task of `job` was started, by process (`runs.log`:
/// `<pid> <job> <task>` per handler start).
fn starts(dir: &Path, job: JobId) -> HashMap<String, Vec<u32>> {
    let mut starts: HashMap<String, Vec<u32>> = HashMap::new();
    for line in std::fs::read_to_string(dir.join("runs.log"))
        .unwrap_or_default()
        .lines()
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [pid, job_id, task] = fields[..]
            && job_id == job.to_string()
        {
            starts
                .entry(task.to_owned())
                .or_default()
                .push(pid.parse().expect("pid"));
        }
    }
    starts
}

/// An all-in-one engine (the default role, as a web server that triggers
/// jobs would have) takes over a job whose scheduler died while its tasks
/// ran on a live worker: it leaves those tasks to their worker (they hold
/// task leases), takes their outcomes from the store and runs the rest
/// itself. No task runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_in_one_engine_takes_over_a_schedulers_job() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = temp_dir("mixed-all");
    let client = client(&db.url).await;
    let scheduler = Node::start("scheduler", &db.url, 4, &[]);
    let worker = Node::start("worker", &db.url, 4, &[]);
    let job = trigger_fan4(&client, &dir, 4_000).await;
    wait_parts_running(&client, job, 4).await;
    wait_handlers_started(&dir, worker.pid(), 4).await;
    scheduler.sigkill();
    let all = Cascade::builder()
        .database_url(&db.url)
        .workers(4)
        .lease_duration(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(200))
        .build()
        .await
        .expect("all-in-one engine");
    all.register_dag(dist::fan_dag(4)).await.expect("register");
    let done = tokio::time::timeout(Duration::from_secs(60), all.wait_for_job(job))
        .await
        .expect("the job finishes")
        .expect("wait");
    assert_eq!(done.status, JobStatus::Success, "{:?}", done.error);
    let owner = client.store().list_workers().await.expect("workers");
    let worker_id = owner
        .iter()
        .find(|w| w.pid == i64::from(worker.pid()))
        .map(|w| w.id.clone())
        .expect("the worker's row");
    for attempts in part_attempts(&client, job, 4).await {
        let ran: Vec<_> = attempts.iter().map(|a| (a.status, a.worker.clone())).collect();
        assert_eq!(
            ran,
            [(TaskStatus::Success, Some(worker_id.clone()))],
            "a part ran again instead of being left to its live worker"
        );
    }
    let starts = starts(&dir, job);
    assert_eq!(starts.len(), 6, "start, 4 parts, finish: {starts:?}");
    for i in 0..4 {
        assert_eq!(starts[&format!("part{i}")], [worker.pid()], "{starts:?}");
    }
    assert_eq!(
        starts["finish"],
        [std::process::id()],
        "the new owner runs the rest itself"
    );
    all.shutdown().await.expect("shutdown");
    client.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scheduler takes over a job whose all-in-one engine died while running
/// its tasks itself (held under the job's lease, with no task lease for the
/// reaper to see): it records those attempts as lost and queues the tasks
/// for the workers, which finish the job. No task completes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_takes_over_an_all_in_one_engines_job() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = temp_dir("mixed-scheduler");
    let client = client(&db.url).await;
    let all = Node::start("all", &db.url, 4, &[]);
    let all_pid = all.pid();
    let worker = Node::start("worker", &db.url, 4, &[]);
    let job = trigger_fan4(&client, &dir, 4_000).await;
    wait_parts_running(&client, job, 4).await;
    wait_handlers_started(&dir, all_pid, 4).await;
    all.sigkill();
    let _scheduler = Node::start("scheduler", &db.url, 4, &[]);
    let done = tokio::time::timeout(Duration::from_secs(60), client.wait_for_job(job))
        .await
        .expect("the job finishes (a scheduler must not wait on tasks nobody runs)")
        .expect("wait");
    assert_eq!(done.status, JobStatus::Success, "{:?}", done.error);
    for attempts in part_attempts(&client, job, 4).await {
        let statuses: Vec<TaskStatus> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses,
            [TaskStatus::Lost, TaskStatus::Success],
            "the attempt lost with its engine is on record: {attempts:?}"
        );
    }
    // Each part ran on the dead engine and once more, to its end, on the
    // worker; nothing else ran twice.
    let starts = starts(&dir, job);
    assert_eq!(starts.len(), 6, "start, 4 parts, finish: {starts:?}");
    for i in 0..4 {
        assert_eq!(starts[&format!("part{i}")], [all_pid, worker.pid()], "{starts:?}");
    }
    assert_eq!(starts["start"], [all_pid]);
    assert_eq!(starts["finish"], [worker.pid()]);
    client.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Workers never claim the tasks of a job an all-in-one engine runs: the
/// tasks it queues while its runners are busy wait for its own runners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_leave_an_all_in_one_engines_queued_tasks_alone() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let dir = temp_dir("mixed-queued");
    let client = client(&db.url).await;
    let all = Node::start("all", &db.url, 1, &[]);
    let _worker = Node::start("worker", &db.url, 4, &[]);
    let job = trigger_fan4(&client, &dir, 300).await;
    let done = tokio::time::timeout(Duration::from_secs(60), client.wait_for_job(job))
        .await
        .expect("the job finishes")
        .expect("wait");
    assert_eq!(done.status, JobStatus::Success, "{:?}", done.error);
    let starts = starts(&dir, job);
    assert_eq!(starts.len(), 6, "start, 4 parts, finish: {starts:?}");
    for (task, pids) in &starts {
        assert_eq!(
            pids,
            &[all.pid()],
            "task {task} ran outside the engine that runs the job"
        );
    }
    client.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
