//! The bridge between processes sharing a PostgreSQL database: one LISTEN
//! connection per engine turns notifications into wake-ups, task updates,
//! cancellations and events; a forwarder sends this engine's events out.
//!
//! Notifications are hints. Every consumer also polls, so a notification
//! lost while the listening connection was down delays work but loses none.

use std::sync::Weak;
use std::time::Duration;

use cascade_store::{Notification, TransitionBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::JobId;
use crate::engine::{Cascade, Inner, Role};
use crate::events::Event;
use crate::scheduler::{Command, RemoteTaskUpdate};

/// Tasks became `queued`; the payload is the queue. Wakes workers.
pub(crate) const READY_CHANNEL: &str = "cascade_ready";
/// A worker committed a claim or an outcome; the payload is a
/// [`RemoteTaskUpdate`] as JSON. Read by schedulers.
pub(crate) const DONE_CHANNEL: &str = "cascade_done";
/// A job is being cancelled; the payload is its id. Read by workers.
pub(crate) const CANCEL_CHANNEL: &str = "cascade_cancel";
/// A job needs an owner (created by a node that does not schedule); the
/// payload is its id. Read by schedulers.
pub(crate) const JOBS_CHANNEL: &str = "cascade_jobs";
/// Events, for subscribers on every node; the payload is a [`Shared`] event.
pub(crate) const EVENTS_CHANNEL: &str = "cascade_events";

/// PostgreSQL limits a notification payload to 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// An event as it travels between processes.
#[derive(Debug, Serialize, Deserialize)]
struct Shared {
    origin: String,
    event: Event,
}

/// Listens until `stop` fires or the engine is gone, reconnecting with backoff.
pub(crate) async fn run_listener(engine: Weak<Inner>, role: Role, stop: CancellationToken) {
    let mut channels = vec![EVENTS_CHANNEL, CANCEL_CHANNEL];
    if role != Role::Worker {
        channels.extend([DONE_CHANNEL, JOBS_CHANNEL]);
    }
    if role != Role::Scheduler {
        channels.push(READY_CHANNEL);
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let mut stream = match cascade.raw_store().listen(&channels).await {
            Ok(stream) => {
                backoff = Duration::from_millis(100);
                // Whatever was announced while we were not listening is found
                // by polling now.
                cascade.inner().worker_wakeup.notify_one();
                stream
            }
            Err(error) => {
                tracing::warn!(%error, ?backoff, "cannot listen for notifications; polling only until it works");
                drop(cascade);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        drop(cascade);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = stream.next() => next,
            };
            let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
                return;
            };
            match next {
                Some(Ok(notification)) => handle(&cascade, notification).await,
                Some(Err(error)) => {
                    tracing::warn!(%error, "notification connection lost; reconnecting");
                    break;
                }
                None => break,
            }
        }
    }
}

async fn handle(cascade: &Cascade, notification: Notification) {
    let inner = cascade.inner();
    match notification.channel.as_str() {
        READY_CHANNEL => inner.worker_wakeup.notify_one(),
        CANCEL_CHANNEL => {
            let Ok(job_id) = notification.payload.parse::<JobId>() else {
                return;
            };
            // A hint: only a cancel request stored in the job's row counts.
            match cascade.raw_store().jobs_with_cancel_requests(&[job_id]).await {
                Ok(requested) if requested.contains(&job_id) => {
                    // Workers stop the job's attempts; the job's scheduler, if
                    // it is this engine, cancels the job.
                    let _ = inner.worker_cancels.send(job_id);
                    if cascade.role() != Role::Worker {
                        cascade.cancel_if_active(job_id).await;
                    }
                }
                Ok(_) => {
                    tracing::warn!(job.id = %job_id, "cancel notification without a stored cancel request ignored")
                }
                Err(error) => {
                    tracing::warn!(%error, job.id = %job_id, "could not read a job's cancel request; workers check it at their next heartbeat")
                }
            }
        }
        // A hint: what the task's row says now is what counts, not the
        // payload, which any role that can connect may send.
        DONE_CHANNEL => match serde_json::from_str::<RemoteTaskUpdate>(&notification.payload) {
            Ok(hint) => match cascade
                .raw_store()
                .get_task_execution(hint.job_id, &hint.task_id)
                .await
            {
                Ok(Some(row)) => {
                    let _ = cascade
                        .send_command(Command::Remote(RemoteTaskUpdate::from_row(row)))
                        .await;
                }
                Ok(None) => {
                    tracing::warn!(job.id = %hint.job_id, task.id = %hint.task_id, "task update notification for no such task ignored")
                }
                Err(error) => {
                    tracing::warn!(%error, "could not read the task a notification names; the polling fallback finds its change")
                }
            },
            Err(error) => tracing::warn!(%error, "malformed task update notification ignored"),
        },
        JOBS_CHANNEL => {
            let dag_ids = cascade.registered_ids();
            if let Err(error) = cascade.adopt_orphaned_jobs(&dag_ids, false).await {
                tracing::warn!(%error, "could not take over a new job; the lease keeper retries");
            }
        }
        EVENTS_CHANNEL => match serde_json::from_str::<Shared>(&notification.payload) {
            Ok(shared) if shared.origin != cascade.worker_id() => inner.events_local(shared.event),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "malformed event notification ignored"),
        },
        other => tracing::debug!(channel = other, "notification on an unexpected channel"),
    }
}

/// Sends this engine's events to the other nodes, in order, in batches: one
/// transaction of `pg_notify` calls per batch. Once `stop` fires it sends
/// what is queued and returns.
pub(crate) async fn forward_events(
    engine: Weak<Inner>,
    mut outbox: mpsc::UnboundedReceiver<Event>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            first = outbox.recv() => first,
            () = stop.cancelled() => outbox.try_recv().ok(),
        };
        let Some(first) = first else {
            return;
        };
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let origin = cascade.worker_id().to_owned();
        let mut batch = TransitionBatch::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next.take() {
            taken += 1;
            let shared = Shared {
                origin: origin.clone(),
                event,
            };
            match serde_json::to_string(&shared) {
                Ok(payload) if payload.len() <= MAX_PAYLOAD => batch.notifications.push(Notification {
                    channel: EVENTS_CHANNEL.to_owned(),
                    payload,
                    after_task: None,
                }),
                Ok(_) => tracing::debug!("event too large for a notification; not shared"),
                Err(error) => tracing::warn!(%error, "event not serialisable; not shared"),
            }
            if taken < 1000 {
                next = outbox.try_recv().ok();
            }
        }
        if let Err(error) = cascade.raw_store().commit_transitions(&batch).await {
            tracing::warn!(%error, dropped = batch.notifications.len(), "could not share events with other nodes");
        }
    }
}

/// A task update as a notification payload, trimmed to fit.
pub(crate) fn done_payload(update: &RemoteTaskUpdate) -> String {
    let mut update = update.clone();
    if let Some(error) = &mut update.error
        && error.len() > 2000
    {
        let mut cut = 2000;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    serde_json::to_string(&update).unwrap_or_default()
}
