//! Leader election among the engines that share a PostgreSQL database: the
//! holder of an advisory lock fires cron ticks and runs the reaper, which
//! returns the tasks of dead workers (lapsed leases) to the queue and marks
//! those workers lost. When the leader dies its connection closes, the lock
//! is freed, and another engine takes over at its next try.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, DONE_CHANNEL, READY_CHANNEL};
use crate::engine::{Cascade, Inner};
use crate::events::{Event, WorkerEvent, WorkerEventKind};
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

/// Returns tasks whose lease lapsed to the queue and declares silent workers lost.
async fn reap(cascade: &Cascade, worker_timeout: Duration) {
    let now = Utc::now();
    match cascade.raw_store().requeue_expired_tasks(now, 500).await {
        Ok(rows) if !rows.is_empty() => {
            let mut batch = cascade_store::TransitionBatch::default();
            for row in &rows {
                tracing::warn!(
                    job.id = %row.job_id, task.id = %row.task_id, lost_count = row.lost_count,
                    "lease lapsed: task returned to the queue (infrastructure loss, not an attempt)"
                );
                let update = RemoteTaskUpdate {
                    job_id: row.job_id,
                    task_id: row.task_id.clone(),
                    token: row.fencing_token,
                    attempt: row.attempt,
                    status: row.status,
                    error: None,
                    next_attempt_at: None,
                };
                batch.notifications.push(cascade_store::Notification {
                    channel: DONE_CHANNEL.to_owned(),
                    payload: bridge::done_payload(&update),
                });
                batch.notifications.push(cascade_store::Notification {
                    channel: READY_CHANNEL.to_owned(),
                    payload: row.queue.clone(),
                });
            }
            if let Err(error) = cascade.raw_store().commit_transitions(&batch).await {
                tracing::warn!(%error, "could not announce re-queued tasks; workers find them by polling");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "reaper could not re-queue expired tasks"),
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
