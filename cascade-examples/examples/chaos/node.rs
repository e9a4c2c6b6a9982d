//! An engine process of the run (`chaos __node ROLE NODE URL LEDGER SEED`):
//! builds a Cascade engine in its role, registers the run's DAGs, records
//! `ready` in the ledger and runs until it is killed. It also records its
//! own stalls: any gap of more than [`STALL_MS`] in a 100 ms ticker (a
//! SIGSTOP, or a machine too busy to run it) becomes a `stall` line. It
//! exits when the harness that started it is gone, so that an interrupted
//! run leaves no engine behind.

use std::sync::Arc;
use std::time::Duration;

use cascade_core::{Cascade, Role};

use crate::dags::{self, NodeEnv};
use crate::ledger::{Ledger, now_ms};
use crate::{CANCEL_GRACE, HEARTBEAT, LEASE, POLL, RUNNERS};

/// A ticker gap longer than this is recorded as a stall.
pub(crate) const STALL_MS: u64 = 700;

/// The process's entry point; `args` are the words after `__node`.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let [role, node, url, ledger, seed] = args else {
        return Err("usage: chaos __node ROLE NODE URL LEDGER SEED".to_owned());
    };
    let role = match role.as_str() {
        "all" => Role::All,
        "scheduler" => Role::Scheduler,
        "worker" => Role::Worker,
        other => return Err(format!("unknown role `{other}`")),
    };
    let seed: u64 = seed.parse().map_err(|e| format!("seed `{seed}`: {e}"))?;
    let ledger = Ledger::open(std::path::Path::new(ledger)).map_err(|e| format!("ledger {ledger}: {e}"))?;
    let env = Arc::new(NodeEnv::new(node.clone(), seed, ledger));
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(serve(role, url, env))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(role: Role, url: &str, env: Arc<NodeEnv>) -> Result<(), String> {
    tokio::spawn(watch_self(Arc::clone(&env)));
    // The database may be restarting or cut off when this process starts:
    // try until it answers (the harness kills a process it no longer needs).
    let cascade = loop {
        let mut builder = Cascade::builder()
            .database_url(url)
            .role(role)
            .lease_duration(LEASE)
            .heartbeat_interval(HEARTBEAT)
            .poll_interval(POLL)
            .cancel_grace_period(CANCEL_GRACE)
            .shutdown_timeout(Duration::from_secs(5))
            .workers(RUNNERS);
        if role == Role::Worker {
            builder = builder.capacity(RUNNERS).queues(["default"]);
        }
        match builder.build().await {
            Ok(cascade) => break cascade,
            Err(error) => {
                tracing::warn!(%error, "engine did not start; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    for dag in dags::dag_set(env.seed, &env) {
        while let Err(error) = cascade.register_dag(dag.clone()).await {
            tracing::warn!(%error, dag = dag.name(), "registration failed; trying again");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let pid = std::process::id();
    env.ledger.write("ready", &[("node", &env.node), ("pid", &pid)]);
    cascade.run_until_shutdown().await.map_err(|e| e.to_string())
}

/// Records stalls, and exits once the harness is gone (this process was
/// handed to another parent).
async fn watch_self(env: Arc<NodeEnv>) {
    let pid = std::process::id();
    let harness = std::os::unix::process::parent_id();
    let mut before = now_ms();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::os::unix::process::parent_id() != harness {
            eprintln!("chaos node: the harness is gone; exiting");
            std::process::exit(3);
        }
        let after = now_ms();
        if after.saturating_sub(before) > STALL_MS {
            env.ledger.write(
                "stall",
                &[
                    ("node", &env.node),
                    ("pid", &pid),
                    ("from", &before),
                    ("to", &after),
                ],
            );
        }
        before = after;
    }
}
