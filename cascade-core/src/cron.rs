//! The cron loop: fires jobs of scheduled DAGs at their ticks (UTC).
//!
//! Each tick is triggered with the idempotency key `cron:<unix seconds>`, so
//! however many engines share the database, a tick creates one job. The next
//! fire time is persisted and advanced with a compare-and-set; an engine that
//! crashes between firing and advancing fires the same tick again on restart,
//! which the key turns into the existing job: no tick is lost or doubled.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::engine::{Cascade, Inner};
use crate::scheduler::RegisteredDag;

/// Longest sleep between checks, so that pauses and schedule changes made by
/// other processes are seen.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Most ticks backfilled in one round for a DAG with `catchup: true`.
const MAX_CATCHUP: usize = 1000;
/// With catch-up off, only ticks this recent are searched for the latest.
const LATEST_TICK_WINDOW: i64 = 7 * 24 * 3600;

/// Runs until `stop` fires or the engine is gone.
pub(crate) async fn run_cron(engine: Weak<Inner>, stop: CancellationToken) {
    loop {
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let mut sleep = MAX_SLEEP;
        // With several engines on PostgreSQL only the leader fires ticks; the
        // idempotency key keeps a tick single even during a hand-over.
        let dags = if cascade.is_leader() {
            cascade.scheduled_dags()
        } else {
            Vec::new()
        };
        for dag in dags {
            match fire_due(&cascade, &dag).await {
                Ok(Some(next)) => {
                    let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    sleep = sleep.min(wait);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(dag = %dag.name, %error, "cron: could not fire or advance the schedule; retrying");
                    sleep = sleep.min(Duration::from_secs(1));
                }
            }
        }
        let wakeup = Arc::clone(cascade.inner());
        drop(cascade);
        tokio::select! {
            () = stop.cancelled() => return,
            () = wakeup.cron_wakeup.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

fn at(seconds: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(seconds, 0).single()
}

/// Fires the due ticks of one DAG; returns when it is next due.
async fn fire_due(cascade: &Cascade, dag: &Arc<RegisteredDag>) -> crate::Result<Option<DateTime<Utc>>> {
    let Some(schedule) = dag.plan.schedule() else {
        return Ok(None);
    };
    let record = cascade.raw_store().get_dag(dag.record.id).await?;
    if record.paused {
        return Ok(None);
    }
    let now = Utc::now();
    let now_s = now.timestamp();
    let Some(due) = record.next_fire_at else {
        // First time: the next tick from now; nothing in the past fires.
        let next = schedule.next_after(now_s).and_then(at);
        cascade
            .raw_store()
            .advance_dag_schedule(record.id, None, None, next)
            .await?;
        return Ok(next);
    };
    if due > now {
        return Ok(Some(due));
    }
    let ticks: Vec<i64> = if dag.plan.ir().catchup {
        let mut ticks = vec![due.timestamp()];
        while ticks.len() < MAX_CATCHUP {
            match schedule.next_after(ticks[ticks.len() - 1]) {
                Some(tick) if tick <= now_s => ticks.push(tick),
                _ => break,
            }
        }
        ticks
    } else {
        // Only the latest tick that is due.
        let mut latest = due.timestamp();
        let mut cursor = latest.max(now_s - LATEST_TICK_WINDOW) - 1;
        while let Some(tick) = schedule.next_after(cursor) {
            if tick > now_s {
                break;
            }
            latest = tick;
            cursor = tick;
        }
        vec![latest]
    };
    for &tick in &ticks {
        let scheduled_for = at(tick).map(|t| t.to_rfc3339()).unwrap_or_default();
        let job = cascade
            .trigger(
                record.id,
                "cron",
                json!({ "scheduled_for": scheduled_for }),
                Some(format!("cron:{tick}")),
            )
            .await?;
        tracing::info!(dag = %dag.name, job.id = %job.id, %scheduled_for, "cron tick fired");
    }
    let last = ticks[ticks.len() - 1];
    let next = schedule
        .next_after(if dag.plan.ir().catchup {
            last
        } else {
            now_s.max(last)
        })
        .and_then(at);
    let advanced = cascade
        .raw_store()
        .advance_dag_schedule(record.id, Some(due), at(last), next)
        .await?;
    if !advanced {
        tracing::debug!(dag = %dag.name, "cron: another engine advanced this schedule first");
    }
    Ok(next)
}
