//! One bad value never poisons a batch: task results that break a limit
//! (a NUL character, a shell command printing NUL bytes, 3 MiB, 200 levels
//! deep) fail only their own task while other jobs run on; params that
//! break one are refused at the trigger; a batch the store refuses for one
//! job's row still commits the other jobs; and a task whose worker keeps
//! disappearing fails after `max_lost` losses instead of going round forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_core::{
    Cascade, Error, JobFilter, JobStatus, LimitViolation, MAX_JSON_DEPTH, Role, TaskContext, TaskError,
    TaskEventKind, TaskResult, TaskStatus, Topic,
};
use cascade_store::{
    ClaimRequest, ErrorKind, JobTransition, NewDag, NewJob, NewTask, Store, StoreError, TaskChanges,
    TaskTransition, TransitionBatch,
};
use cascade_tests::{backend_tests, dag_from, engine, init_tracing, ir, postgres_url, wait_for_task_event};
use chrono::Utc;
use serde_json::{Value, json};

backend_tests!(
    poisoned_results_fail_only_their_own_tasks,
    poisoned_params_are_refused_at_the_trigger,
    one_bad_row_does_not_hold_back_a_batch
);

/// `depth` arrays around a string.
fn nested(depth: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = Value::Array(vec![value]);
    }
    value
}

/// Fails its first run; on a re-run it waits for its job to be cancelled.
async fn gate(ctx: TaskContext) -> TaskResult {
    if ctx.attempt() == 1 {
        return Err(TaskError::fatal("first run fails"));
    }
    ctx.cancelled().await;
    Err(TaskError::with_kind(
        cascade_core::TaskErrorKind::Cancelled,
        "cancelled",
    ))
}

async fn poisoned_results_fail_only_their_own_tasks(url: &str) {
    let cascade = engine(url, 4).await;
    let healthy = dag_from(&ir("healthy", &[("a", "work", &[]), ("b", "work", &["a"])]))
        .with_handler("work", |ctx: TaskContext| async move {
            Ok(json!({ "task": ctx.task_id(), "n": ctx.params()["n"] }))
        });
    let healthy = cascade.register_dag(healthy).await.expect("register healthy");
    let poison = json!({
        "ir_version": 1,
        "name": "poison",
        "tasks": [
            { "id": "nul_string", "handler": "nul_string" },
            { "id": "shell_nul", "type": "shell", "command": "printf 'a\\0b'" },
            { "id": "huge", "handler": "huge" },
            { "id": "deep", "handler": "deep" },
            { "id": "nul_error", "handler": "nul_error" },
            { "id": "after_deep", "handler": "nul_string", "depends_on": ["deep"] },
            { "id": "gate", "handler": "gate" }
        ]
    });
    let poison = dag_from(&poison.to_string())
        .with_handler("nul_string", |_ctx: TaskContext| async move {
            Ok(json!({ "rows": [{ "name": "a\u{0}b" }] }))
        })
        .with_handler("huge", |_ctx: TaskContext| async move {
            Ok(json!("x".repeat(3 * 1024 * 1024)))
        })
        .with_handler("deep", |_ctx: TaskContext| async move { Ok(nested(200)) })
        .with_handler("nul_error", |_ctx: TaskContext| async move {
            Err(TaskError::fatal("bad\u{0}byte"))
        })
        .with_handler("gate", gate);
    let poison = cascade.register_dag(poison).await.expect("register poison");

    // Ten healthy jobs run at the same time as the poisoned one.
    let poisoned = cascade
        .trigger_job(poison.id, "manual", json!({}))
        .await
        .expect("trigger poison");
    let mut healthy_jobs = Vec::new();
    for n in 0..10 {
        healthy_jobs.push(
            cascade
                .trigger_job(healthy.id, "manual", json!({ "n": n }))
                .await
                .expect("trigger healthy"),
        );
    }
    for job in &healthy_jobs {
        let job = tokio::time::timeout(Duration::from_secs(30), cascade.wait_for_job(job.id))
            .await
            .expect("healthy job within 30 s")
            .expect("wait");
        assert_eq!(job.status, JobStatus::Success, "{job:?}");
        let details = cascade
            .store()
            .get_job_with_details(job.id)
            .await
            .expect("details");
        assert!(details.tasks.iter().all(|t| t.status == TaskStatus::Success));
    }
    let job = tokio::time::timeout(Duration::from_secs(30), cascade.wait_for_job(poisoned.id))
        .await
        .expect("poisoned job within 30 s")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Failed);

    // The job can be shown: every row reads back, each poisoned task failed
    // saying which limit its result broke.
    let details = cascade
        .store()
        .get_job_with_details(poisoned.id)
        .await
        .expect("details of the poisoned job");
    let task = |id: &str| {
        details
            .tasks
            .iter()
            .find(|t| t.task_id == id)
            .unwrap_or_else(|| panic!("task {id}"))
            .clone()
    };
    let expect_failed = |id: &str, message: &str| {
        let row = task(id);
        assert_eq!(row.status, TaskStatus::Failed, "{id}: {row:?}");
        assert_eq!(row.result, None, "{id}");
        let error = row.error.unwrap_or_default();
        assert!(error.contains(message), "{id}: {error}");
        assert!(!error.contains('\0'), "{id}: {error}");
    };
    expect_failed(
        "nul_string",
        "result contains a NUL character (\\u0000) at $.rows[0].name",
    );
    expect_failed("shell_nul", "command wrote NUL bytes to stdout");
    expect_failed("huge", "result is 3145730 bytes, over max_result_bytes 2097152");
    expect_failed(
        "deep",
        &format!("result is nested 200 levels deep, over the limit of {MAX_JSON_DEPTH}"),
    );
    // A NUL in an error message is replaced, never a reason to fail.
    expect_failed("nul_error", "bad\u{FFFD}byte");
    assert_eq!(task("after_deep").status, TaskStatus::UpstreamFailed);
    for id in ["nul_string", "shell_nul", "huge", "deep"] {
        let attempts = cascade
            .store()
            .list_task_attempts(poisoned.id, id)
            .await
            .expect("attempts");
        assert_eq!(attempts.len(), 1, "{id}: a broken limit is not retried");
        assert_eq!(attempts[0].status, TaskStatus::Failed);
    }

    // It can be retried: the poisoned tasks fail again, the gate now waits...
    let mut events = cascade.subscribe(Topic::Job(poisoned.id));
    let rerun = cascade.retry_job(poisoned.id).await.expect("retry_job");
    assert_eq!(rerun.status, JobStatus::Running);
    wait_for_task_event(&mut events, Some("gate"), TaskEventKind::Started).await;
    // ...and cancelled.
    cascade.cancel_job(poisoned.id).await.expect("cancel_job");
    let job = cascade.wait_for_job(poisoned.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Cancelled);
    let details = cascade
        .store()
        .get_job_with_details(poisoned.id)
        .await
        .expect("details after cancel");
    let gate = details.tasks.iter().find(|t| t.task_id == "gate").expect("gate");
    assert_eq!(gate.status, TaskStatus::Cancelled);
    cascade.shutdown().await.expect("shutdown");
}

async fn poisoned_params_are_refused_at_the_trigger(url: &str) {
    let cascade = Cascade::builder()
        .database_url(url)
        .workers(2)
        .max_result_bytes(1024)
        .build()
        .await
        .expect("engine");
    let dag = dag_from(&ir("params", &[("t", "t", &[])]))
        .with_handler("t", |_ctx: TaskContext| async move { Ok(json!(null)) });
    let dag = cascade.register_dag(dag).await.expect("register");

    let refused = |result: cascade_core::Result<cascade_core::Job>| match result {
        Err(Error::InvalidParams { violation }) => violation,
        other => panic!("expected InvalidParams, got {other:?}"),
    };
    let nul = cascade
        .trigger_job(dag.id, "manual", json!({ "name": "a\u{0}b" }))
        .await;
    let violation = refused(nul);
    assert_eq!(
        violation,
        LimitViolation::Nul {
            path: "$.name".to_owned()
        }
    );
    let large = cascade
        .trigger_job(dag.id, "manual", json!({ "blob": "x".repeat(2000) }))
        .await;
    let error = large.expect_err("too large");
    assert_eq!(
        error.to_string(),
        "job params rejected: their JSON is 2011 bytes, over max_result_bytes 1024; fix them and trigger again"
    );
    let deep = cascade.trigger_job(dag.id, "manual", nested(200)).await;
    assert!(matches!(
        refused(deep),
        LimitViolation::TooDeep { depth: 200, max_depth } if max_depth == MAX_JSON_DEPTH
    ));
    let jobs = cascade
        .store()
        .list_jobs(JobFilter {
            dag_id: Some(dag.id),
            ..JobFilter::default()
        })
        .await
        .expect("jobs");
    assert!(jobs.is_empty(), "no job was created: {jobs:?}");

    // Params within the limits still run.
    let job = cascade
        .trigger_job(dag.id, "manual", json!({ "name": "ab" }))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Success);

    let err = Cascade::builder()
        .database_url(url)
        .max_result_bytes(0)
        .build()
        .await
        .expect_err("0 bytes");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    cascade.shutdown().await.expect("shutdown");
}

/// A store-level batch: three jobs, the middle one's outcome holds a NUL.
async fn one_bad_row_does_not_hold_back_a_batch(url: &str) {
    let store = Store::open(Some(url)).await.expect("store");
    let dag = store
        .upsert_dag(NewDag {
            name: "split".into(),
            description: String::new(),
            schedule: None,
            definition: "{}".into(),
            hash: "h".into(),
        })
        .await
        .expect("dag");
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let job = store
            .create_job(NewJob {
                dag_id: dag.id,
                dag_version: dag.version,
                status: JobStatus::Pending,
                trigger: "manual".into(),
                params: json!({}),
                idempotency_key: None,
                owner: None,
                lease_expires_at: None,
                tasks: vec![NewTask {
                    task_id: "t".into(),
                    queue: "default".into(),
                    status: TaskStatus::Running,
                    attempt: 1,
                    fencing_token: 1,
                    started_at: None,
                    priority: 0,
                    labels: Vec::new(),
                }],
            })
            .await
            .expect("job");
        jobs.push(job.job.id);
    }
    let finish = |job_id, error: Option<&str>| TaskTransition {
        job_id,
        task_id: "t".into(),
        from: TaskStatus::Running,
        fencing_token: 1,
        to: if error.is_some() {
            TaskStatus::Failed
        } else {
            TaskStatus::Success
        },
        changes: TaskChanges {
            result: error.is_none().then(|| json!({ "ok": true })),
            error: error.map(str::to_owned),
            completed_at: Some(Utc::now()),
            ..TaskChanges::default()
        },
    };
    let batch = TransitionBatch {
        tasks: vec![
            finish(jobs[0], None),
            finish(jobs[1], Some("poison\u{0}ed")),
            finish(jobs[2], None),
        ],
        jobs: jobs
            .iter()
            .map(|&job_id| JobTransition {
                job_id,
                from: JobStatus::Pending,
                to: JobStatus::Running,
                error: None,
                at: Utc::now(),
                owner: None,
            })
            .collect(),
        ..TransitionBatch::default()
    };
    // As one transaction, the bad row fails everything...
    let err = store.commit_transitions(&batch).await.expect_err("refused");
    assert!(matches!(err, StoreError::InvalidValue { .. }), "{err:?}");
    // ...split by job, the healthy jobs commit and only the bad one is reported.
    let split = store.commit_transitions_by_job(&batch).await;
    assert_eq!(split.outcome.tasks, [true, false, true]);
    assert_eq!(split.outcome.jobs, [true, false, true]);
    assert_eq!(split.failed.len(), 1);
    assert_eq!(split.failed[0].job_ids, [jobs[1]]);
    assert_eq!(split.failed[0].error.kind(), ErrorKind::Other);
    assert!(
        split.failed[0].error.to_string().contains("NUL"),
        "{}",
        split.failed[0].error
    );
    for (i, &job_id) in jobs.iter().enumerate() {
        let details = store.get_job_with_details(job_id).await.expect("details");
        let expected = if i == 1 {
            (JobStatus::Pending, TaskStatus::Running)
        } else {
            (JobStatus::Running, TaskStatus::Success)
        };
        assert_eq!((details.job.status, details.tasks[0].status), expected, "job {i}");
    }
}

/// Distributed mode: a task whose claims keep lapsing (its worker never
/// renews the lease, as when each worker that takes it dies) fails after
/// `max_lost` losses, each recorded as a `lost` attempt; its job fails, and
/// a re-run gets its full budget of losses again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_lost_too_often_fails() {
    init_tracing();
    let Some(db) = postgres_url().await else {
        return;
    };
    let url = db.url.as_str();
    let lossy = || {
        dag_from(&ir("lossy", &[("victim", "victim", &[])]))
            .with_handler("victim", |_ctx: TaskContext| async move { Ok(json!("done")) })
    };
    let scheduler = Cascade::builder()
        .database_url(url)
        .role(Role::Scheduler)
        .heartbeat_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .max_lost(1)
        .build()
        .await
        .expect("scheduler");
    let dag = scheduler.register_dag(lossy()).await.expect("register");
    let job = scheduler
        .trigger_job(dag.id, "manual", json!({}))
        .await
        .expect("trigger");

    // A worker that claims the task and then never heartbeats: each claim's
    // lease lapses and the leader's reaper takes the task back.
    let store = Store::open(Some(url)).await.expect("a store for the claimer");
    let stop = Arc::new(AtomicBool::new(false));
    let claimer = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let now = Utc::now();
                let claimed = store
                    .claim_tasks(&ClaimRequest {
                        worker: format!("doomed-{n}"),
                        queues: vec!["default".into()],
                        dag_ids: vec![dag.id],
                        limit: 1,
                        now,
                        lease_until: now + chrono::Duration::milliseconds(200),
                        labels: Vec::new(),
                    })
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let failed = tokio::time::timeout(Duration::from_secs(30), scheduler.wait_for_job(job.id))
        .await
        .expect("job settles within 30 s")
        .expect("wait");
    // Stopped for good before the re-run, so it cannot claim that.
    stop.store(true, Ordering::SeqCst);
    claimer.await.expect("the claimer ran without error");
    assert_eq!(failed.status, JobStatus::Failed, "{failed:?}");
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("lost 2 times (max_lost 1)")),
        "{failed:?}"
    );
    let details = scheduler
        .store()
        .get_job_with_details(job.id)
        .await
        .expect("details");
    let victim = &details.tasks[0];
    assert_eq!(victim.status, TaskStatus::Failed);
    assert_eq!(victim.error.as_deref(), Some("lost 2 times (max_lost 1)"));
    assert_eq!(victim.lost_count, 2);
    let attempts = scheduler
        .store()
        .list_task_attempts(job.id, "victim")
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for attempt in &attempts {
        assert_eq!(attempt.status, TaskStatus::Lost);
        assert!(
            attempt
                .worker
                .as_deref()
                .is_some_and(|w| w.starts_with("doomed-")),
            "{attempt:?}"
        );
        assert!(attempt.started_at.is_some() && attempt.finished_at.is_some());
    }

    // Re-run with a worker that stays alive: the task runs, its losses forgotten.
    let worker = Cascade::builder()
        .database_url(url)
        .role(Role::Worker)
        .heartbeat_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("worker");
    worker
        .register_dag(lossy())
        .await
        .expect("register on the worker");
    scheduler.retry_job(job.id).await.expect("retry_job");
    let done = tokio::time::timeout(Duration::from_secs(30), scheduler.wait_for_job(job.id))
        .await
        .expect("re-run within 30 s")
        .expect("wait");
    assert_eq!(done.status, JobStatus::Success, "{done:?}");
    let rows = scheduler
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("rows");
    assert_eq!((rows[0].status, rows[0].lost_count), (TaskStatus::Success, 0));
    worker.shutdown().await.expect("worker shutdown");
    scheduler.shutdown().await.expect("scheduler shutdown");
}
