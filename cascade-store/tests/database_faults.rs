//! The store under database faults: a PostgreSQL server that restarts or
//! crashes, a network that goes silent. Each test runs its own throwaway
//! cluster, so restarting it disturbs nobody else.

use cascade_store::testing::{TcpProxy, ThrowawayCluster};
use cascade_store::{DagId, JobStatus, NewDag, NewJob, NewTask, Store, TaskStatus};
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
