//! Tasks run in dependency order, in parallel where independent, and see the
//! job's params and their dependencies' results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_core::{JobStatus, TaskContext, TaskError, TaskStatus};
use cascade_tests::{Log, backend_tests, dag_from, engine, ir, run_job};
use serde_json::json;

backend_tests!(
    params_and_upstream_results,
    diamond_branches_run_in_parallel,
    fifty_jobs_of_twenty_tasks,
    priority_orders_tasks_waiting_for_a_runner
);

/// With one runner, ready tasks start by `priority` (higher first), whether
/// they were queued earlier or just became ready; IR order does not matter.
async fn priority_orders_tasks_waiting_for_a_runner(url: &str) {
    let cascade = engine(url, 1).await;
    let log = Log::default();
    let dag = dag_from(
        r#"{"ir_version":1,"name":"prioritised","tasks":[
            {"id":"low_root","handler":"h","priority":-1},
            {"id":"high_root","handler":"h","priority":5},
            {"id":"mid_root","handler":"h"},
            {"id":"child","handler":"h","priority":3,"depends_on":["high_root"]}]}"#,
    )
    .with_handler("h", {
        let log = log.clone();
        move |ctx: TaskContext| {
            let log = log.clone();
            async move {
                log.push(ctx.task_id());
                Ok(json!(null))
            }
        }
    });
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Success);
    // `child` (3), ready after `high_root`, overtakes the queued `mid_root` (0).
    assert_eq!(log.entries(), ["high_root", "child", "mid_root", "low_root"]);
    cascade.shutdown().await.expect("shutdown");
}

async fn params_and_upstream_results(url: &str) {
    let cascade = engine(url, 4).await;
    let dag = dag_from(&ir(
        "pass_data",
        &[
            ("numbers", "numbers", &[]),
            ("double", "double", &["numbers"]),
            ("total", "total", &["numbers", "double"]),
        ],
    ))
    .with_handler("numbers", |ctx: TaskContext| async move {
        let n = ctx.params()["n"]
            .as_i64()
            .ok_or_else(|| TaskError::fatal("param n missing"))?;
        Ok(json!((1..=n).collect::<Vec<i64>>()))
    })
    .with_handler("double", |ctx: TaskContext| async move {
        let numbers = ctx.upstream("numbers").cloned().unwrap_or_default();
        let doubled: Vec<i64> = numbers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_i64())
            .map(|v| v * 2)
            .collect();
        Ok(json!(doubled))
    })
    .with_handler("total", |ctx: TaskContext| async move {
        let sum = |id: &str| -> i64 {
            ctx.upstream(id)
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.as_i64())
                .sum()
        };
        assert!(ctx.upstream("not_a_dependency").is_none());
        Ok(json!({ "numbers": sum("numbers"), "double": sum("double"), "env": ctx.params()["env"] }))
    });
    let record = cascade.register_dag(dag).await.expect("register");
    let job = cascade
        .trigger_job(record.id, "manual", json!({ "n": 4, "env": "test" }))
        .await
        .expect("trigger");
    let job = cascade.wait_for_job(job.id).await.expect("wait");
    assert_eq!(job.status, JobStatus::Success);
    assert_eq!(job.params, json!({ "n": 4, "env": "test" }));

    let tasks = cascade
        .store()
        .list_task_executions_for_job(job.id)
        .await
        .expect("tasks");
    let total = tasks.iter().find(|t| t.task_id == "total").expect("total row");
    assert_eq!(
        total.result,
        Some(json!({ "numbers": 10, "double": 20, "env": "test" }))
    );
    assert!(
        tasks
            .iter()
            .all(|t| t.status == TaskStatus::Success && t.attempt == 1)
    );
    let details = cascade
        .store()
        .get_job_with_details(job.id)
        .await
        .expect("details");
    assert_eq!(details.tasks.len(), 3);
    assert!(details.job.started_at.is_some() && details.job.completed_at.is_some());
    cascade.shutdown().await.expect("shutdown");
}

async fn diamond_branches_run_in_parallel(url: &str) {
    let cascade = engine(url, 4).await;
    let spans: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Arc::default();
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let spans = Arc::clone(&spans);
        let order = Arc::clone(&order);
        move |ctx: TaskContext| {
            let spans = Arc::clone(&spans);
            let order = Arc::clone(&order);
            async move {
                let start = Instant::now();
                order
                    .lock()
                    .expect("lock")
                    .push(format!("start {}", ctx.task_id()));
                if matches!(ctx.task_id(), "left" | "right") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                order.lock().expect("lock").push(format!("end {}", ctx.task_id()));
                spans
                    .lock()
                    .expect("lock")
                    .insert(ctx.task_id().to_owned(), (start, Instant::now()));
                Ok(json!(null))
            }
        }
    };
    let dag = dag_from(&ir(
        "diamond",
        &[
            ("top", "h", &[]),
            ("left", "h", &["top"]),
            ("right", "h", &["top"]),
            ("bottom", "h", &["left", "right"]),
        ],
    ))
    .with_handler("h", handler);
    let job = run_job(&cascade, dag).await;
    assert_eq!(job.status, JobStatus::Success);

    let spans = spans.lock().expect("lock").clone();
    let (left, right) = (spans["left"], spans["right"]);
    assert!(
        left.0 < right.1 && right.0 < left.1,
        "left and right ran one after the other: {spans:?}"
    );
    assert!(
        spans["top"].1 <= left.0 && spans["top"].1 <= right.0,
        "a branch started before top finished"
    );
    assert!(
        spans["bottom"].0 >= left.1 && spans["bottom"].0 >= right.1,
        "bottom started before both branches ended"
    );
    let order = order.lock().expect("lock").clone();
    assert_eq!(order.first().map(String::as_str), Some("start top"));
    assert_eq!(order.last().map(String::as_str), Some("end bottom"));
    cascade.shutdown().await.expect("shutdown");
}

async fn fifty_jobs_of_twenty_tasks(url: &str) {
    let cascade = engine(url, 8).await;
    let runs: Arc<Mutex<HashMap<(i64, String), u32>>> = Arc::default();
    let handler = {
        let runs = Arc::clone(&runs);
        move |ctx: TaskContext| {
            let runs = Arc::clone(&runs);
            async move {
                // Every dependency has finished before this task starts.
                let deps_seen = ctx.params()["deps"][ctx.task_id()]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|d| d.as_str().is_some_and(|d| ctx.upstream(d).is_some()));
                if !deps_seen {
                    return Err(TaskError::fatal("a dependency's result is missing"));
                }
                *runs
                    .lock()
                    .expect("lock")
                    .entry((ctx.job_id().0, ctx.task_id().to_owned()))
                    .or_default() += 1;
                Ok(json!(ctx.task_id()))
            }
        }
    };
    // t0 is the root; each task depends on one or two earlier ones; t19 joins the last two.
    let mut spec: Vec<(String, Vec<String>)> = vec![("t0".into(), vec![])];
    for i in 1..19 {
        let mut deps = vec![format!("t{}", (i - 1) / 2)];
        if i % 3 == 0 {
            deps.push(format!("t{}", i - 1));
        }
        spec.push((format!("t{i}"), deps));
    }
    spec.push(("t19".into(), vec!["t17".into(), "t18".into()]));
    let tasks: Vec<(&str, &str, Vec<&str>)> = spec
        .iter()
        .map(|(id, deps)| (id.as_str(), "h", deps.iter().map(String::as_str).collect()))
        .collect();
    let tasks: Vec<(&str, &str, &[&str])> = tasks
        .iter()
        .map(|(id, h, deps)| (*id, *h, deps.as_slice()))
        .collect();
    let deps: serde_json::Map<String, serde_json::Value> =
        spec.iter().map(|(id, deps)| (id.clone(), json!(deps))).collect();
    let record = cascade
        .register_dag(dag_from(&ir("twenty", &tasks)).with_handler("h", handler))
        .await
        .expect("register");

    let mut triggers = tokio::task::JoinSet::new();
    for i in 0..50 {
        let cascade = cascade.clone();
        let params = json!({ "i": i, "deps": deps });
        triggers.spawn(async move {
            let job = cascade
                .trigger_job(record.id, "manual", params)
                .await
                .expect("trigger");
            cascade.wait_for_job(job.id).await.expect("wait")
        });
    }
    let mut jobs = Vec::new();
    while let Some(job) = triggers.join_next().await {
        jobs.push(job.expect("join"));
    }
    assert_eq!(jobs.len(), 50);
    for job in &jobs {
        assert_eq!(
            job.status,
            JobStatus::Success,
            "job {} failed: {:?}",
            job.id,
            job.error
        );
        let tasks = cascade
            .store()
            .list_task_executions_for_job(job.id)
            .await
            .expect("tasks");
        assert_eq!(tasks.len(), 20);
        assert!(
            tasks
                .iter()
                .all(|t| t.status == TaskStatus::Success && t.attempt == 1)
        );
    }
    let runs = runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 1000, "every task of every job ran");
    assert!(runs.values().all(|&n| n == 1), "a task ran more than once");
    cascade.shutdown().await.expect("shutdown");
}
