//! The store's contract, run against both backends, each case on a fresh database.

use std::time::Instant;

use cascade_store::testing::{self, TestDb};
use cascade_store::{
    Backend, ClaimRequest, DagId, ErrorKind, JobFilter, JobStatus, JobTransition, NewDag, NewJob, NewTask,
    Notification, Store, StoreError, TaskAttempt, TaskChanges, TaskStatus, TaskTransition, TransitionBatch,
    WorkerInfo, WorkerRole, WorkerState,
};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use futures_util::StreamExt;
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
        priority: 0,
        labels: Vec::new(),
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
        owner: None,
        lease_expires_at: None,
        tasks,
    }
}

/// Lease times (and worker heartbeats) are stamped on the database's clock:
/// on PostgreSQL the stored time is the asked-for distance from the server's
/// present, off by the time since the test read its own clock and by how
/// far the two clocks read apart (one host here: milliseconds); SQLite, on
/// the host's one clock, stores it as given.
fn assert_db_time(
    store: &Store,
    actual: Option<chrono::DateTime<chrono::Utc>>,
    asked: chrono::DateTime<chrono::Utc>,
) {
    let actual = actual.expect("a time is stored");
    let asked = asked.trunc_subsecs(6);
    if store.backend() == Backend::Sqlite {
        assert_eq!(actual, asked);
    } else {
        let late = actual - asked;
        assert!(
            late > -Duration::seconds(1) && late < Duration::seconds(10),
            "stored {actual}, asked {asked}: not the asked-for distance from the database's present"
        );
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
        let attempt = |n: u32, status| TaskAttempt {
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
            owner: None,
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
                owner: None,
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
            owner: None,
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

    pub(super) async fn job_ownership(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let other_dag = store.upsert_dag(new_dag("other", "h1")).await.unwrap();
        let now = Utc::now();
        let later = now + Duration::seconds(30);
        let job = store.create_job(new_job(dag.id, vec![])).await.unwrap().job;
        assert_eq!((job.owner.clone(), job.lease_expires_at), (None, None));

        // Concurrent claimers: exactly one wins.
        let mut handles = Vec::new();
        for engine in 0..8 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                store
                    .claim_job(job.id, &format!("engine-{engine}"), later, now)
                    .await
            }));
        }
        let mut winners = Vec::new();
        for (engine, handle) in handles.into_iter().enumerate() {
            if handle.await.unwrap().unwrap() {
                winners.push(format!("engine-{engine}"));
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let owner = winners[0].clone();
        let claimed = store.get_job(job.id).await.unwrap();
        assert_eq!(claimed.owner.as_deref(), Some(owner.as_str()));
        assert_db_time(store, claimed.lease_expires_at, later);

        // The owner may claim again; another engine only after the lease lapsed.
        assert!(store.claim_job(job.id, &owner, later, now).await.unwrap());
        assert!(!store.claim_job(job.id, "intruder", later, now).await.unwrap());
        let before_end = later - Duration::seconds(1);
        assert!(
            !store
                .claim_job(job.id, "intruder", later, before_end)
                .await
                .unwrap(),
            "lease not yet expired"
        );
        let after = later + Duration::seconds(1);
        assert!(
            store
                .claim_job(job.id, "successor", after + Duration::seconds(30), after)
                .await
                .unwrap()
        );
        assert_eq!(
            store.get_job(job.id).await.unwrap().owner.as_deref(),
            Some("successor")
        );

        // Claimable: unowned or expired, of the given DAGs, unfinished, oldest first.
        let mut owned = new_job(dag.id, vec![]);
        owned.owner = Some("engine-x".to_owned());
        owned.lease_expires_at = Some(later);
        let owned = store.create_job(owned).await.unwrap().job;
        assert_eq!(owned.owner.as_deref(), Some("engine-x"));
        assert_db_time(store, owned.lease_expires_at, later);
        let free = store.create_job(new_job(dag.id, vec![])).await.unwrap().job;
        let finished = store.create_job(new_job(dag.id, vec![])).await.unwrap().job;
        let elsewhere = store.create_job(new_job(other_dag.id, vec![])).await.unwrap().job;
        assert!(
            store
                .transition_job(JobTransition {
                    job_id: finished.id,
                    from: JobStatus::Pending,
                    to: JobStatus::Cancelled,
                    error: None,
                    at: now,
                    owner: None,
                })
                .await
                .unwrap()
        );
        assert!(
            !store
                .claim_job(finished.id, "engine-x", later, now)
                .await
                .unwrap(),
            "a finished job cannot be claimed"
        );
        let ids = |jobs: Vec<cascade_store::Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.list_claimable_jobs(&[dag.id], now, 10).await.unwrap()),
            [free.id]
        );
        assert_eq!(
            ids(store
                .list_claimable_jobs(&[dag.id, other_dag.id], after, 10)
                .await
                .unwrap()),
            [owned.id, free.id, elsewhere.id]
        );
        assert_eq!(
            ids(store
                .list_claimable_jobs(&[dag.id, other_dag.id], after, 1)
                .await
                .unwrap()),
            [owned.id]
        );
        assert!(store.list_claimable_jobs(&[], now, 10).await.unwrap().is_empty());

        // Renewal extends only the owner's unfinished jobs.
        assert!(store.claim_job(free.id, "engine-x", later, now).await.unwrap());
        let much_later = later + Duration::minutes(10);
        assert_eq!(store.renew_job_leases("engine-x", much_later).await.unwrap(), 2);
        assert_db_time(
            store,
            store.get_job(free.id).await.unwrap().lease_expires_at,
            much_later,
        );
        assert_eq!(store.renew_job_leases("nobody", much_later).await.unwrap(), 0);
        assert!(
            store
                .list_claimable_jobs(&[dag.id], after, 10)
                .await
                .unwrap()
                .iter()
                .all(|j| j.owner.as_deref() != Some("engine-x"))
        );

        // Release on shutdown: the jobs are claimable at once.
        assert_eq!(store.release_jobs("engine-x").await.unwrap(), 2);
        let released = store.get_job(owned.id).await.unwrap();
        assert_eq!((released.owner, released.lease_expires_at), (None, None));
        assert_eq!(
            ids(store.list_claimable_jobs(&[dag.id], now, 10).await.unwrap()),
            [owned.id, free.id]
        );
        assert_eq!(store.release_jobs("engine-x").await.unwrap(), 0);

        let err = store
            .claim_job(cascade_store::JobId(987_654), "engine-x", later, now)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::JobNotFound { .. }), "{err:?}");
    }

    pub(super) async fn dag_schedule_compare_and_set(store: &Store) {
        let dag = store.upsert_dag(new_dag("cron", "h1")).await.unwrap();
        assert_eq!((dag.next_fire_at, dag.last_fired_at), (None, None));

        // Nanosecond precision in, microseconds stored.
        let first = Utc::now();
        let mut handles = Vec::new();
        for scheduler in 0..8_i64 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let next = first + Duration::microseconds(scheduler);
                store.advance_dag_schedule(dag.id, None, None, Some(next)).await
            }));
        }
        let mut winners = Vec::new();
        for (scheduler, handle) in handles.into_iter().enumerate() {
            if handle.await.unwrap().unwrap() {
                winners.push(scheduler as i64);
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let stored = store.get_dag(dag.id).await.unwrap();
        let expected_next = (first + Duration::microseconds(winners[0])).trunc_subsecs(6);
        assert_eq!(stored.next_fire_at, Some(expected_next));
        assert_eq!(stored.last_fired_at, None);

        // Fire: concurrent advancers passing the value read back; one wins.
        let second = expected_next + Duration::minutes(1);
        let mut handles = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            let expected = stored.next_fire_at;
            handles.push(tokio::spawn(async move {
                store
                    .advance_dag_schedule(dag.id, expected, expected, Some(second))
                    .await
            }));
        }
        let mut won = 0;
        for handle in handles {
            won += usize::from(handle.await.unwrap().unwrap());
        }
        assert_eq!(won, 1);
        let fired = store.get_dag(dag.id).await.unwrap();
        assert_eq!(fired.next_fire_at, Some(second));
        assert_eq!(fired.last_fired_at, Some(expected_next));

        // A stale expectation loses; None as expected does not match a value.
        assert!(
            !store
                .advance_dag_schedule(dag.id, Some(expected_next), None, None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .advance_dag_schedule(dag.id, None, None, None)
                .await
                .unwrap()
        );

        // An un-truncated expectation matches its truncated stored value;
        // `None` for last_fired_at keeps it; `None` for next clears it.
        let noisy = second + Duration::nanoseconds(999);
        assert!(
            store
                .advance_dag_schedule(dag.id, Some(noisy), None, None)
                .await
                .unwrap()
        );
        let cleared = store.get_dag(dag.id).await.unwrap();
        assert_eq!(
            (cleared.next_fire_at, cleared.last_fired_at),
            (None, Some(expected_next))
        );
        assert!(
            store
                .advance_dag_schedule(dag.id, None, None, Some(second))
                .await
                .unwrap()
        );

        let missing = cascade_store::DagId(424_242);
        let err = store
            .advance_dag_schedule(missing, None, None, Some(second))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::DagNotFound { dag_id } if dag_id == missing),
            "{err:?}"
        );
    }

    /// A re-run records the attempts made so far as the task's retry base;
    /// later transitions that do not name it keep it.
    pub(super) async fn task_rerun_sets_retry_base(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        for batched in [false, true] {
            let job = store
                .create_job(new_job(
                    dag.id,
                    vec![NewTask {
                        attempt: 3,
                        fencing_token: 7,
                        ..task("load", TaskStatus::Failed)
                    }],
                ))
                .await
                .unwrap()
                .job;
            let apply = |transition: TaskTransition| {
                let store = store.clone();
                async move {
                    if batched {
                        let batch = TransitionBatch {
                            tasks: vec![transition],
                            ..TransitionBatch::default()
                        };
                        store.commit_transitions(&batch).await.unwrap().tasks == [true]
                    } else {
                        store.transition_task(transition).await.unwrap()
                    }
                }
            };
            let fresh = store.list_task_executions_for_job(job.id).await.unwrap();
            assert_eq!(fresh[0].retry_base, 0, "a new task has no retry base");
            let rerun = TaskTransition {
                changes: TaskChanges {
                    retry_base: Some(3),
                    clear_outcome: true,
                    ..TaskChanges::default()
                },
                ..cas(job.id, "load", TaskStatus::Failed, 7, TaskStatus::Pending)
            };
            assert!(apply(rerun).await, "batched: {batched}");
            assert!(apply(cas(job.id, "load", TaskStatus::Pending, 7, TaskStatus::Queued)).await);
            let row = &store.list_task_executions_for_job(job.id).await.unwrap()[0];
            assert_eq!(
                (row.status, row.attempt, row.retry_base),
                (TaskStatus::Queued, 3, 3),
                "batched: {batched}"
            );
        }
    }

    pub(super) async fn job_rerun_clears_outcome(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let at = Utc::now();
        let to = |job_id, from, to, error: Option<&str>| JobTransition {
            job_id,
            from,
            to,
            error: error.map(str::to_owned),
            at,
            owner: None,
        };
        for batched in [false, true] {
            let job = store.create_job(new_job(dag.id, vec![])).await.unwrap().job;
            let apply = |transition: JobTransition| {
                let store = store.clone();
                async move {
                    if batched {
                        let batch = TransitionBatch {
                            tasks: Vec::new(),
                            jobs: vec![transition],
                            notifications: Vec::new(),
                        };
                        store.commit_transitions(&batch).await.unwrap().jobs == [true]
                    } else {
                        store.transition_job(transition).await.unwrap()
                    }
                }
            };
            assert!(apply(to(job.id, JobStatus::Pending, JobStatus::Running, None)).await);
            assert!(
                store
                    .claim_job(job.id, "engine-a", at + Duration::seconds(30), at)
                    .await
                    .unwrap()
            );
            assert!(apply(to(job.id, JobStatus::Running, JobStatus::Failed, Some("boom"))).await);
            let failed = store.get_job(job.id).await.unwrap();
            assert_eq!(failed.error.as_deref(), Some("boom"));
            assert!(failed.completed_at.is_some());
            assert_eq!(
                (failed.owner, failed.lease_expires_at),
                (None, None),
                "a finished job releases its owner (batched: {batched})"
            );

            // Non-terminal to non-terminal keeps the error.
            assert!(
                apply(to(job.id, JobStatus::Failed, JobStatus::Running, None)).await,
                "rerun"
            );
            let rerun = store.get_job(job.id).await.unwrap();
            assert_eq!(rerun.status, JobStatus::Running);
            assert_eq!(
                (rerun.error.clone(), rerun.completed_at),
                (None, None),
                "batched: {batched}"
            );
            assert_eq!(rerun.started_at, failed.started_at, "started_at is kept");

            assert!(apply(to(job.id, JobStatus::Running, JobStatus::Failed, Some("again"))).await);
            assert!(
                apply(to(
                    job.id,
                    JobStatus::Failed,
                    JobStatus::Pending,
                    Some("retrying")
                ))
                .await
            );
            let pending = store.get_job(job.id).await.unwrap();
            assert_eq!(
                (pending.error.as_deref(), pending.completed_at),
                (Some("retrying"), None)
            );
        }
    }

    pub(super) async fn commit_transitions_5000(store: &Store) {
        let dag = store.upsert_dag(new_dag("big", "h1")).await.unwrap();
        let n = 5_000;
        let tasks: Vec<NewTask> = (0..n)
            .map(|i| task(&format!("t{i}"), TaskStatus::Pending))
            .collect();
        let job = store.create_job(new_job(dag.id, tasks)).await.unwrap().job;
        let now = Utc::now().trunc_subsecs(6);
        let mut batch = TransitionBatch::default();
        for i in 0..n {
            let mut start = cas(
                job.id,
                &format!("t{i}"),
                TaskStatus::Pending,
                0,
                TaskStatus::Running,
            );
            start.changes.fencing_token = Some(1);
            start.changes.started_at = Some(now);
            start.changes.worker = Some(format!("w{}", i % 7));
            batch.tasks.push(start);
        }
        // Every even task also finishes in the same batch, with an attempt
        // record; every fifth odd one presents a stale token and loses.
        for i in 0..n {
            let (token, to) = if i % 2 == 0 {
                (1, TaskStatus::Success)
            } else if i % 5 == 0 {
                (0, TaskStatus::Failed)
            } else {
                continue;
            };
            let mut finish = cas(job.id, &format!("t{i}"), TaskStatus::Running, token, to);
            finish.changes.result = Some(json!({ "i": i }));
            finish.changes.completed_at = Some(now);
            finish.changes.record_attempt = Some(TaskAttempt {
                job_id: job.id,
                task_id: format!("t{i}"),
                attempt: 1,
                status: to,
                worker: None,
                error: None,
                output: None,
                started_at: Some(now),
                finished_at: Some(now),
            });
            batch.tasks.push(finish);
        }
        batch.jobs.push(JobTransition {
            job_id: job.id,
            from: JobStatus::Pending,
            to: JobStatus::Running,
            error: None,
            at: now,
            owner: None,
        });
        let started = Instant::now();
        let outcome = store.commit_transitions(&batch).await.unwrap();
        eprintln!(
            "{:?}: commit_transitions of {} took {:?}",
            store.backend(),
            batch.tasks.len(),
            started.elapsed()
        );
        let expected: Vec<bool> = batch
            .tasks
            .iter()
            .map(|t| t.from == TaskStatus::Pending || t.fencing_token == 1)
            .collect();
        assert_eq!(outcome.tasks, expected);
        assert_eq!(outcome.jobs, [true]);
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert_eq!(rows.len(), n);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(row.task_id, format!("t{i}"));
            assert_eq!(row.worker, Some(format!("w{}", i % 7)));
            assert_eq!(row.started_at, Some(now));
            assert_eq!(row.fencing_token, 1);
            if i % 2 == 0 {
                assert_eq!(row.status, TaskStatus::Success);
                assert_eq!(row.result, Some(json!({ "i": i })));
                assert_eq!(row.completed_at, Some(now));
            } else {
                assert_eq!(
                    (row.status, row.result.clone(), row.completed_at),
                    (TaskStatus::Running, None, None)
                );
            }
        }
        assert_eq!(store.list_task_attempts(job.id, "t0").await.unwrap().len(), 1);
        assert!(store.list_task_attempts(job.id, "t5").await.unwrap().is_empty());
        assert_eq!(store.list_task_attempts(job.id, "t4998").await.unwrap().len(), 1);
    }

    pub(super) async fn concurrent_batches_one_winner_per_row(store: &Store) {
        let dag = store.upsert_dag(new_dag("etl", "h1")).await.unwrap();
        let n = 200;
        let tasks: Vec<NewTask> = (0..n)
            .map(|i| task(&format!("t{i}"), TaskStatus::Queued))
            .collect();
        let job = store.create_job(new_job(dag.id, tasks)).await.unwrap().job;
        // Overlapping batches in opposite orders must neither deadlock nor
        // let two writers win one row.
        let mut handles = Vec::new();
        for writer in 0..6_i64 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                let mut order: Vec<usize> = (0..n).collect();
                if writer % 2 == 1 {
                    order.reverse();
                }
                let mut batch = TransitionBatch::default();
                for i in order {
                    let mut start = cas(
                        job.id,
                        &format!("t{i}"),
                        TaskStatus::Queued,
                        0,
                        TaskStatus::Running,
                    );
                    start.changes.fencing_token = Some(writer + 1);
                    batch.tasks.push(start);
                }
                store.commit_transitions(&batch).await
            }));
        }
        let mut wins = 0;
        for handle in handles {
            wins += handle
                .await
                .unwrap()
                .unwrap()
                .tasks
                .iter()
                .filter(|won| **won)
                .count();
        }
        assert_eq!(wins, n, "every row is won exactly once");
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert!(
            rows.iter()
                .all(|r| r.status == TaskStatus::Running && r.fencing_token >= 1)
        );
    }

    // ----- distributed mode ---------------------------------------------------

    pub(super) fn worker_info(id: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.to_owned(),
            host: "host-a".to_owned(),
            pid: 4242,
            queues: vec!["default".to_owned(), "gpu".to_owned()],
            labels: vec!["zone=eu".to_owned()],
            capacity: 8,
            version: "0.1.0".to_owned(),
            role: WorkerRole::Worker,
        }
    }

    fn claim(
        worker: &str,
        queues: &[&str],
        dag_ids: &[DagId],
        limit: i64,
        now: DateTime<Utc>,
    ) -> ClaimRequest {
        ClaimRequest {
            worker: worker.to_owned(),
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            dag_ids: dag_ids.to_vec(),
            limit,
            now,
            lease_until: now + Duration::seconds(30),
            labels: Vec::new(),
        }
    }

    fn labelled(task_id: &str, labels: &[&str]) -> NewTask {
        NewTask {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            ..task(task_id, TaskStatus::Queued)
        }
    }

    fn with_labels(mut request: ClaimRequest, labels: &[&str]) -> ClaimRequest {
        request.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        request
    }

    fn on_queue(task_id: &str, queue: &str, status: TaskStatus) -> NewTask {
        NewTask {
            queue: queue.to_owned(),
            ..task(task_id, status)
        }
    }

    fn assert_unsupported<T: std::fmt::Debug>(result: cascade_store::Result<T>, operation: &str) {
        let err = result.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unsupported { operation: op, backend: Backend::Sqlite } if *op == operation),
            "{err:?}"
        );
        assert!(err.to_string().contains("needs PostgreSQL"), "{err}");
        assert_eq!(err.kind(), ErrorKind::Other);
    }

    fn now_micros() -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6)
    }

    pub(super) async fn workers_lifecycle(store: &Store) {
        let now = now_micros();
        let w1 = store.register_worker(&worker_info("w1")).await.unwrap();
        assert_eq!(
            (
                w1.id.as_str(),
                w1.host.as_str(),
                w1.pid,
                w1.capacity,
                w1.version.as_str()
            ),
            ("w1", "host-a", 4242, 8, "0.1.0")
        );
        assert_eq!(w1.queues, ["default", "gpu"]);
        assert_eq!(w1.labels, ["zone=eu"]);
        assert_eq!((w1.state, w1.role), (WorkerState::Active, WorkerRole::Worker));
        store.register_worker(&worker_info("w2")).await.unwrap();
        let again = store
            .register_worker(&WorkerInfo {
                capacity: 16,
                role: WorkerRole::All,
                ..worker_info("w1")
            })
            .await
            .unwrap();
        assert_eq!(
            (again.capacity, again.state, again.role),
            (16, WorkerState::Active, WorkerRole::All)
        );
        let listed = store.list_workers().await.unwrap();
        assert_eq!(
            listed.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            ["w1", "w2"]
        );

        // A task running on w1, with a short lease.
        let dag = store.upsert_dag(new_dag("dist", "h")).await.unwrap();
        let job = store
            .create_job(new_job(
                dag.id,
                vec![task("a", TaskStatus::Queued), task("b", TaskStatus::Queued)],
            ))
            .await
            .unwrap()
            .job;
        let mut start = cas(job.id, "a", TaskStatus::Queued, 0, TaskStatus::Running);
        start.changes = TaskChanges {
            fencing_token: Some(1),
            worker: Some("w1".to_owned()),
            lease_expires_at: Some(now + Duration::seconds(5)),
            ..TaskChanges::default()
        };
        assert!(store.transition_task(start).await.unwrap());

        let until = now + Duration::seconds(60);
        assert_eq!(store.heartbeat_worker("w1", now, until).await.unwrap(), 1);
        assert_eq!(store.heartbeat_worker("w2", now, until).await.unwrap(), 0);
        let running = store.list_running_tasks_of_worker("w1").await.unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].task_id, "a");
        assert_db_time(store, running[0].lease_expires_at, until);
        assert!(store.list_running_tasks_of_worker("w2").await.unwrap().is_empty());
        // Extending only the attempts the worker runs: an unknown row id
        // extends nothing, the real one is extended.
        let later = until + Duration::seconds(60);
        assert_eq!(
            store
                .heartbeat_worker_tasks("w1", now, later, &[-1])
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store.heartbeat_worker_tasks("w1", now, later, &[]).await.unwrap(),
            0
        );
        let row = running[0].id;
        assert_eq!(
            store
                .heartbeat_worker_tasks("w1", now, later, &[row])
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .heartbeat_worker_tasks("w2", now, later, &[row])
                .await
                .unwrap(),
            0,
            "not w2's task"
        );
        let running = store.list_running_tasks_of_worker("w1").await.unwrap();
        assert_db_time(store, running[0].lease_expires_at, later);

        let err = store.heartbeat_worker("ghost", now, until).await.unwrap_err();
        assert!(matches!(&err, StoreError::WorkerNotFound { worker_id } if worker_id == "ghost"));
        assert_eq!(err.kind(), ErrorKind::NotFound);

        // w1 falls silent; w2 keeps heartbeating.
        store
            .heartbeat_worker("w1", now - Duration::minutes(10), until)
            .await
            .unwrap();
        let lost = store.mark_lost_workers(now - Duration::minutes(1)).await.unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].id.as_str(), lost[0].state), ("w1", WorkerState::Lost));
        assert_db_time(store, Some(lost[0].last_heartbeat), now - Duration::minutes(10));
        assert!(
            store
                .mark_lost_workers(now - Duration::minutes(1))
                .await
                .unwrap()
                .is_empty()
        );
        // A heartbeat is proof of life.
        store.heartbeat_worker("w1", now, until).await.unwrap();
        store.deregister_worker("w2").await.unwrap();
        assert_eq!(
            store.deregister_worker("ghost").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let states: Vec<(String, WorkerState)> = store
            .list_workers()
            .await
            .unwrap()
            .into_iter()
            .map(|w| (w.id, w.state))
            .collect();
        assert_eq!(
            states,
            [
                ("w1".to_owned(), WorkerState::Active),
                ("w2".to_owned(), WorkerState::Stopped)
            ]
        );
        // Stopped workers are not marked lost.
        assert!(
            store
                .mark_lost_workers(now + Duration::hours(1))
                .await
                .unwrap()
                .len()
                == 1
        );

        // Upstream results of a job's tasks.
        let mut done = cas(job.id, "a", TaskStatus::Running, 1, TaskStatus::Success);
        done.changes.result = Some(json!({ "rows": 3 }));
        assert!(store.transition_task(done).await.unwrap());
        let results = store
            .upstream_results(job.id, &["b".to_owned(), "a".to_owned(), "nope".to_owned()])
            .await
            .unwrap();
        assert_eq!(
            results,
            [
                ("a".to_owned(), Some(json!({ "rows": 3 }))),
                ("b".to_owned(), None)
            ]
        );
        assert!(store.upstream_results(job.id, &[]).await.unwrap().is_empty());

        if store.backend() == Backend::Sqlite {
            let request = claim("w1", &["default"], &[dag.id], 1, now);
            assert_unsupported(store.claim_tasks(&request).await, "claim_tasks");
            assert_unsupported(
                store.requeue_expired_tasks(now, 10).await,
                "requeue_expired_tasks",
            );
            assert_unsupported(store.notify("c", "p").await, "notify");
            assert_unsupported(store.listen(&["c"]).await, "listen");
            assert_unsupported(store.try_lead(1).await, "try_lead");
        }
    }

    pub(super) async fn claim_tasks_filters(store: &Store) {
        if store.backend() != Backend::Postgres {
            return;
        }
        let now = now_micros();
        let a = store.upsert_dag(new_dag("a", "h")).await.unwrap();
        let b = store.upsert_dag(new_dag("b", "h")).await.unwrap();
        let job_a = store
            .create_job(new_job(
                a.id,
                vec![
                    task("a0", TaskStatus::Queued),
                    task("a1", TaskStatus::Queued),
                    task("a2", TaskStatus::Queued),
                    task("a3", TaskStatus::Queued),
                    task("a4", TaskStatus::Queued),
                    on_queue("g0", "gpu", TaskStatus::Queued),
                    task("p0", TaskStatus::Pending),
                ],
            ))
            .await
            .unwrap()
            .job;
        let job_b = store
            .create_job(new_job(b.id, vec![task("b0", TaskStatus::Queued)]))
            .await
            .unwrap()
            .job;
        let requeue = |task_id: &str, changes: TaskChanges| TaskTransition {
            changes,
            ..cas(job_a.id, task_id, TaskStatus::Queued, 0, TaskStatus::Queued)
        };
        // Priorities through both write paths: a batch and a single transition.
        let batch = TransitionBatch {
            tasks: vec![
                requeue(
                    "a3",
                    TaskChanges {
                        priority: Some(5),
                        ..TaskChanges::default()
                    },
                ),
                requeue(
                    "a1",
                    TaskChanges {
                        next_attempt_at: Some(now + Duration::hours(1)),
                        ..TaskChanges::default()
                    },
                ),
            ],
            ..TransitionBatch::default()
        };
        assert_eq!(
            store.commit_transitions(&batch).await.unwrap().tasks,
            [true, true]
        );
        let prio = requeue(
            "a4",
            TaskChanges {
                priority: Some(1),
                ..TaskChanges::default()
            },
        );
        assert!(store.transition_task(prio).await.unwrap());
        // a0 is a due retry (updated after a2, so younger in the queue).
        let due = requeue(
            "a0",
            TaskChanges {
                next_attempt_at: Some(now - Duration::minutes(1)),
                ..TaskChanges::default()
            },
        );
        assert!(store.transition_task(due).await.unwrap());

        let first = store
            .claim_tasks(&claim("w1", &["default"], &[a.id], 2, now))
            .await
            .unwrap();
        let ids: Vec<&str> = first.iter().map(|c| c.execution.task_id.as_str()).collect();
        assert_eq!(ids, ["a3", "a4"], "highest priority first");
        let c = &first[0];
        assert_eq!((c.dag_id, c.dag_version), (a.id, 1));
        assert_eq!(c.params, json!({ "environment": "dev" }));
        let e = &c.execution;
        assert_eq!(e.job_id, job_a.id);
        assert_eq!(e.status, TaskStatus::Running);
        assert_eq!(e.worker.as_deref(), Some("w1"));
        assert_eq!(
            (e.fencing_token, e.attempt, e.priority, e.lost_count),
            (1, 0, 5, 0)
        );
        assert_db_time(store, e.lease_expires_at, now + Duration::seconds(30));
        assert_eq!((e.started_at, e.updated_at), (Some(now), now));

        let second = store
            .claim_tasks(&claim("w2", &["default"], &[a.id], 10, now))
            .await
            .unwrap();
        let ids: Vec<&str> = second.iter().map(|c| c.execution.task_id.as_str()).collect();
        assert_eq!(
            ids,
            ["a2", "a0"],
            "then the longest queued; a1 is not due, g0 on another queue"
        );
        assert!(
            store
                .claim_tasks(&claim("w2", &["default"], &[a.id], 10, now))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .claim_tasks(&claim("w2", &["gpu", "default"], &[a.id, b.id], 0, now))
                .await
                .unwrap()
                .is_empty(),
            "limit 0"
        );
        let other = store
            .claim_tasks(&claim("w3", &["gpu", "default"], &[a.id, b.id], 1, now))
            .await
            .unwrap();
        assert_eq!(other.len(), 1, "limit honoured");
        let more = store
            .claim_tasks(&claim("w3", &["gpu", "default"], &[a.id, b.id], 10, now))
            .await
            .unwrap();
        let mut ids: Vec<(String, DagId)> = other
            .iter()
            .chain(&more)
            .map(|c| (c.execution.task_id.clone(), c.dag_id))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            [("b0".to_owned(), b.id), ("g0".to_owned(), a.id)],
            "pending p0 and the future a1 stay"
        );
        assert_eq!(
            more.iter()
                .chain(&other)
                .find(|c| c.dag_id == b.id)
                .unwrap()
                .execution
                .job_id,
            job_b.id
        );
        let later = store
            .claim_tasks(&claim("w3", &["default"], &[a.id], 10, now + Duration::hours(2)))
            .await
            .unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].execution.task_id, "a1");
        let rows = store.list_task_executions_for_job(job_a.id).await.unwrap();
        let pending: Vec<&str> = rows
            .iter()
            .filter(|r| r.status != TaskStatus::Running)
            .map(|r| r.task_id.as_str())
            .collect();
        assert_eq!(pending, ["p0"]);
        assert_eq!(store.list_running_tasks_of_worker("w3").await.unwrap().len(), 3);
    }

    /// A task's labels must all be among the claiming worker's.
    pub(super) async fn cancel_requests_are_stored_and_stop_claims(store: &Store) {
        let now = now_micros();
        let dag = store.upsert_dag(new_dag("cancel_req", "h")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("q", TaskStatus::Queued)]))
            .await
            .unwrap()
            .job;
        let other = store
            .create_job(new_job(dag.id, vec![task("q", TaskStatus::Queued)]))
            .await
            .unwrap()
            .job;
        assert_eq!(job.cancel_requested_at, None);
        assert!(
            store.request_cancel(job.id).await.unwrap(),
            "an unfinished job takes the request"
        );
        assert!(
            store.request_cancel(job.id).await.unwrap(),
            "asking again is fine"
        );
        let stored = store.get_job(job.id).await.unwrap();
        assert!(stored.cancel_requested_at.is_some());
        assert_eq!(
            store
                .jobs_with_cancel_requests(&[job.id, other.id])
                .await
                .unwrap(),
            [job.id]
        );
        assert!(matches!(
            store.request_cancel(cascade_store::JobId(987_654)).await,
            Err(StoreError::JobNotFound { .. })
        ));
        // A job that failed before its cancel was acted on is re-run
        // without it; a finished job takes no request.
        let third = store
            .create_job(new_job(dag.id, vec![task("q", TaskStatus::Pending)]))
            .await
            .unwrap()
            .job;
        assert!(store.request_cancel(third.id).await.unwrap());
        assert!(
            store
                .transition_task(cas(third.id, "q", TaskStatus::Pending, 0, TaskStatus::Failed))
                .await
                .unwrap()
        );
        let step = |from, to| JobTransition {
            job_id: third.id,
            from,
            to,
            error: None,
            at: now,
            owner: None,
        };
        assert!(
            store
                .transition_job(step(JobStatus::Pending, JobStatus::Failed))
                .await
                .unwrap()
        );
        assert!(!store.request_cancel(third.id).await.unwrap());
        let batch = TransitionBatch {
            jobs: vec![step(JobStatus::Failed, JobStatus::Running)],
            ..TransitionBatch::default()
        };
        assert_eq!(store.commit_transitions(&batch).await.unwrap().jobs, [true]);
        assert_eq!(store.get_job(third.id).await.unwrap().cancel_requested_at, None);
        if store.backend() != Backend::Postgres {
            return;
        }
        // A worker never claims a task of a job whose cancel was requested.
        let claimed = store
            .claim_tasks(&claim("w", &["default"], &[dag.id], 10, now))
            .await
            .unwrap();
        let jobs: Vec<cascade_store::JobId> = claimed.iter().map(|c| c.execution.job_id).collect();
        assert_eq!(jobs, [other.id]);
    }

    /// Once a job's cancel is requested, an attempt that was running then
    /// cannot commit `success`, through any verb; other outcomes, and the
    /// successes of other jobs, still commit.
    pub(super) async fn no_success_after_a_cancel_request(store: &Store) {
        let now = now_micros();
        let dag = store.upsert_dag(new_dag("cancel_success", "h")).await.unwrap();
        let tasks = || vec![task("a", TaskStatus::Queued), task("b", TaskStatus::Queued)];
        let job = store.create_job(new_job(dag.id, tasks())).await.unwrap().job;
        let other = store.create_job(new_job(dag.id, tasks())).await.unwrap().job;
        let attempt = |job_id, task_id: &str, status| TaskAttempt {
            job_id,
            task_id: task_id.to_owned(),
            attempt: 1,
            status,
            worker: Some("w".to_owned()),
            error: None,
            output: None,
            started_at: Some(now),
            finished_at: Some(now),
        };
        let success = |job_id, task_id: &str| {
            let mut done = cas(job_id, task_id, TaskStatus::Running, 1, TaskStatus::Success);
            done.changes.result = Some(json!("done"));
            done.changes.completed_at = Some(now);
            done.changes.record_attempt = Some(attempt(job_id, task_id, TaskStatus::Success));
            done
        };
        // Both tasks of both jobs run (claimed before the request).
        let start = |job_id, task_id: &str| {
            let mut start = cas(job_id, task_id, TaskStatus::Queued, 0, TaskStatus::Running);
            start.changes = TaskChanges {
                attempt: Some(1),
                fencing_token: Some(1),
                worker: Some("w".to_owned()),
                started_at: Some(now),
                ..TaskChanges::default()
            };
            start
        };
        let starts = TransitionBatch {
            tasks: vec![start(job.id, "a"), start(job.id, "b"), start(other.id, "a")],
            ..TransitionBatch::default()
        };
        assert_eq!(
            store.commit_transitions(&starts).await.unwrap().tasks,
            [true, true, true]
        );
        assert!(store.request_cancel(job.id).await.unwrap());

        let batch = TransitionBatch {
            tasks: vec![success(job.id, "a"), success(other.id, "a")],
            ..TransitionBatch::default()
        };
        assert_eq!(
            store.commit_transitions(&batch).await.unwrap().tasks,
            [false, true],
            "the cancelled job's success loses; the other job's wins"
        );
        let mut bare = success(job.id, "b");
        bare.changes.record_attempt = None;
        assert!(
            !store.transition_task(bare).await.unwrap(),
            "a single transition to success loses too"
        );
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert!(
            rows.iter()
                .all(|r| (r.status, r.fencing_token, r.result.clone()) == (TaskStatus::Running, 1, None)),
            "{rows:?}"
        );
        assert!(store.list_task_attempts(job.id, "a").await.unwrap().is_empty());

        // The attempt ends otherwise: cancelled, with its record.
        let mut cancelled = cas(job.id, "a", TaskStatus::Running, 1, TaskStatus::Cancelled);
        cancelled.changes.completed_at = Some(now);
        cancelled.changes.record_attempt = Some(attempt(job.id, "a", TaskStatus::Cancelled));
        assert!(store.transition_task(cancelled).await.unwrap());
        let attempts = store.list_task_attempts(job.id, "a").await.unwrap();
        assert_eq!(attempts, [attempt(job.id, "a", TaskStatus::Cancelled)]);
    }

    pub(super) async fn claim_tasks_by_labels(store: &Store) {
        let now = now_micros();
        let dag = store.upsert_dag(new_dag("labels", "h")).await.unwrap();
        let job = store
            .create_job(new_job(
                dag.id,
                vec![
                    labelled("gpu", &["gpu"]),
                    labelled("any", &[]),
                    labelled("gpu_eu", &["eu", "gpu"]),
                    labelled("gpu_us", &["gpu", "us"]),
                ],
            ))
            .await
            .unwrap()
            .job;
        // Written by create_job and read back on both backends.
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        let stored: Vec<(&str, Vec<&str>)> = rows
            .iter()
            .map(|r| (r.task_id.as_str(), r.labels.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            stored,
            [
                ("gpu", vec!["gpu"]),
                ("any", vec![]),
                ("gpu_eu", vec!["eu", "gpu"]),
                ("gpu_us", vec!["gpu", "us"]),
            ]
        );
        if store.backend() != Backend::Postgres {
            return;
        }
        let ids = |claimed: &[cascade_store::ClaimedTask]| -> Vec<String> {
            claimed.iter().map(|c| c.execution.task_id.clone()).collect()
        };
        let request = |worker: &str, labels: &[&str]| {
            with_labels(claim(worker, &["default"], &[dag.id], 10, now), labels)
        };
        let unlabelled = store.claim_tasks(&request("w0", &[])).await.unwrap();
        assert_eq!(
            ids(&unlabelled),
            ["any"],
            "a worker without labels gets unlabelled tasks only"
        );
        assert!(unlabelled[0].execution.labels.is_empty());
        assert!(
            store
                .claim_tasks(&request("w1", &["cpu"]))
                .await
                .unwrap()
                .is_empty(),
            "other labels do not qualify"
        );
        assert!(
            store
                .claim_tasks(&request("w2", &["eu"]))
                .await
                .unwrap()
                .is_empty(),
            "part of a task's labels does not qualify"
        );
        let gpu = store.claim_tasks(&request("w3", &["gpu", "eu"])).await.unwrap();
        assert_eq!(
            ids(&gpu),
            ["gpu", "gpu_eu"],
            "a superset qualifies, in claiming order"
        );
        assert_eq!(gpu[1].execution.labels, ["eu", "gpu"]);
        assert_eq!(gpu[1].execution.worker.as_deref(), Some("w3"));
        let rest = store
            .claim_tasks(&request("w4", &["us", "cpu", "gpu"]))
            .await
            .unwrap();
        assert_eq!(ids(&rest), ["gpu_us"]);
    }

    /// `NewTask::priority` is stored and orders claims (then age).
    pub(super) async fn claim_tasks_priority_at_creation(store: &Store) {
        let now = now_micros();
        let dag = store.upsert_dag(new_dag("prio", "h")).await.unwrap();
        let prioritised = |task_id: &str, priority: i32| NewTask {
            priority,
            ..task(task_id, TaskStatus::Queued)
        };
        let job = store
            .create_job(new_job(
                dag.id,
                vec![
                    prioritised("zero", 0),
                    prioritised("seven", 7),
                    prioritised("minus", -1),
                    prioritised("three", 3),
                    prioritised("zero_too", 0),
                ],
            ))
            .await
            .unwrap()
            .job;
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        let stored: Vec<(&str, i32)> = rows.iter().map(|r| (r.task_id.as_str(), r.priority)).collect();
        assert_eq!(
            stored,
            [
                ("zero", 0),
                ("seven", 7),
                ("minus", -1),
                ("three", 3),
                ("zero_too", 0)
            ]
        );
        if store.backend() != Backend::Postgres {
            return;
        }
        let mut order = Vec::new();
        for _ in 0..5 {
            let claimed = store
                .claim_tasks(&claim("w", &["default"], &[dag.id], 1, now))
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            order.push((
                claimed[0].execution.task_id.clone(),
                claimed[0].execution.priority,
            ));
        }
        let order: Vec<(&str, i32)> = order.iter().map(|(id, p)| (id.as_str(), *p)).collect();
        assert_eq!(
            order,
            [
                ("seven", 7),
                ("three", 3),
                ("zero", 0),
                ("zero_too", 0),
                ("minus", -1)
            ],
            "priority first; equal priorities by age, then row id"
        );
    }

    pub(super) async fn claim_tasks_concurrent(store: &Store) {
        if store.backend() != Backend::Postgres {
            return;
        }
        let dag = store.upsert_dag(new_dag("race", "h")).await.unwrap();
        let mut jobs = Vec::new();
        for j in 0..5 {
            let tasks = (0..100)
                .map(|i| task(&format!("t{j}_{i}"), TaskStatus::Queued))
                .collect();
            jobs.push(store.create_job(new_job(dag.id, tasks)).await.unwrap().job.id);
        }
        let claimers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let request = claim(&format!("w{w}"), &["default"], &[dag.id], 7, Utc::now());
                        let claimed = store.claim_tasks(&request).await.unwrap();
                        if claimed.is_empty() {
                            break mine;
                        }
                        mine.extend(claimed.into_iter().map(|c| {
                            assert_eq!(c.execution.worker, Some(format!("w{w}")));
                            c.execution.id
                        }));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut busy_claimers = 0;
        for claimer in claimers {
            let mine = claimer.await.unwrap();
            busy_claimers += usize::from(!mine.is_empty());
            all.extend(mine);
        }
        assert_eq!(all.len(), 500, "every task claimed");
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 500, "no task claimed twice");
        assert!(busy_claimers > 1, "claims were spread over claimers");
        for job in jobs {
            let rows = store.list_task_executions_for_job(job).await.unwrap();
            assert!(
                rows.iter()
                    .all(|r| r.status == TaskStatus::Running && r.fencing_token == 1)
            );
        }
    }

    /// A job finishes only when every one of its tasks has: a terminal job
    /// transition loses while a task row is unfinished, and wins in the same
    /// batch as the transitions that finish the last tasks (even when a task
    /// moves twice in it). The tasks of the finished job are not claimed.
    pub(super) async fn jobs_finish_only_when_their_tasks_have(store: &Store) {
        let now = now_micros();
        let dag = store.upsert_dag(new_dag("done", "h")).await.unwrap();
        let job = store
            .create_job(new_job(
                dag.id,
                vec![
                    task("a", TaskStatus::Running),
                    task("b", TaskStatus::Queued),
                    task("c", TaskStatus::Pending),
                ],
            ))
            .await
            .unwrap()
            .job;
        let job_to = |from, to| JobTransition {
            job_id: job.id,
            from,
            to,
            error: None,
            at: now,
            owner: None,
        };
        assert!(
            store
                .transition_job(job_to(JobStatus::Pending, JobStatus::Running))
                .await
                .unwrap()
        );
        for to in [JobStatus::Success, JobStatus::Failed, JobStatus::Cancelled] {
            assert!(
                !store
                    .transition_job(job_to(JobStatus::Running, to))
                    .await
                    .unwrap(),
                "the job went {to} with unfinished tasks"
            );
        }
        // Finishing some tasks is not enough.
        let batch = TransitionBatch {
            tasks: vec![cas(job.id, "b", TaskStatus::Queued, 0, TaskStatus::Cancelled)],
            jobs: vec![job_to(JobStatus::Running, JobStatus::Cancelled)],
            ..TransitionBatch::default()
        };
        let outcome = store.commit_transitions(&batch).await.unwrap();
        assert_eq!((outcome.tasks, outcome.jobs), (vec![true], vec![false]));
        assert_eq!(store.get_job(job.id).await.unwrap().status, JobStatus::Running);
        // The batch that finishes the last ones finishes the job; task `c`
        // moves twice in it.
        let batch = TransitionBatch {
            tasks: vec![
                cas(job.id, "a", TaskStatus::Running, 0, TaskStatus::Cancelled),
                cas(job.id, "c", TaskStatus::Pending, 0, TaskStatus::Queued),
                cas(job.id, "c", TaskStatus::Queued, 0, TaskStatus::Cancelled),
            ],
            jobs: vec![job_to(JobStatus::Running, JobStatus::Cancelled)],
            ..TransitionBatch::default()
        };
        let outcome = store.commit_transitions(&batch).await.unwrap();
        assert_eq!((outcome.tasks, outcome.jobs), (vec![true; 3], vec![true]));
        assert_eq!(store.get_job(job.id).await.unwrap().status, JobStatus::Cancelled);
        // A re-run that puts a task back is no finish either.
        let batch = TransitionBatch {
            tasks: vec![cas(job.id, "a", TaskStatus::Cancelled, 0, TaskStatus::Queued)],
            jobs: vec![
                job_to(JobStatus::Cancelled, JobStatus::Running),
                job_to(JobStatus::Running, JobStatus::Success),
            ],
            ..TransitionBatch::default()
        };
        let outcome = store.commit_transitions(&batch).await.unwrap();
        assert_eq!((outcome.tasks, outcome.jobs), (vec![true], vec![true, false]));
        if store.backend() == Backend::Postgres {
            let claimed = store
                .claim_tasks(&claim("w", &["default"], &[dag.id], 10, now))
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1, "{claimed:?}");
            assert_eq!(claimed[0].execution.task_id, "a");
        }
    }

    /// With an owner given, a job transition wins only while the job is
    /// still that engine's: one whose lease lapsed and whose job was taken
    /// over loses, whatever the job's status.
    pub(super) async fn job_transitions_are_fenced_by_owner(store: &Store) {
        let now = now_micros();
        let dag = store.upsert_dag(new_dag("fenced", "h")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("a", TaskStatus::Success)]))
            .await
            .unwrap()
            .job;
        let by = |owner: &str, from, to| JobTransition {
            job_id: job.id,
            from,
            to,
            error: None,
            at: now,
            owner: Some(owner.to_owned()),
        };
        // Nobody owns it yet: an owner's transition loses.
        assert!(
            !store
                .transition_job(by("engine-a", JobStatus::Pending, JobStatus::Running))
                .await
                .unwrap()
        );
        assert!(
            store
                .claim_job(
                    job.id,
                    "engine-a",
                    now - Duration::seconds(1),
                    now - Duration::seconds(2)
                )
                .await
                .unwrap()
        );
        assert!(
            store
                .transition_job(by("engine-a", JobStatus::Pending, JobStatus::Running))
                .await
                .unwrap()
        );
        // engine-a's lease lapsed; engine-b takes the job over.
        assert!(
            store
                .claim_job(job.id, "engine-b", now + Duration::seconds(30), now)
                .await
                .unwrap()
        );
        let batch = TransitionBatch {
            jobs: vec![by("engine-a", JobStatus::Running, JobStatus::Success)],
            ..TransitionBatch::default()
        };
        assert_eq!(store.commit_transitions(&batch).await.unwrap().jobs, [false]);
        let stored = store.get_job(job.id).await.unwrap();
        assert_eq!(
            (stored.status, stored.owner.as_deref()),
            (JobStatus::Running, Some("engine-b"))
        );
        assert!(
            store
                .transition_job(by("engine-b", JobStatus::Running, JobStatus::Success))
                .await
                .unwrap()
        );
        let stored = store.get_job(job.id).await.unwrap();
        assert_eq!((stored.status, stored.owner), (JobStatus::Success, None));
    }

    pub(super) async fn requeue_expired(store: &Store) {
        if store.backend() != Backend::Postgres {
            return;
        }
        let now = now_micros();
        let dag = store.upsert_dag(new_dag("reap", "h")).await.unwrap();
        let job = store
            .create_job(new_job(
                dag.id,
                vec![
                    task("x", TaskStatus::Queued),
                    task("y", TaskStatus::Queued),
                    task("z", TaskStatus::Queued),
                ],
            ))
            .await
            .unwrap()
            .job;
        // A running task without a lease is never reaped.
        let no_lease = store
            .create_job(new_job(dag.id, vec![task("local", TaskStatus::Running)]))
            .await
            .unwrap()
            .job;
        let claimed = store
            .claim_tasks(&claim("dead", &["default"], &[dag.id], 10, now))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(
            store.requeue_expired_tasks(now, 10).await.unwrap().is_empty(),
            "leases alive"
        );
        assert!(
            store
                .requeue_expired_tasks(now + Duration::hours(1), 0)
                .await
                .unwrap()
                .is_empty()
        );

        let later = now + Duration::seconds(31);
        let reaped = store.requeue_expired_tasks(later, 2).await.unwrap();
        assert_eq!(reaped.len(), 2, "limit honoured");
        for t in &reaped {
            assert_eq!(t.job_id, job.id);
            assert_eq!(t.status, TaskStatus::Queued);
            assert_eq!((t.fencing_token, t.lost_count, t.attempt), (2, 1, 0));
            assert_eq!(
                (t.worker.as_deref(), t.lease_expires_at, t.started_at),
                (None, None, None)
            );
            assert_eq!(t.updated_at, later);
        }
        let left = store.list_running_tasks_of_worker("dead").await.unwrap();
        assert_eq!(left.len(), 1);
        let reaped_id = &reaped[0].task_id;

        // The presumed-dead worker's late completion loses its compare-and-set.
        let mut late = cas(job.id, reaped_id, TaskStatus::Running, 1, TaskStatus::Success);
        late.changes.result = Some(json!("late"));
        assert!(!store.transition_task(late).await.unwrap());
        let mut late_batch = cas(job.id, reaped_id, TaskStatus::Running, 1, TaskStatus::Failed);
        late_batch.changes.error = Some("late".to_owned());
        let batch = TransitionBatch {
            tasks: vec![late_batch],
            ..TransitionBatch::default()
        };
        assert_eq!(store.commit_transitions(&batch).await.unwrap().tasks, [false]);

        assert_eq!(store.requeue_expired_tasks(later, 10).await.unwrap().len(), 1);
        assert!(
            store
                .list_running_tasks_of_worker("dead")
                .await
                .unwrap()
                .is_empty()
        );
        let local = store.list_task_executions_for_job(no_lease.id).await.unwrap();
        assert_eq!(local[0].status, TaskStatus::Running);

        // Another worker claims them again, with the next token.
        let again = store
            .claim_tasks(&claim("alive", &["default"], &[dag.id], 10, later))
            .await
            .unwrap();
        assert_eq!(again.len(), 3);
        assert!(
            again
                .iter()
                .all(|c| (c.execution.fencing_token, c.execution.lost_count) == (3, 1))
        );
        let mut done = cas(job.id, reaped_id, TaskStatus::Running, 3, TaskStatus::Success);
        done.changes.result = Some(json!("ok"));
        assert!(store.transition_task(done).await.unwrap());
    }

    pub(super) async fn reap_records_lost_attempts_and_fails_after_max_lost(store: &Store) {
        if store.backend() != Backend::Postgres {
            let err = store.reap_expired_tasks(Utc::now(), 10, 3).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Unsupported {
                        operation: "reap_expired_tasks",
                        ..
                    }
                ),
                "{err:?}"
            );
            return;
        }
        let t0 = now_micros();
        let dag = store.upsert_dag(new_dag("lost", "h")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("x", TaskStatus::Queued)]))
            .await
            .unwrap()
            .job;
        store
            .claim_tasks(&claim("w1", &["default"], &[dag.id], 1, t0))
            .await
            .unwrap();
        // First loss (max_lost 1): back to the queue, the loss recorded.
        let t1 = t0 + Duration::seconds(31);
        let reaped = store.reap_expired_tasks(t1, 10, 1).await.unwrap();
        assert_eq!(reaped.len(), 1);
        assert_eq!((reaped[0].status, reaped[0].lost_count), (TaskStatus::Queued, 1));
        assert_eq!(reaped[0].error, None);
        let attempts = store.list_task_attempts(job.id, "x").await.unwrap();
        assert_eq!(attempts.len(), 1);
        let lost = &attempts[0];
        assert_eq!(
            (lost.status, lost.worker.as_deref(), lost.attempt),
            (TaskStatus::Lost, Some("w1"), 0)
        );
        assert_eq!((lost.started_at, lost.finished_at), (Some(t0), Some(t1)));
        assert!(
            lost.error.as_deref().is_some_and(|e| e.contains("w1")),
            "{lost:?}"
        );

        // Second loss: one more than max_lost, so the task fails.
        store
            .claim_tasks(&claim("w2", &["default"], &[dag.id], 1, t1))
            .await
            .unwrap();
        let t2 = t1 + Duration::seconds(31);
        let reaped = store.reap_expired_tasks(t2, 10, 1).await.unwrap();
        assert_eq!(reaped.len(), 1);
        let failed = &reaped[0];
        assert_eq!((failed.status, failed.lost_count), (TaskStatus::Failed, 2));
        assert_eq!(failed.error.as_deref(), Some("lost 2 times (max_lost 1)"));
        assert_eq!(failed.completed_at, Some(t2));
        let attempts = store.list_task_attempts(job.id, "x").await.unwrap();
        let workers: Vec<_> = attempts.iter().map(|a| (a.status, a.worker.as_deref())).collect();
        assert_eq!(
            workers,
            [(TaskStatus::Lost, Some("w1")), (TaskStatus::Lost, Some("w2"))]
        );
        assert!(store.reap_expired_tasks(t2, 10, 1).await.unwrap().is_empty());

        // A re-run (a new retry base) may be lost as often again.
        let mut rerun = cas(
            job.id,
            "x",
            TaskStatus::Failed,
            failed.fencing_token,
            TaskStatus::Pending,
        );
        rerun.changes.retry_base = Some(failed.attempt);
        rerun.changes.clear_outcome = true;
        let batch = TransitionBatch {
            tasks: vec![rerun],
            ..TransitionBatch::default()
        };
        assert_eq!(store.commit_transitions(&batch).await.unwrap().tasks, [true]);
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert_eq!((rows[0].status, rows[0].lost_count), (TaskStatus::Pending, 0));
    }

    pub(super) async fn values_that_cannot_be_stored_are_refused(store: &Store) {
        let dag = store.upsert_dag(new_dag("values", "h")).await.unwrap();
        let mut bad_params = new_job(dag.id, vec![task("t", TaskStatus::Pending)]);
        bad_params.params = json!({ "name": "a\u{0}b" });
        let err = store.create_job(bad_params).await.unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::InvalidValue {
                    column: "jobs.params",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Other);
        assert!(err.to_string().contains("NUL"), "{err}");
        let job = store
            .create_job(new_job(dag.id, vec![task("t", TaskStatus::Running)]))
            .await
            .unwrap()
            .job;

        let mut nul_error = cas(job.id, "t", TaskStatus::Running, 0, TaskStatus::Failed);
        nul_error.changes.error = Some("bad\u{0}byte".to_owned());
        let err = store.transition_task(nul_error.clone()).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidValue { column: "task_executions.error", job_id: Some(j), task_id: Some(t), .. } if *j == job.id && t == "t"),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "cannot store task_executions.error of job {}, task `t`",
                job.id
            )),
            "{err}"
        );

        let mut deep = json!(1);
        for _ in 0..200 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        let mut too_deep = cas(job.id, "t", TaskStatus::Running, 0, TaskStatus::Success);
        too_deep.changes.result = Some(deep);
        let batch = TransitionBatch {
            tasks: vec![too_deep],
            ..TransitionBatch::default()
        };
        let err = store.commit_transitions(&batch).await.unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::InvalidValue {
                    column: "task_executions.result",
                    ..
                }
            ),
            "{err:?}"
        );
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert_eq!(rows[0].status, TaskStatus::Running, "nothing was written");
    }

    pub(super) async fn notify_and_listen(store: &Store) {
        if store.backend() != Backend::Postgres {
            return;
        }
        let mut stream = store.listen(&["cascade_test", "Mixed Case"]).await.unwrap();
        for i in 0..3 {
            store.notify("cascade_test", &format!("n{i}")).await.unwrap();
        }
        store.notify("Mixed Case", "exact").await.unwrap();
        store.notify("not_listened", "x").await.unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("notification within 5 s")
                .expect("stream open")
                .unwrap();
            got.push(next);
        }
        assert_eq!(
            got,
            [
                Notification::new("cascade_test", "n0"),
                Notification::new("cascade_test", "n1"),
                Notification::new("cascade_test", "n2"),
                Notification::new("Mixed Case", "exact"),
            ]
        );
        assert!(format!("{stream:?}").contains("NotificationStream"));

        // A batch's notifications go out when it commits...
        let dag = store.upsert_dag(new_dag("notify", "h")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("t", TaskStatus::Pending)]))
            .await
            .unwrap()
            .job;
        let batch = TransitionBatch {
            tasks: vec![cas(job.id, "t", TaskStatus::Pending, 0, TaskStatus::Queued)],
            jobs: Vec::new(),
            notifications: vec![Notification::new("cascade_test", "queued:t")],
        };
        assert_eq!(store.commit_transitions(&batch).await.unwrap().tasks, [true]);
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("batch notification within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(next, Notification::new("cascade_test", "queued:t"));

        // ...and never from a batch that fails (an empty channel name makes
        // pg_notify fail after the first notification was queued).
        let failing = TransitionBatch {
            tasks: vec![cas(job.id, "t", TaskStatus::Queued, 0, TaskStatus::Running)],
            jobs: Vec::new(),
            notifications: vec![
                Notification::new("cascade_test", "must not arrive"),
                Notification::new("", "boom"),
            ],
        };
        let err = store.commit_transitions(&failing).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Database {
                    operation: "commit_transitions",
                    ..
                }
            ),
            "{err:?}"
        );
        let rows = store.list_task_executions_for_job(job.id).await.unwrap();
        assert_eq!(
            rows[0].status,
            TaskStatus::Queued,
            "the failed batch changed nothing"
        );
        // A notification-only batch is sent too.
        let marker = TransitionBatch {
            notifications: vec![Notification::new("cascade_test", "marker")],
            ..TransitionBatch::default()
        };
        assert_eq!(
            store.commit_transitions(&marker).await.unwrap(),
            Default::default()
        );
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("marker within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(
            next,
            Notification::new("cascade_test", "marker"),
            "nothing from the failed batch"
        );

        // Only winners are announced: a stale transition (wrong token) loses
        // and its announcement is not sent; in a batch that moves one task
        // twice (two steps), each announcement goes with its own step.
        let two = store
            .create_job(new_job(
                dag.id,
                vec![task("a", TaskStatus::Pending), task("b", TaskStatus::Pending)],
            ))
            .await
            .unwrap()
            .job;
        let batch = TransitionBatch {
            tasks: vec![
                cas(two.id, "a", TaskStatus::Pending, 0, TaskStatus::Queued),
                cas(two.id, "b", TaskStatus::Pending, 7, TaskStatus::Queued),
                cas(two.id, "a", TaskStatus::Queued, 0, TaskStatus::Running),
            ],
            jobs: Vec::new(),
            notifications: vec![
                Notification::after_task("cascade_test", "a queued", 0),
                Notification::after_task("cascade_test", "b queued (lost)", 1),
                Notification::after_task("cascade_test", "a running", 2),
                Notification::new("cascade_test", "always"),
            ],
        };
        assert_eq!(
            store.commit_transitions(&batch).await.unwrap().tasks,
            [true, false, true]
        );
        let mut got = Vec::new();
        for _ in 0..3 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
                .await
                .expect("notification within 5 s")
                .unwrap()
                .unwrap();
            got.push(next.payload);
        }
        got.sort();
        assert_eq!(got, ["a queued", "a running", "always"]);
        store.notify("cascade_test", "end").await.unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("end within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(next.payload, "end", "the loser was never announced");
    }

    pub(super) async fn batch_notifications_ignored_on_sqlite(store: &Store) {
        if store.backend() != Backend::Sqlite {
            return;
        }
        let dag = store.upsert_dag(new_dag("notify", "h")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("t", TaskStatus::Pending)]))
            .await
            .unwrap()
            .job;
        let batch = TransitionBatch {
            tasks: vec![cas(job.id, "t", TaskStatus::Pending, 0, TaskStatus::Queued)],
            jobs: Vec::new(),
            notifications: vec![
                Notification::new("cascade_test", "ignored"),
                Notification::new("", ""),
            ],
        };
        assert_eq!(store.commit_transitions(&batch).await.unwrap().tasks, [true]);
        let only = TransitionBatch {
            notifications: vec![Notification::new("cascade_test", "ignored")],
            ..TransitionBatch::default()
        };
        assert_eq!(store.commit_transitions(&only).await.unwrap(), Default::default());
    }

    pub(super) async fn leader_election(store: &Store) {
        if store.backend() != Backend::Postgres {
            return;
        }
        const KEY: i64 = 0x0063_6173_6361_6401;
        let mut first = store.try_lead(KEY).await.unwrap().expect("nobody leads yet");
        assert_eq!(first.key(), KEY);
        assert!(first.is_held().await);
        assert!(
            store.try_lead(KEY).await.unwrap().is_none(),
            "one leader at a time"
        );
        assert!(
            store.try_lead(KEY + 1).await.unwrap().is_some(),
            "other keys are independent"
        );
        drop(first);
        // The lock is freed when the server sees the session end.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let second = loop {
            if let Some(leader) = store.try_lead(KEY).await.unwrap() {
                break leader;
            }
            assert!(
                Instant::now() < deadline,
                "lock not released after the leader was dropped"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        second.release().await.unwrap();
        let mut third = store.try_lead(KEY).await.unwrap().expect("released explicitly");
        assert!(third.is_held().await);
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

    pub(super) async fn migrate_from_first(db: &TestDb) {
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

    /// From the schema before job ownership and schedule state (migration 2).
    pub(super) async fn migrate_from_previous(db: &TestDb) {
        testing::run_first_migrations(&db.url, 2).await;
        testing::execute_sql(
            &db.url,
            "INSERT INTO dags (name, description, version, hash, schedule, paused, created_at, updated_at) \
             VALUES ('old', 'from v2', 1, 'h', '0 * * * *', false, '2026-01-01 00:00:00', '2026-01-01 00:00:00'); \
             INSERT INTO jobs (dag_id, dag_version, status, \"trigger\", params, created_at, updated_at) \
             VALUES (1, 1, 'running', 'manual', '{}', '2026-01-01 00:00:01', '2026-01-01 00:00:01')",
        )
        .await;
        let store = Store::open(Some(&db.url)).await.unwrap();
        let old = store
            .get_dag_by_name("old")
            .await
            .unwrap()
            .expect("row survives the migration");
        assert_eq!(old.schedule.as_deref(), Some("0 * * * *"));
        assert_eq!((old.next_fire_at, old.last_fired_at), (None, None));
        let jobs = store.list_jobs(JobFilter::default()).await.unwrap();
        assert_eq!(jobs.len(), 1);
        let job = &jobs[0];
        assert_eq!(
            (job.status, job.owner.clone(), job.lease_expires_at),
            (JobStatus::Running, None, None)
        );

        // The new columns work on the upgraded database.
        let now = Utc::now();
        assert_eq!(
            store.list_claimable_jobs(&[old.id], now, 10).await.unwrap().len(),
            1
        );
        assert!(
            store
                .claim_job(job.id, "engine", now + Duration::seconds(30), now)
                .await
                .unwrap()
        );
        assert!(
            store
                .list_claimable_jobs(&[old.id], now, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .advance_dag_schedule(old.id, None, None, Some(now))
                .await
                .unwrap()
        );
    }

    pub(super) async fn migrate_from_third(db: &TestDb) {
        testing::run_first_migrations(&db.url, 3).await;
        testing::execute_sql(
            &db.url,
            "INSERT INTO dags (name, description, version, hash, schedule, paused, created_at, updated_at) \
             VALUES ('old', 'from v3', 1, 'h', NULL, false, '2026-01-01 00:00:00', '2026-01-01 00:00:00'); \
             INSERT INTO jobs (dag_id, dag_version, status, \"trigger\", params, created_at, updated_at) \
             VALUES (1, 1, 'running', 'manual', '{}', '2026-01-01 00:00:01', '2026-01-01 00:00:01'); \
             INSERT INTO task_executions (job_id, task_id, status, attempt, fencing_token, queue, created_at, updated_at) \
             VALUES (1, 't', 'queued', 1, 4, 'default', '2026-01-01 00:00:01', '2026-01-01 00:00:01')",
        )
        .await;
        let store = Store::open(Some(&db.url)).await.unwrap();
        let tasks = store
            .list_task_executions_for_job(cascade_store::JobId(1))
            .await
            .unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(
            (
                tasks[0].attempt,
                tasks[0].fencing_token,
                tasks[0].priority,
                tasks[0].lost_count
            ),
            (1, 4, 0, 0)
        );
        assert!(store.list_workers().await.unwrap().is_empty());
        store.register_worker(&cases::worker_info("w")).await.unwrap();
        assert_eq!(store.list_workers().await.unwrap().len(), 1);
        if store.backend() == Backend::Postgres {
            let old = store.get_dag_by_name("old").await.unwrap().unwrap();
            let request = ClaimRequest {
                worker: "w".to_owned(),
                queues: vec!["default".to_owned()],
                dag_ids: vec![old.id],
                limit: 10,
                now: Utc::now(),
                lease_until: Utc::now() + Duration::seconds(30),
                labels: Vec::new(),
            };
            let claimed = store.claim_tasks(&request).await.unwrap();
            assert_eq!(claimed.len(), 1);
            assert_eq!(
                (claimed[0].execution.attempt, claimed[0].execution.fencing_token),
                (1, 5)
            );
        }
    }

    /// From the schema before task labels (migration 5): rows survive,
    /// their labels default to none, and priorities stay.
    pub(super) async fn migrate_from_fifth(db: &TestDb) {
        testing::run_first_migrations(&db.url, 5).await;
        testing::execute_sql(
            &db.url,
            "INSERT INTO dags (name, description, version, hash, schedule, paused, created_at, updated_at) \
             VALUES ('old', 'from v5', 1, 'h', NULL, false, '2026-01-01 00:00:00', '2026-01-01 00:00:00'); \
             INSERT INTO jobs (dag_id, dag_version, status, \"trigger\", params, created_at, updated_at) \
             VALUES (1, 1, 'running', 'manual', '{}', '2026-01-01 00:00:01', '2026-01-01 00:00:01'); \
             INSERT INTO task_executions (job_id, task_id, status, attempt, fencing_token, queue, priority, created_at, updated_at) \
             VALUES (1, 'low', 'queued', 0, 2, 'default', 0, '2026-01-01 00:00:01', '2026-01-01 00:00:01'), \
                    (1, 'high', 'queued', 0, 3, 'default', 9, '2026-01-01 00:00:02', '2026-01-01 00:00:02')",
        )
        .await;
        let store = Store::open(Some(&db.url)).await.unwrap();
        let tasks = store
            .list_task_executions_for_job(cascade_store::JobId(1))
            .await
            .unwrap();
        let kept: Vec<(&str, i32, i64, usize)> = tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.priority, t.fencing_token, t.labels.len()))
            .collect();
        assert_eq!(kept, [("low", 0, 2, 0), ("high", 9, 3, 0)]);
        // The new column is written on the upgraded database.
        let old = store.get_dag_by_name("old").await.unwrap().unwrap();
        let created = store
            .create_job(new_job(
                old.id,
                vec![NewTask {
                    labels: vec!["gpu".to_owned()],
                    ..task("new", TaskStatus::Queued)
                }],
            ))
            .await
            .unwrap();
        let new_rows = store.list_task_executions_for_job(created.job.id).await.unwrap();
        assert_eq!(new_rows[0].labels, ["gpu"]);
        if store.backend() == Backend::Postgres {
            let now = Utc::now();
            let request = ClaimRequest {
                worker: "w".to_owned(),
                queues: vec!["default".to_owned()],
                dag_ids: vec![old.id],
                limit: 10,
                now,
                lease_until: now + Duration::seconds(30),
                labels: Vec::new(),
            };
            let claimed: Vec<String> = store
                .claim_tasks(&request)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.execution.task_id)
                .collect();
            assert_eq!(
                claimed,
                ["high", "low"],
                "old rows need no labels; the new one does"
            );
        }
    }

    /// From the schema before retry bases and worker roles (migration 7):
    /// existing tasks have no retry base, and a re-run on the upgraded
    /// database records one; existing workers are workers.
    pub(super) async fn migrate_from_seventh(db: &TestDb) {
        testing::run_first_migrations(&db.url, 7).await;
        testing::execute_sql(
            &db.url,
            "INSERT INTO dags (name, description, version, hash, schedule, paused, created_at, updated_at) \
             VALUES ('old', 'from v7', 1, 'h', NULL, false, '2026-01-01 00:00:00', '2026-01-01 00:00:00'); \
             INSERT INTO jobs (dag_id, dag_version, status, \"trigger\", params, created_at, updated_at) \
             VALUES (1, 1, 'failed', 'manual', '{}', '2026-01-01 00:00:01', '2026-01-01 00:00:01'); \
             INSERT INTO task_executions (job_id, task_id, status, attempt, fencing_token, queue, priority, created_at, updated_at) \
             VALUES (1, 'load', 'failed', 2, 4, 'default', 0, '2026-01-01 00:00:01', '2026-01-01 00:00:01'); \
             INSERT INTO workers (id, host, pid, queues, labels, capacity, version, started_at, last_heartbeat, state) \
             VALUES ('w-old', 'host-a', 7, '[\"default\"]', '[]', 4, '0.1.0', '2026-01-01 00:00:00', '2026-01-01 00:00:00', 'stopped')",
        )
        .await;
        let store = Store::open(Some(&db.url)).await.unwrap();
        let workers = store.list_workers().await.unwrap();
        assert_eq!(
            workers
                .iter()
                .map(|w| (w.id.as_str(), w.role))
                .collect::<Vec<_>>(),
            [("w-old", WorkerRole::Worker)]
        );
        let job = cascade_store::JobId(1);
        let before = &store.list_task_executions_for_job(job).await.unwrap()[0];
        assert_eq!((before.attempt, before.retry_base), (2, 0));
        let rerun = TaskTransition {
            changes: TaskChanges {
                retry_base: Some(2),
                ..TaskChanges::default()
            },
            ..cas(job, "load", TaskStatus::Failed, 4, TaskStatus::Pending)
        };
        assert!(store.transition_task(rerun).await.unwrap());
        let after = &store.list_task_executions_for_job(job).await.unwrap()[0];
        assert_eq!((after.status, after.retry_base), (TaskStatus::Pending, 2));
    }

    /// A stored label list that is not a JSON array of strings is reported,
    /// not guessed at; PostgreSQL refuses one that is not a JSON array at all.
    pub(super) async fn task_labels_corrupt(db: &TestDb) {
        let store = Store::open(Some(&db.url)).await.unwrap();
        let dag = store.upsert_dag(new_dag("corrupt", "h")).await.unwrap();
        let job = store
            .create_job(new_job(dag.id, vec![task("t", TaskStatus::Queued)]))
            .await
            .unwrap()
            .job;
        if store.backend() == Backend::Postgres {
            let url = db.url.clone();
            let refused = tokio::spawn(async move {
                testing::execute_sql(&url, "UPDATE task_executions SET labels = 'gpu'").await;
            })
            .await;
            assert!(refused.is_err(), "the CHECK constraint refuses non-JSON labels");
        } else {
            testing::execute_sql(&db.url, "UPDATE task_executions SET labels = 'gpu'").await;
            let err = store.list_task_executions_for_job(job.id).await.unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { column: "task_executions.labels", value } if value == "gpu"),
                "{err:?}"
            );
        }
        testing::execute_sql(&db.url, "UPDATE task_executions SET labels = '[1]'").await;
        let err = store.list_task_executions_for_job(job.id).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { column: "task_executions.labels", value } if value == "[1]"),
            "{err:?}"
        );
        if store.backend() == Backend::Postgres {
            let now = Utc::now();
            let request = ClaimRequest {
                worker: "w".to_owned(),
                queues: vec!["default".to_owned()],
                dag_ids: vec![dag.id],
                limit: 10,
                now,
                lease_until: now + Duration::seconds(30),
                labels: vec!["1".to_owned()],
            };
            assert!(
                store.claim_tasks(&request).await.unwrap().is_empty(),
                "a corrupt row is never claimed and does not fail the claim"
            );
        }
    }

    pub(super) async fn dedicated_connections_lost(db: &TestDb) {
        let store = Store::open(Some(&db.url)).await.unwrap();
        if store.backend() != Backend::Postgres {
            return;
        }
        let mut stream = store.listen(&["lost_probe"]).await.unwrap();
        let mut leader = store.try_lead(77).await.unwrap().unwrap();
        assert!(leader.is_held().await);
        testing::execute_sql(
            &db.url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND datname = current_database() \
             AND (query LIKE '%lost_probe%' OR query = 'SELECT 1')",
        )
        .await;
        let wait = std::time::Duration::from_secs(5);
        let first = tokio::time::timeout(wait, stream.next())
            .await
            .expect("the failure is reported")
            .expect("one item before the end");
        let err = first.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Database {
                    operation: "listen",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            tokio::time::timeout(wait, stream.next()).await.unwrap().is_none(),
            "then the stream ends"
        );
        assert!(!leader.is_held().await, "the leader notices its session is gone");
        drop(leader);
        // The server drops the lock once the terminated backend has exited,
        // which can trail the client's view of the lost session.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.try_lead(77).await.unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "and another may lead");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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
        job_ownership,
        dag_schedule_compare_and_set,
        job_rerun_clears_outcome,
        task_rerun_sets_retry_base,
        commit_transitions_5000,
        concurrent_batches_one_winner_per_row,
        workers_lifecycle,
        claim_tasks_filters,
        claim_tasks_by_labels,
        cancel_requests_are_stored_and_stop_claims,
        no_success_after_a_cancel_request,
        claim_tasks_priority_at_creation,
        claim_tasks_concurrent,
        requeue_expired,
        reap_records_lost_attempts_and_fails_after_max_lost,
        values_that_cannot_be_stored_are_refused,
        jobs_finish_only_when_their_tasks_have,
        job_transitions_are_fenced_by_owner,
        notify_and_listen,
        batch_notifications_ignored_on_sqlite,
        leader_election,
    ],
    db: [
        migrate_from_empty,
        migrate_from_first,
        migrate_from_previous,
        migrate_from_third,
        migrate_from_fifth,
        migrate_from_seventh,
        task_labels_corrupt,
        dedicated_connections_lost,
        schema_newer_than_code
    ]
);
