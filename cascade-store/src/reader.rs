//! A read-only view of a [`Store`]: what applications query.

use crate::error::Result;
use crate::ids::{DagId, JobId};
use crate::model::{
    DagRecord, DagVersion, Job, JobDetails, JobFilter, TaskAttempt, TaskExecution, WorkerRecord,
};
use crate::store::{Backend, Store};

/// The read verbs of a [`Store`], and nothing that changes state: what an
/// engine hands its users for queries (DAGs, jobs, task executions,
/// attempts, workers). Every state change goes through the engine, which
/// commits it with the fencing and ordering the engine needs.
///
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreReader {
    store: Store,
}

impl From<Store> for StoreReader {
    fn from(store: Store) -> Self {
        StoreReader { store }
    }
}

impl StoreReader {
    /// Which database this reads.
    pub fn backend(&self) -> Backend {
        self.store.backend()
    }

    /// The database URL, password masked.
    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// See [`Store::list_dags`].
    pub async fn list_dags(&self) -> Result<Vec<DagRecord>> {
        self.store.list_dags().await
    }

    /// See [`Store::get_dag`].
    pub async fn get_dag(&self, dag_id: DagId) -> Result<DagRecord> {
        self.store.get_dag(dag_id).await
    }

    /// See [`Store::get_dag_by_name`].
    pub async fn get_dag_by_name(&self, name: &str) -> Result<Option<DagRecord>> {
        self.store.get_dag_by_name(name).await
    }

    /// See [`Store::get_dag_version`].
    pub async fn get_dag_version(&self, dag_id: DagId, version: i32) -> Result<DagVersion> {
        self.store.get_dag_version(dag_id, version).await
    }

    /// See [`Store::get_job`].
    pub async fn get_job(&self, job_id: JobId) -> Result<Job> {
        self.store.get_job(job_id).await
    }

    /// See [`Store::get_job_with_details`].
    pub async fn get_job_with_details(&self, job_id: JobId) -> Result<JobDetails> {
        self.store.get_job_with_details(job_id).await
    }

    /// See [`Store::list_jobs`].
    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>> {
        self.store.list_jobs(filter).await
    }

    /// See [`Store::list_unfinished_jobs`].
    pub async fn list_unfinished_jobs(&self, dag_ids: Option<&[DagId]>, limit: i64) -> Result<Vec<Job>> {
        self.store.list_unfinished_jobs(dag_ids, None, limit).await
    }

    /// See [`Store::list_task_executions_for_job`].
    pub async fn list_task_executions_for_job(&self, job_id: JobId) -> Result<Vec<TaskExecution>> {
        self.store.list_task_executions_for_job(job_id).await
    }

    /// See [`Store::list_task_attempts`].
    pub async fn list_task_attempts(&self, job_id: JobId, task_id: &str) -> Result<Vec<TaskAttempt>> {
        self.store.list_task_attempts(job_id, task_id).await
    }

    /// See [`Store::list_workers`].
    pub async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.store.list_workers().await
    }
}
