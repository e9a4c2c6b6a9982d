//! The store under database faults: a PostgreSQL server that restarts or
//! crashes, a network that goes silent. Each test runs its own throwaway
//! cluster, so restarting it disturbs nobody else.

use std::time::{Duration, Instant};

use cascade_store::testing::{self, TcpProxy, ThrowawayCluster};
use cascade_store::{
    DagId, ErrorKind, Job, JobId, JobStatus, JobTransition, NewDag, NewJob, NewTask, Store, StoreError,
    StoreOptions, TaskStatus,
};
use chrono::Utc;
use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::json;

fn new_dag(name: &str) -> NewDag {
    NewDag {
        name: name.to_owned(),
        description: String::new(),
        schedule: None,
        definition: r#"{"ir_version":1}"#.to_owned(),
        hash: format!("hash-{name}"),
    }
}

fn new_job(dag_id: DagId, key: &str) -> NewJob {
    NewJob {
        dag_id,
        dag_version: 1,
        status: JobStatus::Pending,
        trigger: "manual".to_owned(),
        params: json!({}),
        idempotency_key: Some(key.to_owned()),
        owner: None,
        lease_expires_at: None,
        tasks: vec![NewTask {
            task_id: "only".to_owned(),
            queue: "default".to_owned(),
            status: TaskStatus::Pending,
            attempt: 0,
            fencing_token: 0,
            started_at: None,
            priority: 0,
            labels: Vec::new(),
        }],
    }
}

fn start_job(job_id: JobId) -> JobTransition {
    JobTransition {
        job_id,
        from: JobStatus::Pending,
        to: JobStatus::Running,
        error: None,
        at: Utc::now(),
        owner: None,
    }
}

/// A store with one DAG and one pending job.
async fn store_with_job(url: &str, options: StoreOptions) -> (Store, Job) {
    let store = Store::open_with(Some(url), options).await.unwrap();
    let dag = store.upsert_dag(new_dag("etl")).await.unwrap();
    let job = store.create_job(new_job(dag.id, "first")).await.unwrap().job;
    (store, job)
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.unwrap()
}

#[derive(diesel::QueryableByName)]
struct Waiter {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// The backends of this database waiting for a lock.
async fn lock_waiters(monitor: &mut AsyncPgConnection) -> Vec<i32> {
    diesel::sql_query(
        "SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' ORDER BY pid",
    )
    .load::<Waiter>(monitor)
    .await
    .unwrap()
    .into_iter()
    .map(|waiter| waiter.pid)
    .collect()
}

/// Waits (up to 30 s) until exactly one backend of the database waits for a
/// lock, other than `not`; returns its pid.
async fn one_lock_waiter(monitor: &mut AsyncPgConnection, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiters = lock_waiters(monitor).await;
        if let [pid] = waiters[..]
            && Some(pid) != not
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no single new lock waiter: {waiters:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn terminate(monitor: &mut AsyncPgConnection, pid: i32) {
    #[derive(diesel::QueryableByName)]
    struct Terminated {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        terminated: bool,
    }
    let done: Terminated = diesel::sql_query("SELECT pg_terminate_backend($1) AS terminated")
        .bind::<Integer, _>(pid)
        .get_result(monitor)
        .await
        .unwrap();
    assert!(done.terminated);
}

/// After the server restarts, in either shutdown mode, the same store reads
/// and writes again, and nothing committed before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_works_after_a_server_restart() {
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let store = Store::open(Some(&cluster.url())).await.unwrap();
    let dag = store.upsert_dag(new_dag("before")).await.unwrap();
    let job = store.create_job(new_job(dag.id, "before")).await.unwrap().job;

    for (round, mode) in ["fast", "immediate"].into_iter().enumerate() {
        cluster.restart(mode).await;

        assert_eq!(
            store.get_job(job.id).await.unwrap(),
            job,
            "after a {mode} restart"
        );
        let names: Vec<String> = store
            .list_dags()
            .await
            .unwrap()
            .into_iter()
            .map(|dag| dag.name)
            .collect();
        assert_eq!(names.len(), round + 1, "after a {mode} restart: {names:?}");
        let added = store.upsert_dag(new_dag(&format!("after-{mode}"))).await.unwrap();
        assert_eq!(added.version, 1);
        let created = store
            .create_job(new_job(added.id, &format!("after-{mode}")))
            .await
            .unwrap();
        assert!(created.created);
        assert_eq!(
            store
                .list_task_executions_for_job(created.job.id)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

/// A store reaches the server through a [`TcpProxy`] like through the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_works_through_a_proxy() {
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let proxy = TcpProxy::start(cluster.addr()).await;
    let url = proxy.url_through(&cluster.url());
    assert_eq!(url, format!("postgres://root@{}/postgres", proxy.addr()));
    let store = Store::open(Some(&url)).await.unwrap();
    let dag = store.upsert_dag(new_dag("proxied")).await.unwrap();
    assert_eq!(store.get_dag(dag.id).await.unwrap(), dag);
}

/// A write that is waiting in the server when the server crashes fails with
/// a transient error, and had no effect; the store works once the server is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_flight_during_a_crash_fails_transiently() {
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let (store, job) = store_with_job(&cluster.url(), StoreOptions::default()).await;
    let mut holder = connect(&cluster.url()).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM cascade.jobs WHERE id = {} FOR UPDATE",
            job.id.0
        ))
        .await
        .unwrap();
    let write = tokio::spawn({
        let store = store.clone();
        async move { store.transition_job(start_job(job.id)).await }
    });
    one_lock_waiter(&mut connect(&cluster.url()).await, None).await;

    cluster.restart("immediate").await;

    let error = write.await.unwrap().unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(
        matches!(
            error,
            StoreError::Database {
                operation: "transition_job",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(store.get_job(job.id).await.unwrap().status, JobStatus::Pending);
    assert!(store.transition_job(start_job(job.id)).await.unwrap());
    assert_eq!(store.get_job(job.id).await.unwrap().status, JobStatus::Running);
}

/// A read whose connection is killed under it is tried again on a new
/// connection and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_survives_its_connection_being_terminated() {
    let Some(db) = testing::postgres_url().await else {
        return;
    };
    let (store, job) = store_with_job(&db.url, StoreOptions::default()).await;
    let mut holder = connect(&db.url).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE cascade.jobs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let read = tokio::spawn({
        let store = store.clone();
        async move { store.get_job(job.id).await }
    });
    let mut monitor = connect(&db.url).await;
    let first = one_lock_waiter(&mut monitor, None).await;
    terminate(&mut monitor, first).await;
    // The retry waits for the lock again, on another backend.
    one_lock_waiter(&mut monitor, Some(first)).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(read.await.unwrap().unwrap(), job);
}

/// A write whose connection is killed under it is not tried again (it might
/// have committed): the caller gets a transient error and decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_is_not_retried_when_its_connection_is_terminated() {
    let Some(db) = testing::postgres_url().await else {
        return;
    };
    let (store, job) = store_with_job(&db.url, StoreOptions::default()).await;
    let mut holder = connect(&db.url).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE cascade.jobs IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let write = tokio::spawn({
        let store = store.clone();
        async move { store.transition_job(start_job(job.id)).await }
    });
    let mut monitor = connect(&db.url).await;
    let first = one_lock_waiter(&mut monitor, None).await;
    terminate(&mut monitor, first).await;
    let error = write.await.unwrap().unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert!(lock_waiters(&mut monitor).await.is_empty(), "the write ran again");
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(store.get_job(job.id).await.unwrap().status, JobStatus::Pending);
}

/// PostgreSQL connections run with the configured `statement_timeout`: a
/// statement stuck behind a lock is cancelled by the server, before the
/// client's own deadline, with a transient error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cancels_a_statement_after_statement_timeout() {
    let Some(db) = testing::postgres_url().await else {
        return;
    };
    // The client's deadline is 6 s: 3 s of margin for a busy machine.
    let options = StoreOptions {
        statement_timeout: Duration::from_secs(3),
        ..StoreOptions::default()
    };
    let (store, job) = store_with_job(&db.url, options).await;
    let mut holder = connect(&db.url).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM cascade.jobs WHERE id = {} FOR UPDATE",
            job.id.0
        ))
        .await
        .unwrap();
    let error = store.transition_job(start_job(job.id)).await.unwrap_err();
    let StoreError::Database { operation, source } = &error else {
        panic!("expected the server's cancellation, got {error:?}");
    };
    assert_eq!(*operation, "transition_job");
    assert!(source.to_string().contains("statement timeout"), "{source}");
    assert!(error.is_transient());
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert!(store.transition_job(start_job(job.id)).await.unwrap());
}

/// When the network goes silent (no reset, no answer), every call fails with
/// `Timeout` once its deadline passes instead of hanging; once the network
/// heals, calls succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_time_out_while_the_network_is_cut() {
    let Some(cluster) = ThrowawayCluster::start().await else {
        return;
    };
    let proxy = TcpProxy::start(cluster.addr()).await;
    let options = StoreOptions {
        statement_timeout: Duration::from_secs(1),
        ..StoreOptions::default()
    };
    let (store, job) = store_with_job(&proxy.url_through(&cluster.url()), options).await;
    // Two calls at once, so that the pool holds more than one connection.
    let (a, b) = tokio::join!(store.get_job(job.id), store.list_dags());
    a.unwrap();
    b.unwrap();

    proxy.cut();
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let read = store.get_job(job.id).await.unwrap_err();
    assert!(
        matches!(read, StoreError::Timeout { operation: "get_job", after } if after == deadline),
        "{read:?}"
    );
    assert!(read.is_transient());
    assert_eq!(read.kind(), ErrorKind::Unavailable);
    let write = store.transition_job(start_job(job.id)).await.unwrap_err();
    assert!(
        matches!(
            write,
            StoreError::Timeout {
                operation: "transition_job",
                ..
            }
        ),
        "{write:?}"
    );
    // Several concurrent calls: some need a new connection, which cannot be
    // made either.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.list_dags().await })
        })
        .collect();
    for call in calls {
        let error = call.await.unwrap().unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Timeout {
                    operation: "list_dags",
                    ..
                }
            ),
            "{error:?}"
        );
    }
    // Bounded: a hang would never get here. The limit is generous on purpose.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    proxy.restore();
    assert_eq!(store.get_job(job.id).await.unwrap(), job);
    // A write may still meet a connection that died in the cut; it fails
    // transiently and is not retried by the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.transition_job(start_job(job.id)).await {
            Ok(won) => {
                assert!(won);
                break;
            }
            Err(error) => {
                assert!(error.is_transient(), "{error:?}");
                assert!(Instant::now() < deadline, "writes still fail: {error:?}");
            }
        }
    }
    assert_eq!(store.get_job(job.id).await.unwrap().status, JobStatus::Running);
}

/// On SQLite, a write blocked by another process's lock beyond the busy
/// timeout fails with a transient error; reads go on (WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_is_transient() {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;

    let db = testing::sqlite_url();
    let options = StoreOptions {
        busy_timeout: Duration::from_millis(100),
        ..StoreOptions::default()
    };
    let (store, job) = store_with_job(&db.url, options).await;
    let path = db.url.strip_prefix("sqlite://").unwrap();
    let mut other = diesel::SqliteConnection::establish(path).unwrap();
    other.batch_execute("BEGIN EXCLUSIVE").unwrap();

    let error = store.transition_job(start_job(job.id)).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(
        std::error::Error::source(&error)
            .unwrap()
            .to_string()
            .contains("locked"),
        "{error:?}"
    );
    assert_eq!(store.get_job(job.id).await.unwrap(), job);

    other.batch_execute("ROLLBACK").unwrap();
    assert!(store.transition_job(start_job(job.id)).await.unwrap());
}
