//! What a handler can ask its `TaskContext`: a dependency's result (and
//! whether the task asked is a dependency at all), any ancestor's result, and
//! the params as a typed struct.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cascade_core::{
    Cascade, ContextError, DagId, JobId, JobStatus, Role, TaskContext, TaskError, TaskErrorKind, TaskStatus,
    WorkerRole,
};
use cascade_tests::{backend_tests, dag_from, engine, init_tracing, postgres_url};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

backend_tests!(
    upstream_result_tells_a_missing_result_from_a_wrong_task,
    ancestor_results_reach_past_direct_dependencies,
    params_that_do_not_fit_fail_once_naming_the_field
);

/// How a lookup went, as JSON the test can compare.
fn outcome(result: Result<Option<Value>, TaskError>) -> Value {
    match result {
        Ok(value) => json!({ "ok": value }),
        Err(error) => {
            let variant = match error.source().and_then(|s| s.downcast_ref::<ContextError>()) {
                Some(ContextError::NotADependency { .. }) => "not_a_dependency",
                Some(ContextError::NotAnAncestor { .. }) => "not_an_ancestor",
                Some(ContextError::NoAncestry { .. }) => "no_ancestry",
                Some(_) => "other",
                None => "no source",
            };
            json!({ "error": error.message(), "fatal": error.kind() == TaskErrorKind::Fatal, "variant": variant })
        }
    }
}

async fn run(cascade: &Cascade, dag: cascade_core::Dag, params: Value) -> (JobId, JobStatus) {
    let record = cascade.register_dag(dag).await.expect("register");
    let job = cascade
        .trigger_job(record.id, "manual", params)
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    (job.id, job.status)
}

async fn result_of(cascade: &Cascade, job: JobId, task: &str) -> Value {
    let rows = cascade
        .store()
        .list_task_executions_for_job(job)
        .await
        .expect("tasks");
    let row = rows.iter().find(|r| r.task_id == task).expect("row");
    assert_eq!(row.status, TaskStatus::Success, "{task}: {:?}", row.error);
    row.result.clone().expect("result")
}

async fn upstream_result_tells_a_missing_result_from_a_wrong_task(url: &str) {
    let cascade = engine(url, 4).await;
    let dag = dag_from(
        r#"{"ir_version":1,"name":"upstream_lookup","tasks":[
            {"id":"good","handler":"good"},
            {"id":"bad","handler":"bad"},
            {"id":"join","handler":"join","depends_on":["good","bad"],"trigger_rule":"all_done"}]}"#,
    )
    .with_handler(
        "good",
        |_ctx: TaskContext| async move { Ok(json!({ "rows": 3 })) },
    )
    .with_handler("bad", |_ctx: TaskContext| async move {
        Err(TaskError::fatal("broken"))
    })
    .with_handler("join", |ctx: TaskContext| async move {
        let lookup = |id: &str| outcome(ctx.upstream_result(id).map(|v| v.cloned()));
        Ok(json!({ "good": lookup("good"), "bad": lookup("bad"), "typo": lookup("godo") }))
    });
    let (job, status) = run(&cascade, dag, json!({})).await;
    assert_eq!(status, JobStatus::Failed, "`bad` fails the job");
    let seen = result_of(&cascade, job, "join").await;
    assert_eq!(seen["good"], json!({ "ok": { "rows": 3 } }));
    assert_eq!(
        seen["bad"],
        json!({ "ok": null }),
        "a dependency without a result"
    );
    assert_eq!(
        seen["typo"],
        json!({
            "error": "task `join` asked for the result of `godo`, which is not one of its dependencies (they are: `good`, `bad`)",
            "fatal": true,
            "variant": "not_a_dependency",
        })
    );
    cascade.shutdown().await.expect("shutdown");
}

/// extract → transform → load, a shell task `announce` after transform, and
/// `side` beside them.
fn lineage_dag() -> cascade_core::Dag {
    dag_from(
        r#"{"ir_version":1,"name":"ancestors","tasks":[
            {"id":"extract","handler":"extract"},
            {"id":"side","handler":"side"},
            {"id":"transform","handler":"transform","depends_on":["extract"]},
            {"id":"load","handler":"load","depends_on":["transform"]},
            {"id":"announce","type":"shell","depends_on":["transform"],"env":{"SUM":"${upstream.transform.sum}"},
             "command":"echo \"sum $SUM of $CASCADE_UPSTREAM\""}]}"#,
    )
    .with_handler("extract", |_ctx: TaskContext| async move {
        Ok(json!({ "rows": [1, 2, 3] }))
    })
    .with_handler("side", |_ctx: TaskContext| async move { Ok(json!("side")) })
    .with_handler("transform", |_ctx: TaskContext| async move { Ok(json!({ "sum": 6 })) })
    .with_handler("load", |ctx: TaskContext| async move {
        let mut seen = serde_json::Map::new();
        for id in ["extract", "transform", "side", "load", "nope"] {
            seen.insert(id.to_owned(), outcome(ctx.ancestor_result(id).await));
        }
        Ok(Value::Object(seen))
    })
}

async fn assert_lineage_job(cascade: &Cascade, job: JobId) {
    assert_ancestor_lookups(&result_of(cascade, job, "load").await);
    let announce = result_of(cascade, job, "announce").await;
    assert_eq!(
        announce["stdout"],
        r#"sum 6 of {"transform":{"sum":6}}"#.to_owned() + "\n"
    );
    let attempts = cascade
        .store()
        .list_task_attempts(job, "announce")
        .await
        .expect("attempts");
    assert!(
        attempts[0].output.as_deref().is_some_and(|o| o.contains("sum 6")),
        "a shell task's output is kept with its attempt: {attempts:?}"
    );
}

fn assert_ancestor_lookups(seen: &Value) {
    assert_eq!(seen["extract"], json!({ "ok": { "rows": [1, 2, 3] } }));
    assert_eq!(seen["transform"], json!({ "ok": { "sum": 6 } }));
    for id in ["side", "load", "nope"] {
        assert_eq!(
            seen[id],
            json!({
                "error": format!("task `load` asked for the result of `{id}`, which is not one of its ancestors (they are: `extract`, `transform`)"),
                "fatal": true,
                "variant": "not_an_ancestor",
            }),
            "{id}"
        );
    }
}

async fn ancestor_results_reach_past_direct_dependencies(url: &str) {
    let cascade = engine(url, 4).await;
    let (job, status) = run(&cascade, lineage_dag(), json!({})).await;
    assert_eq!(status, JobStatus::Success);
    assert_lineage_job(&cascade, job).await;
    cascade.shutdown().await.expect("shutdown");
}

/// The same lookups from a task run by a worker process role: the worker
/// reads ancestors' results from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ancestor_results_on_a_worker() {
    init_tracing();
    let Some(db) = postgres_url().await else { return };
    let scheduler = Cascade::builder()
        .database_url(&db.url)
        .role(Role::Scheduler)
        .build()
        .await
        .expect("scheduler");
    let worker = Cascade::builder()
        .database_url(&db.url)
        .role(Role::Worker)
        .capacity(4)
        .build()
        .await
        .expect("worker");
    worker
        .register_dag(lineage_dag())
        .await
        .expect("register on the worker");
    let record = scheduler.register_dag(lineage_dag()).await.expect("register");
    let job = scheduler
        .trigger_job(record.id, "manual", json!({}))
        .await
        .expect("trigger");
    let job = tokio::time::timeout(Duration::from_secs(60), scheduler.wait_for_job(job.id))
        .await
        .expect("the job did not finish")
        .expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    assert_lineage_job(&scheduler, job.id).await;
    let worker_ids: Vec<String> = scheduler
        .store()
        .list_workers()
        .await
        .expect("workers")
        .into_iter()
        .filter(|w| w.role == WorkerRole::Worker)
        .map(|w| w.id)
        .collect();
    let ran_on: Vec<Option<String>> = scheduler
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks")
        .into_iter()
        .map(|t| t.worker)
        .collect();
    assert!(
        ran_on
            .iter()
            .all(|w| w.as_ref().is_some_and(|w| worker_ids.contains(w))),
        "the worker ran every task: {ran_on:?}, workers {worker_ids:?}"
    );
    worker.shutdown().await.expect("shutdown");
    scheduler.shutdown().await.expect("shutdown");
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct AggParams {
    agg_delay_secs: u64,
    region: String,
}

async fn params_that_do_not_fit_fail_once_naming_the_field(url: &str) {
    let cascade = engine(url, 2).await;
    let dag = dag_from(
        r#"{"ir_version":1,"name":"typed_params","tasks":[
            {"id":"aggregate","handler":"aggregate","retries":3,"retry_delay":0}]}"#,
    )
    .with_handler("aggregate", |ctx: TaskContext| async move {
        let params: AggParams = ctx.params_as()?;
        Ok(json!({ "delay": params.agg_delay_secs, "region": params.region }))
    });
    let (job, status) = run(
        &cascade,
        dag.clone(),
        json!({ "agg_delay_secs": 3, "region": "eu" }),
    )
    .await;
    assert_eq!(status, JobStatus::Success);
    assert_eq!(
        result_of(&cascade, job, "aggregate").await,
        json!({ "delay": 3, "region": "eu" })
    );

    let (job, status) = run(&cascade, dag, json!({ "agg_delay_secs": "3", "region": "eu" })).await;
    assert_eq!(status, JobStatus::Failed);
    let attempts = cascade
        .store()
        .list_task_attempts(job, "aggregate")
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1, "bad params are not retried: {attempts:?}");
    assert_eq!(
        attempts[0].error.as_deref(),
        Some(r#"params.agg_delay_secs: invalid type: string "3", expected u64"#)
    );
    cascade.shutdown().await.expect("shutdown");
}

fn context(params: Value, upstream: &[(&str, Value)]) -> TaskContext {
    let upstream: HashMap<Arc<str>, Arc<Value>> = upstream
        .iter()
        .map(|(id, v)| (Arc::from(*id), Arc::new(v.clone())))
        .collect();
    TaskContext::new(
        JobId(1),
        DagId(1),
        Arc::from("dag"),
        Arc::from("task"),
        1,
        Arc::new(params),
        upstream,
        CancellationToken::new(),
    )
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Nested {
    limits: Vec<Limit>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Limit {
    max: u32,
}

/// A context built by hand, as in a handler's unit test.
#[tokio::test]
async fn a_hand_built_context_knows_what_it_was_given() {
    let ctx = context(
        json!({ "limits": [{ "max": 1 }, { "max": -1 }] }),
        &[("extract", json!(1))],
    );
    let error = ctx.params_as::<Nested>().expect_err("a negative u32");
    assert_eq!(
        error.message(),
        "params.limits[1].max: invalid value: integer `-1`, expected u32"
    );
    assert!(matches!(
        error.source().and_then(|s| s.downcast_ref::<ContextError>()),
        Some(ContextError::InvalidParams { path, .. }) if path == "params.limits[1].max"
    ));
    assert_eq!(
        context(json!({}), &[])
            .params_as::<Nested>()
            .expect_err("missing")
            .message(),
        "params: missing field `limits`"
    );

    assert_eq!(
        ctx.upstream_result("extract").expect("a dependency"),
        Some(&json!(1))
    );
    assert_eq!(outcome(ctx.ancestor_result("extract").await), json!({ "ok": 1 }));
    assert_eq!(
        outcome(ctx.ancestor_result("other").await)["variant"],
        "no_ancestry"
    );
    assert_eq!(
        outcome(ctx.upstream_result("other").map(|v| v.cloned()))["error"],
        "task `task` asked for the result of `other`, which is not one of its dependencies (they are: `extract`)"
    );
}
