//! Events: what happened to jobs, tasks and workers, published in-process
//! after the state they report is committed.

use std::pin::Pin;
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::{DagId, JobId, JobStatus, TaskStatus};

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobEventKind {
    /// The job was created (pending).
    Created,
    /// The job started running.
    Started,
    /// Every task finished and none failed.
    Succeeded,
    /// A task failed and nothing is running any more.
    Failed,
    /// Cancellation was requested.
    Cancelling,
    /// The job was cancelled.
    Cancelled,
}

/// What happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskEventKind {
    /// Ready, waiting for a runner.
    ///
    /// An all-in-one engine ([`Role::All`](crate::Role::All)) publishes it
    /// only for a ready task that has to wait because every runner is busy;
    /// a task that starts at once goes straight to [`Started`](Self::Started).
    /// With [`Role::Scheduler`](crate::Role::Scheduler), every ready task is
    /// queued in the store for the workers, so each attempt is `Queued` first.
    Queued,
    /// An attempt started.
    Started,
    /// The task succeeded.
    Succeeded,
    /// The task failed for good.
    Failed,
    /// The attempt failed; a retry is scheduled.
    RetryScheduled,
    /// A dependency failed, so the task will not run.
    UpstreamFailed,
    /// The task's trigger rule can no longer be met, or a dependency was skipped.
    Skipped,
    /// The task was cancelled.
    Cancelled,
}

/// What happened to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerEventKind {
    /// The worker started.
    Joined,
    /// The worker shut down.
    Left,
    /// The worker stopped heartbeating and was declared lost.
    Lost,
}

/// A job's state changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// What happened.
    pub kind: JobEventKind,
    /// The job.
    pub job_id: JobId,
    /// Its DAG.
    pub dag_id: DagId,
    /// The job's status after the event.
    pub status: JobStatus,
    /// The error, for failures.
    pub error: Option<String>,
    /// When the change was committed.
    pub timestamp: DateTime<Utc>,
}

/// A task's state changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    /// What happened.
    pub kind: TaskEventKind,
    /// The job.
    pub job_id: JobId,
    /// Its DAG.
    pub dag_id: DagId,
    /// The task id.
    pub task_id: String,
    /// The task's status after the event.
    pub status: TaskStatus,
    /// The attempt the event belongs to (0 before the first attempt).
    pub attempt: u32,
    /// The error, for failures and retries.
    pub error: Option<String>,
    /// When the change was committed.
    pub timestamp: DateTime<Utc>,
}

/// A worker joined, left or was lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerEvent {
    /// What happened.
    pub kind: WorkerEventKind,
    /// The worker's id.
    pub worker: String,
    /// When.
    pub timestamp: DateTime<Utc>,
}

/// An event, as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A job's state changed.
    Job(JobEvent),
    /// A task's state changed.
    Task(TaskEvent),
    /// A worker joined, left or was lost.
    Worker(WorkerEvent),
    /// This subscriber fell behind and some events were dropped for it (how
    /// many is in `missed`); read the store for the current state.
    Lagged {
        /// How many events were dropped for this subscriber.
        missed: u64,
    },
}

impl Event {
    /// The job the event is about, if any.
    pub fn job_id(&self) -> Option<JobId> {
        match self {
            Event::Job(e) => Some(e.job_id),
            Event::Task(e) => Some(e.job_id),
            Event::Worker(_) | Event::Lagged { .. } => None,
        }
    }

    /// The DAG the event is about, if any.
    pub fn dag_id(&self) -> Option<DagId> {
        match self {
            Event::Job(e) => Some(e.dag_id),
            Event::Task(e) => Some(e.dag_id),
            Event::Worker(_) | Event::Lagged { .. } => None,
        }
    }
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Topic {
    /// Everything.
    All,
    /// Events of one DAG's jobs and tasks.
    Dag(DagId),
    /// Events of one job and its tasks.
    Job(JobId),
    /// Worker events only.
    Workers,
}

impl Topic {
    fn matches(self, event: &Event) -> bool {
        match self {
            Topic::All => true,
            Topic::Dag(id) => event.dag_id() == Some(id),
            Topic::Job(id) => event.job_id() == Some(id),
            Topic::Workers => matches!(event, Event::Worker(_)),
        }
    }
}

/// The in-process event bus: a broadcast channel, so a slow subscriber never
/// blocks the engine; it loses the oldest events and is told so.
#[derive(Debug, Clone)]
pub(crate) struct EventBus {
    sender: broadcast::Sender<Event>,
    /// In distributed mode, events also go to the other nodes through here.
    outbox: Option<mpsc::UnboundedSender<Event>>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize, outbox: Option<mpsc::UnboundedSender<Event>>) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(16));
        EventBus { sender, outbox }
    }

    /// Publishes to local subscribers and, in distributed mode, to other nodes.
    pub(crate) fn publish(&self, event: Event) {
        if let Some(outbox) = &self.outbox
            && !matches!(event, Event::Lagged { .. })
        {
            let _ = outbox.send(event.clone());
        }
        self.publish_local(event);
    }

    /// Publishes to local subscribers only.
    pub(crate) fn publish_local(&self, event: Event) {
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    pub(crate) fn subscribe(&self, topic: Topic) -> EventStream {
        EventStream {
            inner: BroadcastStream::new(self.sender.subscribe()),
            topic,
        }
    }
}

/// A stream of the events of one [`Topic`], from [`Cascade::subscribe`].
///
/// Events arrive in the order they were committed. A subscriber that falls
/// behind by more than the bus capacity receives [`Event::Lagged`] and then
/// continues with the newest events.
///
/// [`Cascade::subscribe`]: crate::Cascade::subscribe
#[derive(Debug)]
pub struct EventStream {
    inner: BroadcastStream<Event>,
    topic: Topic,
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    if self.topic.matches(&event) {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    return Poll::Ready(Some(Event::Lagged { missed }));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
