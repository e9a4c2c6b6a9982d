//! The lease keeper: renews this engine's claim on the jobs it runs and takes
//! over unfinished jobs whose owner stopped renewing (a process that died).

use std::sync::Weak;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Cascade, Inner};
use crate::scheduler::Command;

/// Runs until `stop` fires or the engine is gone.
pub(crate) async fn keep_leases(engine: Weak<Inner>, stop: CancellationToken) {
    // When the last renewal that reached the store was sent: the leases it
    // extended run from about then.
    let mut renewed_at = Instant::now();
    loop {
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let period = cascade.lease() / 3;
        let lease_until =
            Utc::now() + chrono::Duration::from_std(cascade.lease()).unwrap_or(chrono::Duration::seconds(30));
        // Exactly the jobs run here are renewed: a job this engine stopped
        // running (a commit it gave up) lapses and is taken over, and a job
        // whose renewal fails is another engine's now and stops here.
        let running = cascade.running_jobs();
        let sent_at = Instant::now();
        // A renewal that takes longer than the lease is as good as failed.
        let renewal = tokio::time::timeout(
            cascade.lease(),
            cascade
                .raw_store()
                .renew_leases_of_jobs(cascade.worker_id(), &running, lease_until),
        )
        .await
        .unwrap_or_else(|_| {
            Err(cascade_store::StoreError::Timeout {
                operation: "renew_leases_of_jobs",
                after: cascade.lease(),
            })
        });
        if renewal.is_ok() {
            renewed_at = sent_at;
        }
        match renewal {
            Err(error) if !running.is_empty() && renewed_at.elapsed() >= cascade.lease() => {
                // The leases have lapsed: another engine may be running these
                // jobs by now, so their attempts stop here; the store says
                // what was committed, and whoever owns the job goes on.
                tracing::error!(
                    %error, jobs = running.len(),
                    "could not renew job leases for longer than the lease; stopping this engine's attempts of them"
                );
                if cascade
                    .send_command(Command::Detach {
                        job_ids: running.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(renewed) if renewed.len() < running.len() => {
                let renewed: std::collections::HashSet<_> = renewed.into_iter().collect();
                let lost: Vec<_> = running
                    .iter()
                    .copied()
                    .filter(|id| !renewed.contains(id))
                    .collect();
                if cascade
                    .send_command(Command::Detach { job_ids: lost })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "could not renew job leases; other engines may take these jobs over")
            }
        }
        // A cancel request whose notification never arrived is found here.
        if !running.is_empty()
            && let Ok(requested) = cascade.raw_store().jobs_with_cancel_requests(&running).await
        {
            for job_id in requested {
                cascade.cancel_if_active(job_id).await;
            }
        }
        let dag_ids = cascade.registered_ids();
        if !dag_ids.is_empty() {
            match cascade.adopt_orphaned_jobs(&dag_ids, false).await {
                Ok(0) => {}
                Ok(adopted) => {
                    tracing::info!(adopted, "took over jobs whose owner stopped renewing its lease")
                }
                Err(error) => tracing::warn!(%error, "could not look for orphaned jobs"),
            }
        }
        drop(cascade);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}
