//! The harness's own engine: a worker of a queue no task uses, connected to
//! the cluster directly (not through a proxy, so that cutting a node off
//! does not cut the driver). It triggers jobs, cancels some, re-runs some
//! failed ones, and reads the store at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cascade_core::{Cascade, DagId, Error, ErrorKind, Job, JobFilter, JobId, JobStatus, Role, StoreError};
use cascade_core::{TaskAttempt, TaskExecution};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::dags::{self, NodeEnv};
use crate::ledger::Ledger;
use crate::rng::Rng;

/// Jobs kept unfinished at once while the run lasts.
const IN_FLIGHT: usize = 6;
/// How often a job may be re-run.
const MAX_RERUNS: u32 = 2;

#[derive(Debug)]
struct Tracked {
    id: JobId,
    status: JobStatus,
    reruns: u32,
}

/// Triggers and steers the run's jobs.
#[derive(Debug)]
pub(crate) struct Driver {
    cascade: Cascade,
    dags: Vec<(DagId, String)>,
    ledger: Arc<Ledger>,
    rng: Rng,
    jobs: Vec<Tracked>,
    triggered: u64,
    actions: JoinSet<()>,
}

impl Driver {
    pub(crate) async fn start(url: &str, seed: u64, ledger: Arc<Ledger>) -> Result<Driver, String> {
        let cascade = Cascade::builder()
            .database_url(url)
            .role(Role::Worker)
            .queues(["chaos-driver-only"])
            .capacity(1)
            .lease_duration(crate::LEASE)
            .heartbeat_interval(crate::HEARTBEAT)
            .poll_interval(crate::POLL)
            .build()
            .await
            .map_err(|e| format!("driver engine: {e}"))?;
        let env = Arc::new(NodeEnv::new(
            "driver".to_owned(),
            seed,
            Ledger::open(ledger.path()).map_err(|e| e.to_string())?,
        ));
        let mut dag_ids = Vec::new();
        for dag in dags::dag_set(seed, &env) {
            let name = dag.name().to_owned();
            let record = cascade
                .register_dag(dag)
                .await
                .map_err(|e| format!("registering {name}: {e}"))?;
            dag_ids.push((record.id, name));
        }
        Ok(Driver {
            cascade,
            dags: dag_ids,
            ledger,
            rng: Rng::for_parts(seed, &["driver"]),
            jobs: Vec::new(),
            triggered: 0,
            actions: JoinSet::new(),
        })
    }

    /// Keeps [`IN_FLIGHT`] jobs going until `until`, cancelling and
    /// re-running some on the way.
    pub(crate) async fn run(&mut self, until: Instant) {
        let mut last_refresh = Instant::now();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            while self.actions.try_join_next().is_some() {}
            if last_refresh.elapsed() >= Duration::from_secs(1) {
                self.refresh().await;
                last_refresh = Instant::now();
            }
            let unfinished = self.jobs.iter().filter(|j| !j.status.is_terminal()).count();
            if unfinished < IN_FLIGHT {
                self.trigger().await;
            }
            if self.actions.len() < 4 && self.rng.chance(0.03) {
                self.cancel_one();
            }
            if self.actions.len() < 4 && self.rng.chance(0.06) {
                self.rerun_one();
            }
        }
    }

    async fn trigger(&mut self) {
        let (dag_id, name) = self.rng.pick(&self.dags).clone();
        // The key makes a trigger whose answer was lost safe to repeat: the
        // next call with it returns the same job.
        let key = format!("chaos-{}", self.triggered);
        match self
            .cascade
            .trigger_job_with_key(dag_id, "chaos", json!({ "n": self.triggered }), &key)
            .await
        {
            Ok(job) => {
                self.ledger
                    .write("trigger", &[("job", &job.id), ("dag", &name), ("key", &key)]);
                self.jobs.push(Tracked {
                    id: job.id,
                    status: job.status,
                    reruns: 0,
                });
                self.triggered += 1;
            }
            Err(error) => eprintln!("chaos: trigger failed (tried again): {error}"),
        }
    }

    async fn refresh(&mut self) {
        for tracked in &mut self.jobs {
            if tracked.status.is_terminal() && tracked.status != JobStatus::Failed {
                continue;
            }
            if let Ok(job) = self.cascade.store().get_job(tracked.id).await {
                tracked.status = job.status;
            }
        }
    }

    fn cancel_one(&mut self) {
        let unfinished: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|j| !j.status.is_terminal())
            .map(|j| j.id)
            .collect();
        if unfinished.is_empty() {
            return;
        }
        let job_id = *self.rng.pick(&unfinished);
        let (cascade, ledger) = (self.cascade.clone(), Arc::clone(&self.ledger));
        self.actions.spawn(async move {
            let result = match cascade.cancel_job(job_id).await {
                Ok(()) => "ok".to_owned(),
                Err(Error::JobAlreadyFinished { status, .. }) => format!("already_{status}"),
                Err(error) => format!("error:{}", error_kind(&error)),
            };
            ledger.write("cancel", &[("job", &job_id), ("result", &result)]);
        });
    }

    fn rerun_one(&mut self) {
        let failed: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.jobs[i].status == JobStatus::Failed && self.jobs[i].reruns < MAX_RERUNS)
            .collect();
        if failed.is_empty() {
            return;
        }
        let index = *self.rng.pick(&failed);
        let tracked = &mut self.jobs[index];
        tracked.reruns += 1;
        // Running again as far as the driver knows, until the next refresh.
        tracked.status = JobStatus::Running;
        let job_id = tracked.id;
        let (cascade, ledger) = (self.cascade.clone(), Arc::clone(&self.ledger));
        self.actions.spawn(async move {
            // Written before the call, so that a callback of the new run
            // never precedes it in the ledger.
            ledger.write("rerun", &[("job", &job_id), ("result", &"requested")]);
            let result = match cascade.retry_job(job_id).await {
                Ok(_) => "ok".to_owned(),
                Err(Error::JobNotFailed { status, .. }) => format!("refused_{status}"),
                // The re-run may or may not have been committed.
                Err(error) => format!("unknown:{}", error_kind(&error)),
            };
            ledger.write("rerun", &[("job", &job_id), ("result", &result)]);
        });
    }

    /// Waits (up to `timeout`) for the driver's own calls and for every job
    /// in the store to end. Returns the jobs still unfinished.
    pub(crate) async fn drain(&mut self, timeout: Duration) -> Vec<JobId> {
        let deadline = Instant::now() + timeout;
        while !self.actions.is_empty() && Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, self.actions.join_next()).await;
        }
        loop {
            let unfinished: Vec<JobId> = match self.all_jobs().await {
                Ok(jobs) => jobs
                    .into_iter()
                    .filter(|j| !j.status.is_terminal())
                    .map(|j| j.id)
                    .collect(),
                Err(error) => {
                    eprintln!("chaos: reading jobs: {error}");
                    Vec::new()
                }
            };
            if unfinished.is_empty() || Instant::now() >= deadline {
                return unfinished;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn all_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let store = self.cascade.store();
        let mut jobs = Vec::new();
        loop {
            let offset = jobs.len() as i64;
            let page = retry(move || {
                store.list_jobs(JobFilter {
                    limit: 500,
                    offset,
                    ..JobFilter::default()
                })
            })
            .await?;
            let done = page.len() < 500;
            jobs.extend(page);
            if done {
                return Ok(jobs);
            }
        }
    }

    /// Everything the checks need from the store.
    pub(crate) async fn collect(&self) -> Result<Vec<JobData>, StoreError> {
        let store = self.cascade.store();
        let mut data = Vec::new();
        for job in self.all_jobs().await? {
            let job_id = job.id;
            let tasks = retry(move || store.list_task_executions_for_job(job_id)).await?;
            let mut attempts = BTreeMap::new();
            for task in &tasks {
                let task_id = task.task_id.as_str();
                let rows = retry(move || store.list_task_attempts(job_id, task_id)).await?;
                attempts.insert(task.task_id.clone(), rows);
            }
            data.push(JobData { job, tasks, attempts });
        }
        Ok(data)
    }

    pub(crate) async fn shutdown(self) {
        if let Err(error) = self.cascade.shutdown().await {
            eprintln!("chaos: driver shutdown: {error}");
        }
    }
}

/// One job as stored at the end of the run.
#[derive(Debug)]
pub(crate) struct JobData {
    pub(crate) job: Job,
    pub(crate) tasks: Vec<TaskExecution>,
    /// Attempt rows per task id.
    pub(crate) attempts: BTreeMap<String, Vec<TaskAttempt>>,
}

/// Runs a store read again on a transient error, a few times.
async fn retry<T, F, Fut>(mut read: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut tries = 0;
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(error) if tries < 10 && error.kind() != ErrorKind::NotFound => {
                tries += 1;
                eprintln!("chaos: store read failed, trying again: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

fn error_kind(error: &Error) -> String {
    match error {
        Error::Store(store) => format!("store_{:?}", store.kind()).to_lowercase(),
        other => format!("{other}")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join("_"),
    }
}
