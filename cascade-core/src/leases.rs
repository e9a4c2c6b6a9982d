//! The lease keeper: renews this engine's claim on the jobs it runs and takes
//! over unfinished jobs whose owner stopped renewing (a process that died).

use std::sync::Weak;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::engine::{Cascade, Inner};

/// Runs until `stop` fires or the engine is gone.
pub(crate) async fn keep_leases(engine: Weak<Inner>, stop: CancellationToken) {
    loop {
        let Some(cascade) = engine.upgrade().map(Cascade::from_inner) else {
            return;
        };
        let period = cascade.lease() / 3;
        let lease_until =
            Utc::now() + chrono::Duration::from_std(cascade.lease()).unwrap_or(chrono::Duration::seconds(30));
        if let Err(error) = cascade
            .raw_store()
            .renew_job_leases(cascade.worker_id(), lease_until)
            .await
        {
            tracing::warn!(%error, "could not renew job leases; other engines may take these jobs over");
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
