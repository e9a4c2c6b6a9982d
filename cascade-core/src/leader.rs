//! Leader election among the engines that share a PostgreSQL database: the
//! holder of an advisory lock fires cron ticks and runs the reaper, which
//! returns the tasks of dead workers (lapsed leases) to the queue — or fails
//! those lost more than `max_lost` times — and marks those workers lost. When the leader dies its connection closes, the lock
//! is freed, and another engine takes over at its next try.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::TaskStatus;
use crate::bridge::{self, DONE_CHANNEL, READY_CHANNEL};
use crate::engine::{Cascade, Inner};
use crate::events::{Event, TaskEvent, TaskEventKind, WorkerEvent, WorkerEventKind};
use crate::scheduler::RemoteTaskUpdate;

/// The advisory lock key of Cascade's leader (distinct from the migration lock).
const LEADER_LOCK: i64 = 0x6361_7363_6164_4c44;

/// Runs until `stop` fires or the engine is gone.
pub(crate) async fn run_leader(
    engine: Weak<Inner>,
    interval: Duration,
    worker_timeout: Duration,
    stop: CancellationToken,
) {
    let mut leadership = None;
    loop {
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let inner = cascade.inner();
        match &mut leadership {
            None => match cascade.raw_store().try_lead(LEADER_LOCK).await {
                Ok(Some(lead)) => {
                    tracing::info!(worker = %cascade.worker_id(), "became the leader: cron and the reaper run here");
                    leadership = Some(lead);
                    inner.is_leader.store(true, Ordering::SeqCst);
                    inner.cron_wakeup.notify_one();
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "leader election failed; retrying"),
            },
            Some(lead) => {
                if lead.is_held().await {
                    reap(&cascade, worker_timeout).await;
                } else {
                    tracing::warn!("lost the leader lock (connection closed); standing down");
                    inner.is_leader.store(false, Ordering::SeqCst);
                    leadership = None;
                }
            }
        }
        drop(cascade);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Returns tasks whose lease lapsed to the queue (failing those lost more
/// than `max_lost` times) and declares silent workers lost.
async fn reap(cascade: &Cascade, worker_timeout: Duration) {
    let now = Utc::now();
    let max_lost = cascade.inner().max_lost;
    match cascade.raw_store().reap_expired_tasks(now, 500, max_lost).await {
        Ok(rows) if !rows.is_empty() => {
            let mut batch = cascade_store::TransitionBatch::default();
            for row in &rows {
                let attempt = row.attempt;
                if row.status == TaskStatus::Failed {
                    tracing::error!(
                        job.id = %row.job_id, task.id = %row.task_id, lost_count = row.lost_count, max_lost,
                        "lease lapsed once too often: task failed"
                    );
                    // Its job's scheduler learns of it from the notification
                    // below (or its polling) and settles the job.
                    let dag_id = cascade.store().get_job(row.job_id).await.map(|job| job.dag_id);
                    if let Ok(dag_id) = dag_id {
                        cascade.publish(Event::Task(TaskEvent {
                            kind: TaskEventKind::Failed,
                            job_id: row.job_id,
                            dag_id,
                            task_id: row.task_id.clone(),
                            status: TaskStatus::Failed,
                            attempt,
                            error: row.error.clone(),
                            timestamp: now,
                        }));
                    }
                } else {
                    tracing::warn!(
                        job.id = %row.job_id, task.id = %row.task_id, lost_count = row.lost_count, status = %row.status,
                        "lease lapsed: task taken back (infrastructure loss, not an attempt)"
                    );
                }
                let update = RemoteTaskUpdate {
                    job_id: row.job_id,
                    task_id: row.task_id.clone(),
                    token: row.fencing_token,
                    attempt,
                    status: row.status,
                    error: row.error.clone().filter(|_| row.status == TaskStatus::Failed),
                    next_attempt_at: None,
                };
                batch.notifications.push(cascade_store::Notification {
                    channel: DONE_CHANNEL.to_owned(),
                    payload: bridge::done_payload(&update),
                    after_task: None,
                });
                if row.status == TaskStatus::Queued {
                    batch.notifications.push(cascade_store::Notification {
                        channel: READY_CHANNEL.to_owned(),
                        payload: row.queue.clone(),
                        after_task: None,
                    });
                }
            }
            if let Err(error) = cascade.raw_store().commit_transitions(&batch).await {
                tracing::warn!(%error, "could not announce re-queued tasks; workers find them by polling");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "reaper could not take back expired tasks"),
    }
    let stale_before =
        now - chrono::Duration::from_std(worker_timeout).unwrap_or(chrono::Duration::seconds(15));
    match cascade.raw_store().mark_lost_workers(stale_before).await {
        Ok(lost) => {
            for worker in lost {
                tracing::warn!(worker = %worker.id, last_heartbeat = %worker.last_heartbeat, "worker lost");
                cascade.publish(Event::Worker(WorkerEvent {
                    kind: WorkerEventKind::Lost,
                    worker: worker.id,
                    timestamp: now,
                }));
            }
        }
        Err(error) => tracing::warn!(%error, "could not check for lost workers"),
    }
}
