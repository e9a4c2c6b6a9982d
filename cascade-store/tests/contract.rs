//! The store's contract, run against both backends, each case on a fresh database.

use std::time::Instant;

use cascade_store::testing::{self, TestDb};
use cascade_store::{
    Backend, ErrorKind, JobFilter, JobStatus, JobTransition, NewDag, NewJob, NewTask, Store, StoreError,
    TaskAttempt, TaskChanges, TaskStatus, TaskTransition, TransitionBatch,
};
use chrono::{SubsecRound, Utc};
use serde_json::json;

fn new_dag(name: &str, hash: &str) -> NewDag {
    NewDag {
        name: name.to_owned(),
        description: format!("{name} ({hash})"),
        schedule: None,
        definition: format!(r#"{{"ir_version":1,"name":"{name}","hash":"{hash}"}}"#),
        hash: hash.to_owned(),
    }
}

fn task(task_id: &str, status: TaskStatus) -> NewTask {
    NewTask {
        task_id: task_id.to_owned(),
        queue: "default".to_owned(),
        status,
        attempt: 0,
        fencing_token: 0,
        started_at: None,
    }
}

fn new_job(dag_id: cascade_store::DagId, tasks: Vec<NewTask>) -> NewJob {
    NewJob {
        dag_id,
        dag_version: 1,
        status: JobStatus::Pending,
        trigger: "manual".to_owned(),
        params: json!({ "environment": "dev" }),
        idempotency_key: None,
        tasks,
    }
}

fn cas(
    job: cascade_store::JobId,
    task_id: &str,
    from: TaskStatus,
    token: i64,
    to: TaskStatus,
) -> TaskTransition {
    TaskTransition {
        job_id: job,
        task_id: task_id.to_owned(),
        from,
        fencing_token: token,
        to,
        changes: TaskChanges::default(),
    }
}

/// Store-level cases: `async fn(&Store)`.
mod cases {
    use super::*;

    pub(super) async fn dag_upsert_versions(store: &Store) {
        let v1 = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        assert_eq!(v1.version, 1);
        assert!(!v1.paused);

        let same = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        assert_eq!(same, v1, "same hash keeps the record unchanged");

        let mut changed = new_dag("etl", "h2");
        changed.schedule = Some("0 * * * *".to_owned());
        let v2 = store.upsert_dag(changed).await.unwrap();
        assert_eq!((v2.id, v2.version, v2.hash.as_str()), (v1.id, 2, "h2"));
        assert_eq!(v2.schedule.as_deref(), Some("0 * * * *"));
        assert_eq!(v2.description, "etl (h2)");

        let old = store.get_dag_version(v1.id, 1).await.unwrap();
        assert_eq!(old.definition, new_dag("etl", "h1").definition);
        assert_eq!(old.hash, "h1");
        let new = store.get_dag_version(v1.id, 2).await.unwrap();
        assert_eq!(new.definition, new_dag("etl", "h2").definition);

        assert_eq!(store.get_dag(v1.id).await.unwrap(), v2);
        assert_eq!(store.get_dag_by_name("etl").await.unwrap(), Some(v2.clone()));
        assert_eq!(store.get_dag_by_name("nope").await.unwrap(), None);
        store.upsert_dag(new_dag("another", "x")).await.unwrap();
        let names: Vec<String> = store
            .list_dags()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["another", "etl"]);

        let paused = store.set_dag_paused(v1.id, true).await.unwrap();
        assert!(paused.paused);
        assert!(store.get_dag(v1.id).await.unwrap().paused);

        let missing = cascade_store::DagId(999_999);
        let err = store.get_dag(missing).await.unwrap_err();
        assert!(matches!(err, StoreError::DagNotFound { dag_id } if dag_id == missing));
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(matches!(
            store.get_dag_version(v1.id, 7).await.unwrap_err(),
            StoreError::DagVersionNotFound { version: 7, .. }
        ));
        assert_eq!(
            store.set_dag_paused(missing, true).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }

    pub(super) async fn job_create_and_read(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let created = store
            .create_job(new_job(
                dag.id,
                vec![
                    task("extract", TaskStatus::Queued),
                    task("load", TaskStatus::Pending),
                ],
            ))
            .await
            .unwrap();
        assert!(created.created);
        let job = created.job;
        assert_eq!(
            (job.status, job.dag_id, job.trigger.as_str()),
            (JobStatus::Pending, dag.id, "manual")
        );
        assert_eq!(job.params, json!({ "environment": "dev" }));
        assert_eq!(store.get_job(job.id).await.unwrap(), job);

        let details = store.get_job_with_details(job.id).await.unwrap();
        assert_eq!(details.job, job);
        assert_eq!(details.dag.id, dag.id);
        let ids: Vec<&str> = details.tasks.iter().map(|t| t.task_id.as_str()).collect();
        assert_eq!(ids, ["extract", "load"]);
        assert_eq!(details.tasks[0].status, TaskStatus::Queued);
        assert_eq!(details.tasks[1].queue, "default");
        assert_eq!(
            store.list_task_executions_for_job(job.id).await.unwrap(),
            details.tasks
        );

        let missing = cascade_store::JobId(424_242);
        assert!(matches!(
            store.get_job(missing).await.unwrap_err(),
            StoreError::JobNotFound { .. }
        ));
        assert_eq!(
            store.get_job_with_details(missing).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let err = store
            .create_job(new_job(cascade_store::DagId(9999), vec![]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::DagNotFound { .. }), "{err:?}");
    }

    pub(super) async fn create_job_many_tasks(store: &Store) {
        let dag = store.upsert_dag(new_dag("wide", "h")).await.unwrap();
        let tasks: Vec<NewTask> = (0..10_000)
            .map(|i| task(&format!("t{i}"), TaskStatus::Pending))
            .collect();
        let started = Instant::now();
        let job = store.create_job(new_job(dag.id, tasks)).await.unwrap().job;
        eprintln!(
            "{:?}: create_job with 10,000 tasks took {:?}",
            store.backend(),
            started.elapsed()
        );
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert_eq!(rows.len(), 10_000);
        assert_eq!(rows[9_999].task_id, "t9999");
    }

    pub(super) async fn create_job_is_atomic(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let mut tasks: Vec<NewTask> = (0..1500)
            .map(|i| task(&format!("t{i}"), TaskStatus::Pending))
            .collect();
        tasks.push(task("t3", TaskStatus::Pending)); // duplicate, in the second insert chunk
        let err = store.create_job(new_job(dag.id, tasks)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
        assert!(
            store.list_jobs(JobFilter::default()).await.unwrap().is_empty(),
            "no job row left"
        );
        assert!(
            store
                .list_task_executions_for_job(cascade_store::JobId(1))
                .await
                .unwrap()
                .is_empty()
        );
        // The store is still usable afterwards.
        store
            .create_job(new_job(dag.id, vec![task("a", TaskStatus::Pending)]))
            .await
            .unwrap();
    }

    pub(super) async fn idempotent_trigger(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let mut keyed = new_job(dag.id, vec![task("a", TaskStatus::Pending)]);
        keyed.idempotency_key = Some("run-1".to_owned());
        let first = store.create_job(keyed.clone()).await.unwrap();
        assert!(first.created);
        let second = store.create_job(keyed.clone()).await.unwrap();
        assert!(!second.created);
        assert_eq!(second.job, first.job);
        assert_eq!(
            store
                .list_task_executions_for_job(first.job.id)
                .await
                .unwrap()
                .len(),
            1
        );

        // Jobs without a key never collide.
        let a = store.create_job(new_job(dag.id, vec![])).await.unwrap();
        let b = store.create_job(new_job(dag.id, vec![])).await.unwrap();
        assert!(a.created && b.created && a.job.id != b.job.id);

        // Concurrent triggers with one key get one job.
        keyed.idempotency_key = Some("run-2".to_owned());
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (store, keyed) = (store.clone(), keyed.clone());
            handles.push(tokio::spawn(async move { store.create_job(keyed).await }));
        }
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.unwrap().unwrap());
        }
        assert_eq!(results.iter().filter(|r| r.created).count(), 1);
        assert!(results.iter().all(|r| r.job.id == results[0].job.id));
        let filter = JobFilter {
            dag_id: Some(dag.id),
            ..JobFilter::default()
        };
        assert_eq!(store.list_jobs(filter).await.unwrap().len(), 4);
    }

    pub(super) async fn concurrent_cas_one_winner(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("t", TaskStatus::Queued)]))
            .await
            .unwrap()
            .job;
        let mut handles = Vec::new();
        for writer in 0..16_i64 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut transition = cas(job.id, "t", TaskStatus::Queued, 0, TaskStatus::Running);
                transition.changes.fencing_token = Some(writer + 1);
                transition.changes.worker = Some(format!("worker-{writer}"));
                store.transition_task(transition).await
            }));
        }
        let mut winners = Vec::new();
        for (writer, handle) in handles.into_iter().enumerate() {
            if handle.await.unwrap().unwrap() {
                winners.push(writer as i64);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
        let row = &store.list_task_executions_for_job(job.id).await.unwrap()[0];
        assert_eq!(row.status, TaskStatus::Running);
        assert_eq!(row.fencing_token, winners[0] + 1);
        assert_eq!(row.worker, Some(format!("worker-{}", winners[0])));
    }

    pub(super) async fn stale_fencing_token_rejected(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("t", TaskStatus::Queued)]))
            .await
            .unwrap()
            .job;
        // Both databases keep microseconds.
        let now = Utc::now().trunc_subsecs(6);
        let mut start = cas(job.id, "t", TaskStatus::Queued, 0, TaskStatus::Running);
        start.changes = TaskChanges {
            attempt: Some(1),
            fencing_token: Some(1),
            started_at: Some(now),
            ..TaskChanges::default()
        };
        assert!(store.transition_task(start).await.unwrap());

        // Attempt 1 timed out; attempt 2 took over with token 2.
        let mut retry = cas(job.id, "t", TaskStatus::Running, 1, TaskStatus::Running);
        retry.changes = TaskChanges {
            attempt: Some(2),
            fencing_token: Some(2),
            ..TaskChanges::default()
        };
        assert!(store.transition_task(retry).await.unwrap());

        // The late finish of attempt 1 is rejected and records nothing.
        let attempt = |n: i32, status| TaskAttempt {
            job_id: job.id,
            task_id: "t".to_owned(),
            attempt: n,
            status,
            worker: None,
            error: None,
            output: None,
            started_at: Some(now),
            finished_at: Some(now),
        };
        let mut late = cas(job.id, "t", TaskStatus::Running, 1, TaskStatus::Success);
        late.changes.result = Some(json!("stale"));
        late.changes.record_attempt = Some(attempt(1, TaskStatus::Success));
        assert!(!store.transition_task(late).await.unwrap());
        let row = &store.list_task_executions_for_job(job.id).await.unwrap()[0];
        assert_eq!(
            (row.status, row.attempt, row.fencing_token, row.result.clone()),
            (TaskStatus::Running, 2, 2, None)
        );
        assert!(store.list_task_attempts(job.id, "t").await.unwrap().is_empty());

        // The current attempt completes.
        let mut done = cas(job.id, "t", TaskStatus::Running, 2, TaskStatus::Success);
        done.changes.result = Some(json!({ "rows": 3 }));
        done.changes.completed_at = Some(now);
        done.changes.record_attempt = Some(attempt(2, TaskStatus::Success));
        assert!(store.transition_task(done).await.unwrap());
        let row = &store.list_task_executions_for_job(job.id).await.unwrap()[0];
        assert_eq!(row.status, TaskStatus::Success);
        assert_eq!(row.result, Some(json!({ "rows": 3 })));
        assert!(row.completed_at.is_some());
        let attempts = store.list_task_attempts(job.id, "t").await.unwrap();
        assert_eq!(attempts, vec![attempt(2, TaskStatus::Success)]);
    }

    pub(super) async fn clear_outcome_on_rerun(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("t", TaskStatus::Running)]))
            .await
            .unwrap()
            .job;
        let now = Utc::now();
        let mut fail = cas(job.id, "t", TaskStatus::Running, 0, TaskStatus::UpForRetry);
        fail.changes.error = Some("boom".to_owned());
        fail.changes.next_attempt_at = Some(now);
        assert!(store.transition_task(fail).await.unwrap());
        let row = &store.list_task_executions_for_job(job.id).await.unwrap()[0];
        assert_eq!(row.error.as_deref(), Some("boom"));

        let mut requeue = cas(job.id, "t", TaskStatus::UpForRetry, 0, TaskStatus::Queued);
        requeue.changes.clear_outcome = true;
        requeue.changes.fencing_token = Some(1);
        assert!(store.transition_task(requeue).await.unwrap());
        let row = &store.list_task_executions_for_job(job.id).await.unwrap()[0];
        assert_eq!(
            (
                row.status,
                row.error.clone(),
                row.next_attempt_at,
                row.fencing_token
            ),
            (TaskStatus::Queued, None, None, 1)
        );
        assert!(row.updated_at >= row.created_at);
    }

    pub(super) async fn job_transitions(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let job = store.create_job(new_job(dag.id, vec![])).await.unwrap().job;
        assert_eq!(job.started_at, None);
        let at = Utc::now();
        let to = |from, to, error: Option<&str>| JobTransition {
            job_id: job.id,
            from,
            to,
            error: error.map(str::to_owned),
            at,
        };
        assert!(
            store
                .transition_job(to(JobStatus::Pending, JobStatus::Running, None))
                .await
                .unwrap()
        );
        assert!(
            !store
                .transition_job(to(JobStatus::Pending, JobStatus::Running, None))
                .await
                .unwrap(),
            "stale from"
        );
        let running = store.get_job(job.id).await.unwrap();
        assert_eq!(running.status, JobStatus::Running);
        assert!(running.started_at.is_some() && running.completed_at.is_none());
        assert!(
            store
                .transition_job(to(JobStatus::Running, JobStatus::Failed, Some("task t failed")))
                .await
                .unwrap()
        );
        let failed = store.get_job(job.id).await.unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some("task t failed"));
        assert_eq!(failed.started_at, running.started_at);
        assert!(failed.completed_at.is_some());
        assert!(
            !store
                .transition_job(JobTransition {
                    job_id: cascade_store::JobId(777),
                    ..to(JobStatus::Pending, JobStatus::Running, None)
                })
                .await
                .unwrap()
        );
    }

    pub(super) async fn list_jobs_filters_and_pagination(store: &Store) {
        let a = store.upsert_dag(new_dag("a", "h")).await.unwrap();
        let b = store.upsert_dag(new_dag("b", "h")).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..6 {
            let dag = if i % 2 == 0 { a.id } else { b.id };
            ids.push(store.create_job(new_job(dag, vec![])).await.unwrap().job.id);
        }
        let at = Utc::now();
        store
            .transition_job(JobTransition {
                job_id: ids[4],
                from: JobStatus::Pending,
                to: JobStatus::Running,
                error: None,
                at,
            })
            .await
            .unwrap();

        let all = store.list_jobs(JobFilter::default()).await.unwrap();
        let listed: Vec<_> = all.iter().map(|j| j.id).collect();
        let mut newest_first = ids.clone();
        newest_first.reverse();
        assert_eq!(listed, newest_first);

        let of_a = store
            .list_jobs(JobFilter {
                dag_id: Some(a.id),
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            of_a.iter().map(|j| j.id).collect::<Vec<_>>(),
            [ids[4], ids[2], ids[0]]
        );
        let running = store
            .list_jobs(JobFilter {
                status: Some(JobStatus::Running),
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(running.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[4]]);
        let pending_b = JobFilter {
            dag_id: Some(b.id),
            status: Some(JobStatus::Pending),
            ..JobFilter::default()
        };
        assert_eq!(store.list_jobs(pending_b).await.unwrap().len(), 3);
        let page = store
            .list_jobs(JobFilter {
                limit: 2,
                offset: 2,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[3], ids[2]]);
        let past_end = store
            .list_jobs(JobFilter {
                offset: 10,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        assert!(past_end.is_empty());
    }

    pub(super) async fn commit_transitions_batch(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let n = 300;
        let tasks: Vec<NewTask> = (0..n)
            .map(|i| task(&format!("t{i}"), TaskStatus::Pending))
            .collect();
        let job = store.create_job(new_job(dag.id, tasks)).await.unwrap().job;
        let now = Utc::now();

        let mut batch = TransitionBatch::default();
        for i in 0..n {
            batch.tasks.push(cas(
                job.id,
                &format!("t{i}"),
                TaskStatus::Pending,
                0,
                TaskStatus::Queued,
            ));
        }
        // A stale one (wrong token) and one for an unknown task lose.
        batch
            .tasks
            .push(cas(job.id, "t0", TaskStatus::Queued, 9, TaskStatus::Running));
        batch
            .tasks
            .push(cas(job.id, "missing", TaskStatus::Pending, 0, TaskStatus::Queued));
        // A second transition of t1 sees the first one (same batch, in order).
        let mut start = cas(job.id, "t1", TaskStatus::Queued, 0, TaskStatus::Running);
        start.changes = TaskChanges {
            attempt: Some(1),
            fencing_token: Some(1),
            worker: Some("w".into()),
            started_at: Some(now),
            ..TaskChanges::default()
        };
        batch.tasks.push(start);
        let mut finish = cas(job.id, "t1", TaskStatus::Running, 1, TaskStatus::Success);
        finish.changes.result = Some(json!(42));
        finish.changes.completed_at = Some(now);
        finish.changes.record_attempt = Some(TaskAttempt {
            job_id: job.id,
            task_id: "t1".into(),
            attempt: 1,
            status: TaskStatus::Success,
            worker: Some("w".into()),
            error: None,
            output: Some("42".into()),
            started_at: Some(now),
            finished_at: Some(now),
        });
        batch.tasks.push(finish);
        let job_transition = |from, to| JobTransition {
            job_id: job.id,
            from,
            to,
            error: None,
            at: now,
        };
        batch
            .jobs
            .push(job_transition(JobStatus::Pending, JobStatus::Running));
        batch
            .jobs
            .push(job_transition(JobStatus::Pending, JobStatus::Cancelled)); // loses: already running

        let started = Instant::now();
        let outcome = store.commit_transitions(&batch).await.unwrap();
        eprintln!(
            "{:?}: commit_transitions of {} took {:?}",
            store.backend(),
            batch.tasks.len() + batch.jobs.len(),
            started.elapsed()
        );
        assert_eq!(outcome.tasks.len(), batch.tasks.len());
        assert!(outcome.tasks[..n].iter().all(|won| *won));
        assert_eq!(&outcome.tasks[n..], &[false, false, true, true]);
        assert_eq!(outcome.jobs, vec![true, false]);

        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert!(
            rows.iter()
                .filter(|r| r.task_id != "t1")
                .all(|r| r.status == TaskStatus::Queued)
        );
        let t1 = rows.iter().find(|r| r.task_id == "t1").unwrap();
        assert_eq!(
            (t1.status, t1.attempt, t1.fencing_token, t1.result.clone()),
            (TaskStatus::Success, 1, 1, Some(json!(42)))
        );
        assert_eq!(store.list_task_attempts(job.id, "t1").await.unwrap().len(), 1);
        assert_eq!(store.get_job(job.id).await.unwrap().status, JobStatus::Running);
        assert_eq!(
            store
                .commit_transitions(&TransitionBatch::default())
                .await
                .unwrap(),
            Default::default()
        );
    }
}

/// Database-level cases: `async fn(&TestDb)`.
mod db_cases {
    use super::*;

    pub(super) async fn migrate_from_empty(db: &TestDb) {
        let store = Store::open(Some(&db.url)).await.unwrap();
        assert!(store.list_dags().await.unwrap().is_empty());
        drop(store);
        // Opening again finds nothing to do.
        let store = Store::open(Some(&db.url)).await.unwrap();
        store.upsert_dag(new_dag("etl", "h")).await.unwrap();
    }

    pub(super) async fn migrate_from_previous(db: &TestDb) {
        testing::run_first_migrations(&db.url, 1).await;
        testing::execute_sql(
            &db.url,
            "INSERT INTO dags (name, description, version, hash, paused, created_at, updated_at) \
             VALUES ('old', 'from v1', 1, 'h', false, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
        )
        .await;
        let store = Store::open(Some(&db.url)).await.unwrap();
        let old = store
            .get_dag_by_name("old")
            .await
            .unwrap()
            .expect("row survives the migration");
        assert_eq!(old.description, "from v1");
        // The second migration's table exists.
        assert!(
            store
                .list_task_attempts(cascade_store::JobId(1), "t")
                .await
                .unwrap()
                .is_empty()
        );
        let job = store
            .create_job(new_job(old.id, vec![task("t", TaskStatus::Pending)]))
            .await
            .unwrap();
        assert!(job.created);
    }

    pub(super) async fn schema_newer_than_code(db: &TestDb) {
        drop(Store::open(Some(&db.url)).await.unwrap());
        testing::execute_sql(
            &db.url,
            "INSERT INTO __diesel_schema_migrations (version) VALUES ('99990101000000')",
        )
        .await;
        let err = Store::open(Some(&db.url)).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::SchemaTooNew { applied, .. } if applied == "99990101000000"),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Other);
    }
}

macro_rules! contract {
    (store: [$($case:ident),* $(,)?], db: [$($db_case:ident),* $(,)?]) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = testing::sqlite_url();
                    let store = Store::open(Some(&db.url)).await.unwrap();
                    assert_eq!(store.backend(), Backend::Sqlite);
                    cases::$case(&store).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $db_case() {
                    db_cases::$db_case(&testing::sqlite_url()).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(db) = testing::postgres_url().await else { return };
                    let store = Store::open(Some(&db.url)).await.unwrap();
                    assert_eq!(store.backend(), Backend::Postgres);
                    cases::$case(&store).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $db_case() {
                    let Some(db) = testing::postgres_url().await else { return };
                    db_cases::$db_case(&db).await;
                }
            )*
        }
    };
}

contract!(
    store: [
        dag_upsert_versions,
        job_create_and_read,
        create_job_many_tasks,
        create_job_is_atomic,
        idempotent_trigger,
        concurrent_cas_one_winner,
        stale_fencing_token_rejected,
        clear_outcome_on_rerun,
        job_transitions,
        list_jobs_filters_and_pagination,
        commit_transitions_batch,
    ],
    db: [migrate_from_empty, migrate_from_previous, schema_newer_than_code]
);
