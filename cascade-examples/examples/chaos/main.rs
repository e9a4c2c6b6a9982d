//! A chaos run: random DAGs on five engine processes — two all-in-one
//! engines, a scheduler and two workers — sharing a throwaway PostgreSQL
//! cluster, while processes are SIGKILLed and frozen, the server restarts
//! and connections are cut. At the end it checks, from the store and from a
//! side-effect ledger written by the handlers, that nothing was lost, run
//! twice or announced twice, and prints one JSON line.
//!
//! ```text
//! cargo run --release -p cascade-examples --example chaos -- --minutes 10 --seed 42
//! ```
//!
//! Options: `--minutes M` (fractions allowed) or `--seconds N`, `--seed S`
//! (default: from the clock; printed either way), `--keep` (keep the run's
//! directory — ledger, store dump and engine logs — even when no invariant
//! broke), `--roles all|distributed` (only the two all-in-one engines, or
//! only the scheduler and the workers, instead of all five), `--no-faults`
//! (the same jobs without any fault, a baseline). The
//! exit status is 0 when every invariant held, 1 when one did not, 2 when
//! the run itself could not be carried out. Needs `initdb` and `pg_ctl`;
//! never touches any other PostgreSQL server. RELIABILITY.md describes
//! the faults and the invariants.

mod check;
mod dags;
mod driver;
mod ledger;
mod node;
mod nodes;
mod rng;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_store::testing::{ShutdownMode, ThrowawayCluster};
use serde_json::json;
use tokio::time::Instant;

use crate::driver::Driver;
use crate::ledger::{Ledger, now_ms};
use crate::nodes::{Nodes, ShellWatcher};
use crate::rng::Rng;

/// Job lease of every engine; with [`HEARTBEAT`], also the task lease of
/// the workers (three heartbeats).
pub(crate) const LEASE: Duration = Duration::from_secs(3);
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
pub(crate) const POLL: Duration = Duration::from_millis(500);
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// Task attempts each engine process runs at once.
pub(crate) const RUNNERS: usize = 4;
/// How long the jobs get to finish once the faults stop.
const DRAIN: Duration = Duration::from_secs(120);
/// After every job ended: time for stale attempts to be stopped (a lease
/// check, the cancel grace and some slack) before the ledger is read.
const QUIET: Duration = Duration::from_secs(7);

#[derive(Debug)]
struct Options {
    seconds: f64,
    seed: u64,
    keep: bool,
    /// `mixed`, `all` or `distributed`.
    roles: String,
    deployment: &'static [(&'static str, &'static str)],
    faults: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__node") {
        return match node::run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("chaos node: {error}");
                ExitCode::from(2)
            }
        };
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!(
                "chaos: {error}\nusage: chaos [--minutes M | --seconds N] [--seed S] [--keep] [--roles mixed|all|distributed] [--no-faults]"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chaos: runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&options) => outcome,
            () = interrupted() => Err("interrupted; the run's processes are stopped".to_owned()),
        }
    });
    // Dropping the runtime drops the run's tasks and with them the engine
    // processes (killed on drop, a frozen one included) and the cluster.
    drop(runtime);
    match outcome {
        Ok(report) => {
            println!("{report}");
            if report["violations"].as_array().is_some_and(Vec::is_empty) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("chaos: {error}");
            ExitCode::from(2)
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seconds: 60.0,
        seed: now_ms(),
        keep: false,
        roles: "mixed".to_owned(),
        deployment: nodes::MIXED,
        faults: true,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--minutes" => {
                let minutes: f64 = value("--minutes")?
                    .parse()
                    .map_err(|e| format!("--minutes: {e}"))?;
                options.seconds = minutes * 60.0;
            }
            "--seconds" => {
                options.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
            }
            "--seed" => {
                options.seed = value("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?;
            }
            "--keep" => options.keep = true,
            "--no-faults" => options.faults = false,
            "--roles" => {
                options.roles = value("--roles")?;
                options.deployment = match options.roles.as_str() {
                    "mixed" => nodes::MIXED,
                    "all" => nodes::ALL_IN_ONE,
                    "distributed" => nodes::DISTRIBUTED,
                    other => {
                        return Err(format!("--roles `{other}`: use mixed, all or distributed"));
                    }
                };
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !(options.seconds.is_finite() && options.seconds > 0.0) {
        return Err("the run must last a positive time".to_owned());
    }
    Ok(options)
}

async fn run(options: &Options) -> Result<serde_json::Value, String> {
    let seed = options.seed;
    let dir = std::env::temp_dir().join(format!("cascade-chaos-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ledger_path = dir.join("ledger.log");
    let ledger = Arc::new(Ledger::open(&ledger_path).map_err(|e| format!("ledger: {e}"))?);
    eprintln!(
        "chaos: seed {seed}, {:.0} s of faults, ledger and logs in {}",
        options.seconds,
        dir.display()
    );

    let cluster = Arc::new(
        ThrowawayCluster::start()
            .await
            .ok_or("no initdb/pg_ctl found: the chaos run needs a PostgreSQL cluster of its own")?,
    );
    let mut driver = Driver::start(&cluster.url(), seed, Arc::clone(&ledger)).await?;
    let nodes = Arc::new(
        Nodes::start(
            options.deployment,
            cluster.addr(),
            cluster.url(),
            &dir,
            seed,
            Arc::clone(&ledger),
        )
        .await?,
    );
    let ready_path = ledger_path.clone();
    let count = options.deployment.len();
    tokio::task::spawn_blocking(move || nodes::wait_ready(&ready_path, count, Duration::from_secs(120)))
        .await
        .map_err(|e| e.to_string())??;
    let watcher = ShellWatcher::start(Arc::clone(&ledger));

    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(restart_crashed(Arc::clone(&nodes), Arc::clone(&stop_monitor)));
    let until = Instant::now() + Duration::from_secs_f64(options.seconds);
    let faults = tokio::spawn(inject_faults(
        Arc::clone(&cluster),
        Arc::clone(&nodes),
        Arc::clone(&ledger),
        Rng::for_parts(seed, &["faults"]),
        if options.faults { until } else { Instant::now() },
    ));
    driver.run(until).await;
    faults.await.map_err(|e| format!("fault injection failed: {e}"))?;

    eprintln!("chaos: faults stopped; waiting for every job to end");
    let unfinished = driver.drain(DRAIN).await;
    tokio::time::sleep(QUIET).await;
    let store = driver
        .collect()
        .await
        .map_err(|e| format!("reading the store: {e}"))?;
    stop_monitor.store(true, Ordering::SeqCst);
    let _ = monitor.await;
    nodes.kill_all();
    // Shell commands of the last processes die with them; let the watcher see it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    watcher.stop();
    driver.shutdown().await;

    let (entries, garbled) = ledger::read(&ledger_path).map_err(|e| format!("reading the ledger: {e}"))?;
    let facts = check::read_ledger(&entries);
    let violations = check::check(
        &store,
        &facts,
        &garbled,
        check::Leases {
            lease_ms: LEASE.as_millis() as u64,
        },
    );
    let recovery = check::recovery_times(&facts);
    let report = report(options, &store, &facts, &recovery, unfinished.len(), &violations);
    if violations.is_empty() && !options.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        // The store as the checks saw it, beside the ledger, for the evidence.
        let dump: Vec<serde_json::Value> = store
            .iter()
            .map(|d| json!({ "job": d.job, "tasks": d.tasks, "attempts": d.attempts }))
            .collect();
        if let Err(error) = std::fs::write(dir.join("store.json"), json!(dump).to_string()) {
            eprintln!("chaos: writing store.json: {error}");
        }
        eprintln!(
            "chaos: ledger, store.json and engine logs kept in {}",
            dir.display()
        );
    }
    drop(nodes);
    drop(cluster);
    Ok(report)
}

fn report(
    options: &Options,
    store: &[driver::JobData],
    facts: &check::LedgerFacts,
    recovery: &[u64],
    unfinished: usize,
    violations: &[check::Violation],
) -> serde_json::Value {
    let mut by_status = std::collections::BTreeMap::new();
    for data in store {
        *by_status.entry(data.job.status.to_string()).or_insert(0u64) += 1;
    }
    let fault = |kind: &str| facts.faults.get(kind).copied().unwrap_or(0);
    let mut sorted = recovery.to_vec();
    sorted.sort_unstable();
    json!({
        "seed": options.seed,
        "minutes": options.seconds / 60.0,
        "roles": options.roles,
        "jobs": store.len(),
        "jobs_by_status": by_status,
        "tasks": store.iter().map(|d| d.tasks.len()).sum::<usize>(),
        "executions": facts.executions.len(),
        "faults": {
            "sigkill": fault("sigkill"),
            "sigstop": fault("sigstop"),
            "pg_fast_restart": fault("pg_fast_restart"),
            "pg_immediate_restart": fault("pg_immediate_restart"),
            "cut": fault("cut"),
        },
        "recovery_after_pg_restart_ms": {
            "restarts": sorted.len(),
            "median": sorted.get(sorted.len() / 2),
            "max": sorted.last(),
        },
        "unfinished_after_drain": unfinished,
        "violations_by_check": violations.iter().fold(
            std::collections::BTreeMap::<&str, u64>::new(),
            |mut counts, v| {
                *counts.entry(v.check).or_default() += 1;
                counts
            },
        ),
        "violations": violations.iter().map(check::Violation::to_json).collect::<Vec<_>>(),
    })
}

/// Restarts any engine process that exited by itself (recorded as `exit`).
async fn restart_crashed(nodes: Arc<Nodes>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        nodes.restart_crashed();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Injects one fault after another until `until`, each undone before the
/// next: SIGKILL (and a restart), SIGSTOP for one to two leases, a fast or
/// an immediate PostgreSQL restart, a connection cut of 2–6 s (one node's,
/// or every node's).
async fn inject_faults(
    cluster: Arc<ThrowawayCluster>,
    nodes: Arc<Nodes>,
    ledger: Arc<Ledger>,
    mut rng: Rng,
    until: Instant,
) {
    let lease_ms = LEASE.as_millis() as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.range(2_000, 5_000))).await;
        if Instant::now() >= until {
            return;
        }
        let index = rng.range(0, nodes.len() as u64 - 1) as usize;
        match rng.weighted(&[25, 25, 12, 12, 26]) {
            0 => {
                let at = now_ms();
                if let Some(node) = nodes.sigkill(index, false) {
                    ledger.write_at(
                        at,
                        "fault",
                        &[("kind", &"sigkill"), ("scope", &format!("node:{node}"))],
                    );
                    eprintln!("chaos: SIGKILL {node}");
                    tokio::time::sleep(Duration::from_millis(rng.range(200, 1_500))).await;
                    if let Err(error) = nodes.respawn(index) {
                        eprintln!("chaos: {error}");
                    }
                }
            }
            1 => {
                let frozen = Duration::from_millis(lease_ms + rng.range(0, lease_ms));
                let from = now_ms();
                let Some(node) = nodes.signal(index, "STOP") else {
                    continue;
                };
                eprintln!("chaos: SIGSTOP {node} for {frozen:?}");
                tokio::time::sleep(frozen).await;
                nodes.signal(index, "CONT");
                let to = now_ms();
                ledger.write(
                    "fault",
                    &[
                        ("kind", &"sigstop"),
                        ("scope", &format!("node:{node}")),
                        ("from", &from),
                        ("to", &to),
                    ],
                );
            }
            kind @ (2 | 3) => {
                let (mode, name) = if kind == 2 {
                    (ShutdownMode::Fast, "pg_fast_restart")
                } else {
                    (ShutdownMode::Immediate, "pg_immediate_restart")
                };
                eprintln!("chaos: {name}");
                let from = now_ms();
                cluster.restart(mode).await;
                let to = now_ms();
                ledger.write(
                    "fault",
                    &[("kind", &name), ("scope", &"all"), ("from", &from), ("to", &to)],
                );
            }
            _ => {
                let every = rng.chance(0.2);
                let cut: Vec<usize> = if every {
                    (0..nodes.len()).collect()
                } else {
                    vec![index]
                };
                let scope = if every {
                    "all".to_owned()
                } else {
                    format!("slot:{}", nodes.slot_name(index))
                };
                let length = Duration::from_millis(rng.range(2_000, 6_000));
                eprintln!("chaos: cut {scope} for {length:?}");
                let from = now_ms();
                for &i in &cut {
                    nodes.set_cut(i, true);
                }
                tokio::time::sleep(length).await;
                for &i in &cut {
                    nodes.set_cut(i, false);
                }
                let to = now_ms();
                ledger.write(
                    "fault",
                    &[("kind", &"cut"), ("scope", &scope), ("from", &from), ("to", &to)],
                );
            }
        }
    }
}
