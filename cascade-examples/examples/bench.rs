//! The benchmark harness: runs one scenario against a fresh database and
//! prints one JSON line per run on stdout.
//!
//! ```text
//! cargo run --release -p cascade-examples --example bench -- \
//!     --backend sqlite|postgres --scenario chain|fanout|etl|validate --size N \
//!     [--jobs J] [--task-ms M] [--workers W] [--repeat R] [--distributed-workers K]
//! ```
//!
//! - `chain`: N tasks in a line. `fanout`: 1 → N → 1 (N + 2 tasks). Both are
//!   built as JSON IR at runtime with one shared handler, a no-op unless
//!   `--task-ms M` makes it sleep M ms.
//! - `etl`: the 4-task ETL DAG of `cascade_examples::etl`, J concurrent jobs.
//! - `validate`: builds an N-task JSON IR and parses + validates + sorts it;
//!   nothing runs and no database is opened.
//! - `--distributed-workers K` (PostgreSQL only): this process runs the engine
//!   as `Role::Scheduler` and starts K copies of itself as worker processes
//!   (the hidden `--worker-mode <url> <capacity|default>` entry: registers the
//!   same DAG, prints `ready`, runs until SIGTERM), each with `--workers`
//!   capacity (default: the engine's default). The line then also reports the
//!   CPU time of the scheduler, of every worker and of PostgreSQL during the
//!   run (`/proc/<pid>/stat` utime + stime), the machine's busy CPU
//!   (`/proc/stat`) and the database's commits (`pg_stat_database`). The
//!   workers get SIGTERM after every run (SIGKILL if they have not exited 10 s
//!   later).
//!
//! Every run opens a fresh database: a new temporary SQLite file, or on
//! PostgreSQL a database `bench_<pid>_<n>` created on the server named by
//! `DATABASE_URL` (default `postgres://root@127.0.0.1:5432/test`) with `psql`
//! and dropped afterwards. See BENCHMARKS.md for what each field measures.

use std::collections::HashMap;
use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cascade_core::{Cascade, Dag, JobStatus, Role, TaskContext, TaskResult};
use cascade_examples::etl;
use serde_json::{Value, json};

type BoxError = Box<dyn Error + Send + Sync>;

const DEFAULT_PG_URL: &str = "postgres://root@127.0.0.1:5432/test";
const USAGE: &str = "usage: bench --backend sqlite|postgres --scenario chain|fanout|etl|validate \
                     --size N [--jobs J] [--task-ms M] [--workers W] [--repeat R] \
                     [--distributed-workers K]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Chain,
    Fanout,
    Etl,
    Validate,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Chain => "chain",
            Scenario::Fanout => "fanout",
            Scenario::Etl => "etl",
            Scenario::Validate => "validate",
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    backend: Backend,
    scenario: Scenario,
    size: usize,
    jobs: usize,
    task_ms: u64,
    workers: Option<usize>,
    repeat: usize,
    /// Worker processes to start (PostgreSQL only); this process schedules.
    distributed_workers: Option<usize>,
    /// Hidden: run as a worker process on this database with this capacity.
    worker_mode: Option<(String, Option<usize>)>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut backend = Backend::Sqlite;
    let mut scenario = None;
    let mut size = None;
    let mut jobs = 1;
    let mut task_ms = 0;
    let mut workers = None;
    let mut repeat = 1;
    let mut distributed_workers = None;
    let mut worker_mode = None;
    fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
        value
            .replace(['_', ','], "")
            .parse()
            .map_err(|_| format!("{flag} `{value}` is not a number"))
    }
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--backend" => {
                backend = match argv.next().as_deref() {
                    Some("sqlite") => Backend::Sqlite,
                    Some("postgres" | "pg") => Backend::Postgres,
                    other => return Err(format!("--backend {other:?}: expected sqlite or postgres")),
                }
            }
            "--scenario" => {
                scenario = Some(match argv.next().as_deref() {
                    Some("chain") => Scenario::Chain,
                    Some("fanout") => Scenario::Fanout,
                    Some("etl") => Scenario::Etl,
                    Some("validate") => Scenario::Validate,
                    other => {
                        return Err(format!(
                            "--scenario {other:?}: expected chain, fanout, etl or validate"
                        ));
                    }
                })
            }
            "--size" => size = Some(number(&flag, argv.next())?),
            "--jobs" => jobs = number(&flag, argv.next())?,
            "--task-ms" => task_ms = number(&flag, argv.next())?,
            "--workers" => workers = Some(number(&flag, argv.next())?),
            "--repeat" => repeat = number(&flag, argv.next())?,
            "--distributed-workers" => distributed_workers = Some(number(&flag, argv.next())?),
            "--worker-mode" => {
                let url = argv.next().ok_or("--worker-mode needs <url> <capacity>")?;
                let capacity = match argv.next().as_deref() {
                    Some("default") => None,
                    value => Some(number(&flag, value.map(str::to_owned))?),
                };
                worker_mode = Some((url, capacity));
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let scenario = scenario.ok_or_else(|| format!("--scenario is required\n{USAGE}"))?;
    let size = match (scenario, size) {
        (Scenario::Etl, size) => size.unwrap_or(4),
        (_, Some(n)) if n > 0 => n,
        _ => return Err(format!("--size N (N ≥ 1) is required\n{USAGE}")),
    };
    if jobs == 0 || repeat == 0 {
        return Err("--jobs and --repeat must be at least 1".to_owned());
    }
    if let Some(k) = distributed_workers {
        if k == 0 {
            return Err("--distributed-workers must be at least 1".to_owned());
        }
        if backend != Backend::Postgres || scenario == Scenario::Validate {
            return Err("--distributed-workers needs --backend postgres and an engine scenario".to_owned());
        }
    }
    Ok(Args {
        backend,
        scenario,
        size,
        jobs,
        task_ms,
        workers,
        repeat,
        distributed_workers,
        worker_mode,
    })
}

// ---------------------------------------------------------------------------
// Memory: /proc/self/status
// ---------------------------------------------------------------------------

/// A field of /proc/self/status in kB (`VmHWM`, `VmRSS`).
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false when not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mb(kb: Option<u64>) -> Value {
    kb.map_or(Value::Null, |kb| json!(round2(kb as f64 / 1024.0)))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------
// Fresh databases
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum FreshDb {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// `postgres://user@host:port/db?x` with the database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn psql(url: &str, sql: &str) -> Result<(), BoxError> {
    let output = Command::new("psql")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(())
}

impl FreshDb {
    fn create(backend: Backend, n: usize) -> Result<Self, BoxError> {
        let pid = std::process::id();
        match backend {
            Backend::Sqlite => Ok(FreshDb::Sqlite(
                std::env::temp_dir().join(format!("cascade-bench-{pid}-{n}.db")),
            )),
            Backend::Postgres => {
                let admin_url = admin_url();
                let name = format!("bench_{pid}_{n}");
                psql(
                    &admin_url,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
                psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
                Ok(FreshDb::Postgres { admin_url, name })
            }
        }
    }

    fn url(&self) -> String {
        match self {
            FreshDb::Sqlite(path) => format!("sqlite://{}", path.display()),
            FreshDb::Postgres { admin_url, name } => with_database(admin_url, name),
        }
    }

    fn remove(self) {
        match self {
            FreshDb::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            FreshDb::Postgres { admin_url, name } => {
                if let Err(error) = psql(
                    &admin_url,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ) {
                    eprintln!("bench: could not drop {name}: {error}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Handler timing
// ---------------------------------------------------------------------------

/// Start and end instants of every handler call, in ns since `epoch` (0 =
/// not recorded), by task slot. Allocated (and touched) before the run so it
/// is part of the memory baseline.
#[derive(Debug)]
struct Recorder {
    epoch: Instant,
    start: Vec<AtomicU64>,
    end: Vec<AtomicU64>,
}

impl Recorder {
    fn new(slots: usize) -> Arc<Self> {
        Arc::new(Recorder {
            epoch: Instant::now(),
            start: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            end: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
    }

    fn started(&self, slot: usize) {
        if let Some(cell) = self.start.get(slot) {
            cell.store(self.now(), Ordering::Relaxed);
        }
    }

    fn ended(&self, slot: usize) {
        if let Some(cell) = self.end.get(slot) {
            cell.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Dispatch latency of every task with dependencies: its handler's start
    /// minus the end of its last-finishing dependency's handler, in µs.
    /// `deps[i]` are the slots task slot `i` depends on. Returns (µs, slot).
    fn dispatch_us(&self, deps: &[Vec<usize>]) -> Vec<(f64, usize)> {
        let load =
            |cells: &[AtomicU64]| -> Vec<u64> { cells.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
        dispatch_us(&load(&self.start), &load(&self.end), deps)
    }
}

/// Dispatch latency from start and end times by slot (ns, 0 = unknown).
fn dispatch_us(start: &[u64], end: &[u64], deps: &[Vec<usize>]) -> Vec<(f64, usize)> {
    let mut out = Vec::new();
    for (slot, deps) in deps.iter().enumerate() {
        let start = start.get(slot).copied().unwrap_or(0);
        let last_dep = deps.iter().map(|&d| end.get(d).copied().unwrap_or(0)).max();
        if let Some(last_dep) = last_dep
            && start != 0
            && last_dep != 0
        {
            out.push(((start as f64 - last_dep as f64) / 1000.0, slot));
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    json!(round2(sorted[rank.clamp(1, sorted.len()) - 1]))
}

/// `t<i>` → i.
fn slot_of(task_id: &str) -> usize {
    task_id
        .strip_prefix('t')
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// The shared handler of chain and fanout: a no-op, or a sleep of `task_ms`.
fn with_shared_handler(dag: Dag, recorder: &Arc<Recorder>, task_ms: u64) -> Dag {
    let recorder = Arc::clone(recorder);
    dag.with_handler("work", move |ctx: TaskContext| {
        let recorder = Arc::clone(&recorder);
        async move {
            let slot = slot_of(ctx.task_id());
            recorder.started(slot);
            if task_ms > 0 {
                tokio::time::sleep(Duration::from_millis(task_ms)).await;
            }
            recorder.ended(slot);
            Ok(Value::Null)
        }
    })
}

/// Wraps one of the ETL handlers so its start and end are recorded; the slot
/// is `params.slot * 4 + position`.
fn timed_etl<F, Fut>(
    recorder: &Arc<Recorder>,
    position: usize,
    handler: F,
) -> impl Fn(TaskContext) -> std::pin::Pin<Box<dyn Future<Output = TaskResult> + Send>> + Send + Sync + 'static
where
    F: Fn(TaskContext) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = TaskResult> + Send + 'static,
{
    let recorder = Arc::clone(recorder);
    move |ctx: TaskContext| {
        let recorder = Arc::clone(&recorder);
        Box::pin(async move {
            let job_slot = ctx.params()["slot"].as_u64().map_or(usize::MAX, |s| s as usize);
            let slot = job_slot.saturating_mul(4).saturating_add(position);
            recorder.started(slot);
            let result = handler(ctx).await;
            recorder.ended(slot);
            result
        })
    }
}

// ---------------------------------------------------------------------------
// DAG shapes as JSON IR
// ---------------------------------------------------------------------------

fn task_json(id: usize, deps: &[usize]) -> Value {
    let deps: Vec<String> = deps.iter().map(|d| format!("t{d}")).collect();
    json!({ "id": format!("t{id}"), "handler": "work", "depends_on": deps })
}

/// (IR, dependencies by slot). Chain: t0 → t1 → … → t(n-1).
fn chain_ir(n: usize) -> (String, Vec<Vec<usize>>) {
    let deps: Vec<Vec<usize>> = (0..n)
        .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
        .collect();
    (ir_from(&format!("bench_chain_{n}"), &deps), deps)
}

/// Fanout: t0 → t1..=tn → t(n+1).
fn fanout_ir(n: usize) -> (String, Vec<Vec<usize>>) {
    let mut deps: Vec<Vec<usize>> = vec![vec![]];
    deps.extend((1..=n).map(|_| vec![0]));
    deps.push((1..=n).collect());
    (ir_from(&format!("bench_fanout_{n}"), &deps), deps)
}

/// The validate shape: every task depends on its predecessor and on the task
/// at half its index, about 2 edges per task.
fn validate_ir(n: usize) -> String {
    let deps: Vec<Vec<usize>> = (0..n)
        .map(|i| match i {
            0 => vec![],
            1 | 2 => vec![i - 1],
            _ => vec![i - 1, i / 2],
        })
        .collect();
    ir_from(&format!("bench_validate_{n}"), &deps)
}

fn ir_from(name: &str, deps: &[Vec<usize>]) -> String {
    let tasks: Vec<Value> = deps.iter().enumerate().map(|(i, d)| task_json(i, d)).collect();
    json!({ "ir_version": 1, "name": name, "tasks": tasks }).to_string()
}

/// The scenario's DAG with its handlers, and the dependency lists by
/// recorder slot. `shape` is the chain or fanout IR (built beforehand so it
/// is outside the memory baseline).
fn build_dag(
    args: &Args,
    shape: Option<(String, Vec<Vec<usize>>)>,
    recorder: &Arc<Recorder>,
    jobs: usize,
) -> Result<(Dag, Vec<Vec<usize>>), BoxError> {
    Ok(match args.scenario {
        Scenario::Chain | Scenario::Fanout => {
            let (ir, deps) = shape.ok_or("no DAG shape")?;
            let dag = with_shared_handler(Dag::from_ir_json(&ir)?, recorder, args.task_ms);
            (dag, deps)
        }
        Scenario::Etl => {
            let base = etl::etl_pipeline();
            let mut dag = Dag::from_ir_json(base.ir_json())?;
            let ir: Value = serde_json::from_str(base.ir_json())?;
            for task in ir["tasks"].as_array().into_iter().flatten() {
                let (Some(id), Some(handler)) = (task["id"].as_str(), task["handler"].as_str()) else {
                    return Err(format!("ETL task {task} has no handler").into());
                };
                let handler = handler.to_owned();
                dag = match id {
                    "extract" => dag.with_handler(handler, timed_etl(recorder, 0, etl::extract)),
                    "transform" => dag.with_handler(handler, timed_etl(recorder, 1, etl::transform)),
                    "load" => dag.with_handler(handler, timed_etl(recorder, 2, etl::load)),
                    "notify" => dag.with_handler(handler, timed_etl(recorder, 3, etl::notify)),
                    other => return Err(format!("unexpected ETL task {other}").into()),
                };
            }
            // Slot j*4 + p depends on j*4 + p-1: extract → transform → load → notify.
            let deps = (0..jobs * 4)
                .map(|s| if s % 4 == 0 { vec![] } else { vec![s - 1] })
                .collect();
            (dag, deps)
        }
        Scenario::Validate => return Err("validate runs no engine".into()),
    })
}

// ---------------------------------------------------------------------------
// Distributed mode: worker processes and CPU accounting
// ---------------------------------------------------------------------------

/// Clock ticks per second of /proc/<pid>/stat and /proc/stat (`getconf
/// CLK_TCK`; 100 on Linux unless told otherwise).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (comm, utime + stime in ticks) of a process, from /proc/<pid>/stat.
fn proc_cpu(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // Fields after the command: state (3), ppid (4), … utime (14), stime (15).
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks of every `postgres` process on this machine, by pid.
fn postgres_cpu() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.bytes().all(|b| b.is_ascii_digit())
            && let Some((comm, ticks)) = proc_cpu(&name)
            && comm == "postgres"
        {
            out.insert(name, ticks);
        }
    }
    out
}

/// (busy, total) ticks of all CPUs from the first line of /proc/stat; idle
/// and iowait count as not busy.
fn system_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A snapshot of the CPU time of the bench's processes, PostgreSQL and the
/// machine.
struct CpuSnapshot {
    scheduler: u64,
    workers: Vec<u64>,
    postgres: HashMap<String, u64>,
    system: Option<(u64, u64)>,
}

impl CpuSnapshot {
    fn take(workers: &[WorkerProcess]) -> Self {
        CpuSnapshot {
            scheduler: proc_cpu("self").map_or(0, |(_, t)| t),
            workers: workers
                .iter()
                .map(|w| proc_cpu(&w.child.id().to_string()).map_or(0, |(_, t)| t))
                .collect(),
            postgres: postgres_cpu(),
            system: system_cpu(),
        }
    }

    /// The CPU used between `before` and `self`, in ms, as JSON fields.
    fn since(&self, before: &CpuSnapshot, wall: Duration) -> Value {
        let tick_ms = 1000.0 / clock_ticks();
        let to_ms = |ticks: u64| round2(ticks as f64 * tick_ms);
        let workers: Vec<f64> = self
            .workers
            .iter()
            .zip(&before.workers)
            .map(|(after, before)| to_ms(after.saturating_sub(*before)))
            .collect();
        // Backends that started during the run count from zero; those that
        // ended are lost (the pools keep their connections, so there are few).
        let postgres: u64 = self
            .postgres
            .iter()
            .map(|(pid, after)| after.saturating_sub(before.postgres.get(pid).copied().unwrap_or(0)))
            .sum();
        let wall_ms = wall.as_secs_f64() * 1000.0;
        let (busy, capacity) = match (self.system, before.system) {
            (Some((busy, total)), Some((busy0, total0))) => {
                (json!(to_ms(busy - busy0)), json!(to_ms(total - total0)))
            }
            _ => (Value::Null, Value::Null),
        };
        json!({
            "cpu_scheduler_ms": to_ms(self.scheduler.saturating_sub(before.scheduler)),
            "cpu_workers_ms": workers,
            "cpu_postgres_ms": to_ms(postgres),
            // All CPUs of the machine, including other sessions' load.
            "cpu_system_busy_ms": busy,
            "cpu_system_total_ms": capacity,
            "cpu_wall_ms": round2(wall_ms),
        })
    }
}

/// A worker process: this binary in `--worker-mode`.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn start(args: &Args, url: &str) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let capacity = args.workers.map_or("default".to_owned(), |w| w.to_string());
        let mut child = Command::new(exe)
            .args(["--worker-mode", url, &capacity])
            .args(["--backend", "postgres", "--scenario", args.scenario.name()])
            .args(["--size", &args.size.to_string()])
            .args(["--jobs", &args.jobs.to_string()])
            .args(["--task-ms", &args.task_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting a worker process: {e}"))?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // A worker that dies before `ready` closes its stdout: EOF.
        let ready = loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                break false;
            }
            if line.trim() == "ready" {
                break true;
            }
        };
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return Err("a worker process exited before it was ready".into());
        }
        // Whatever it prints later (logs with RUST_LOG) is drained.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Ok(WorkerProcess { child })
    }

    /// SIGTERM (a graceful drain), then SIGKILL if it is still there 10 s later.
    /// Returns how the process ended.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return "killed (SIGKILL after 10 s)".to_owned();
                }
            }
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Only reached when `stop` was not (an error path): do not leak it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// psql's single value for a query (`-A -t`).
fn psql_value(url: &str, sql: &str) -> Option<String> {
    let output = Command::new("psql")
        .args([url, "-X", "-A", "-t", "-q", "-c", sql])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Committed transactions of database `name` so far (`pg_stat_database`).
fn xact_commits(admin_url: &str, name: &str) -> Option<i64> {
    psql_value(
        admin_url,
        &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'"),
    )?
    .parse()
    .ok()
}

/// Waits (up to 3 s) until no session is connected to database `name`, so
/// that every backend has flushed its statistics (an idle backend may hold
/// them for 10 s; an exiting one flushes them).
fn wait_disconnected(admin_url: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let sessions = psql_value(
            admin_url,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"),
        );
        if sessions.as_deref() == Some("0") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The hidden `--worker-mode <url> <capacity>` entry: a worker process that
/// registers the scenario's DAG, prints `ready` and runs until SIGTERM.
async fn run_worker(args: &Args, url: &str, capacity: Option<usize>) -> Result<(), BoxError> {
    let mut builder = Cascade::builder()
        .database_url(url)
        .role(Role::Worker)
        .shutdown_timeout(Duration::from_secs(5));
    if let Some(capacity) = capacity {
        builder = builder.capacity(capacity);
    }
    let cascade = builder.build().await?;
    let shape = match args.scenario {
        Scenario::Chain => Some(chain_ir(args.size)),
        Scenario::Fanout => Some(fanout_ir(args.size)),
        _ => None,
    };
    // Handlers here are timed into a recorder nobody reads: the scheduler
    // measures dispatch from the store's timestamps.
    let (dag, _) = build_dag(args, shape, &Recorder::new(0), args.jobs)?;
    cascade.register_dag(dag).await?;
    println!("ready");
    cascade.run_until_shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    round2(d.as_secs_f64() * 1000.0)
}

fn run_validate(args: &Args) -> Result<Value, BoxError> {
    let started = Instant::now();
    let ir = validate_ir(args.size);
    let build = started.elapsed();

    // The whole path the runtime takes: parse + validate + toposort.
    let started = Instant::now();
    let dag = Dag::from_ir_json(&ir)?;
    let wall = started.elapsed();
    assert_eq!(dag.plan().topological_order().len(), args.size);
    drop(dag);

    // For comparison: the validator again (warm), and a plain serde_json
    // parse of the same document into a `Value`.
    let started = Instant::now();
    let valid = cascade_core::ValidDag::from_json(&ir)?;
    let validate_warm = started.elapsed();
    let started = Instant::now();
    let value: Value = serde_json::from_str(&ir)?;
    let json_parse = started.elapsed();
    drop(value);

    let tasks = args.size as f64;
    Ok(json!({
        "scenario": "validate",
        "backend": Value::Null,
        "size": args.size,
        "tasks": args.size,
        "edges": valid.tasks().iter().map(|t| t.dependencies.len()).sum::<usize>(),
        "ir_bytes": ir.len(),
        "jobs": 0,
        "task_ms": 0,
        "workers": Value::Null,
        "wall_ms": ms(wall),
        "tasks_per_sec": round2(tasks / wall.as_secs_f64()),
        "build_ir_ms": ms(build),
        "validate_warm_ms": ms(validate_warm),
        "json_value_parse_ms": ms(json_parse),
        "dispatch_p50_us": Value::Null,
        "dispatch_p99_us": Value::Null,
        "peak_rss_mb": mb(proc_status_kb("VmHWM")),
    }))
}

async fn run_engine(args: &Args, run: usize) -> Result<Value, BoxError> {
    let db = FreshDb::create(args.backend, run)?;
    let url = db.url();

    // The DAG, its dependency lists by recorder slot, and the slot count.
    let (jobs, task_count) = match args.scenario {
        Scenario::Chain => (1, args.size),
        Scenario::Fanout => (1, args.size + 2),
        Scenario::Etl => (args.jobs, 4),
        Scenario::Validate => unreachable!("validate runs no engine"),
    };
    let setup_started = Instant::now();
    let mut builder = Cascade::builder().database_url(url.clone());
    if args.distributed_workers.is_some() {
        // Queues ready tasks for the worker processes and runs none; its
        // `workers()` resolves to the capacity the workers get (same flag,
        // same environment).
        builder = builder.role(Role::Scheduler);
    }
    if let Some(workers) = args.workers {
        builder = builder.workers(workers);
    }
    let cascade = builder.build().await?;
    let workers = cascade.workers();
    let engine_ready = setup_started.elapsed();

    // The DAG's JSON IR is built by the harness before any baseline.
    let recorder = Recorder::new(task_count * jobs);
    let shape = match args.scenario {
        Scenario::Chain => Some(chain_ir(args.size)),
        Scenario::Fanout => Some(fanout_ir(args.size)),
        _ => None,
    };
    let hwm_engine = proc_status_kb("VmHWM");

    // An empty engine: reset the peak and take the baseline.
    let peak_reset = reset_peak_rss();
    let rss_empty = proc_status_kb("VmRSS");

    let (dag, deps) = build_dag(args, shape, &recorder, jobs)?;
    let record = cascade.register_dag(dag).await?;
    let setup = setup_started.elapsed();
    // Parsing and registering the DAG has its own peak; reset again so the
    // job's peak is measured over the engine with the DAG registered.
    let hwm_registered = proc_status_kb("VmHWM");
    let peak_reset = peak_reset && reset_peak_rss();
    let rss_registered = proc_status_kb("VmRSS");

    // Distributed: the worker processes, started once the DAG is stored.
    let mut processes = Vec::new();
    for _ in 0..args.distributed_workers.unwrap_or(0) {
        processes.push(WorkerProcess::start(args, &url)?);
    }
    let (commits_before, cpu_before) = match &db {
        FreshDb::Postgres { admin_url, name } if !processes.is_empty() => {
            (xact_commits(admin_url, name), Some(CpuSnapshot::take(&processes)))
        }
        _ => (None, None),
    };

    // Timed: trigger → wait_for_job returns (for every job).
    let started = Instant::now();
    let mut trigger_time = Duration::ZERO;
    let mut statuses = Vec::with_capacity(jobs);
    let mut job_ids = Vec::with_capacity(jobs);
    if jobs == 1 {
        let job = cascade
            .trigger_job(record.id, "bench", json!({ "slot": 0 }))
            .await?;
        trigger_time = started.elapsed();
        job_ids.push(job.id);
        statuses.push(cascade.wait_for_job(job.id).await?.status);
    } else {
        let mut handles = Vec::with_capacity(jobs);
        for slot in 0..jobs {
            let cascade = cascade.clone();
            let dag_id = record.id;
            handles.push(tokio::spawn(async move {
                let job = cascade
                    .trigger_job(dag_id, "bench", json!({ "slot": slot, "environment": "bench" }))
                    .await?;
                cascade.wait_for_job(job.id).await.map(|job| (job.id, job.status))
            }));
        }
        for handle in handles {
            let (id, status) = handle.await??;
            job_ids.push(id);
            statuses.push(status);
        }
    }
    let wall = started.elapsed();
    let peak_kb = proc_status_kb("VmHWM");
    let cpu = cpu_before.map(|before| CpuSnapshot::take(&processes).since(&before, wall));

    // Distributed: handlers ran in other processes, so dispatch comes from
    // the store's timestamps (task started_at = claimed by a worker,
    // completed_at = its handler's end), and so does who ran what.
    let mut store_times: Option<(Vec<u64>, Vec<u64>)> = None;
    let mut tasks_by_worker: HashMap<String, usize> = HashMap::new();
    if !processes.is_empty() {
        let mut start = vec![0; task_count * jobs];
        let mut end = vec![0; task_count * jobs];
        let ns = |t: Option<i64>| t.map_or(0, |n| n.max(0) as u64);
        for (job_slot, job_id) in job_ids.iter().enumerate() {
            for task in cascade.store().list_task_executions_for_job(*job_id).await? {
                let slot = match args.scenario {
                    Scenario::Etl => {
                        let position = ["extract", "transform", "load", "notify"]
                            .iter()
                            .position(|id| *id == task.task_id)
                            .unwrap_or(usize::MAX);
                        job_slot.saturating_mul(4).saturating_add(position)
                    }
                    _ => slot_of(&task.task_id),
                };
                if slot < start.len() {
                    start[slot] = ns(task.started_at.and_then(|t| t.timestamp_nanos_opt()));
                    end[slot] = ns(task.completed_at.and_then(|t| t.timestamp_nanos_opt()));
                }
                *tasks_by_worker
                    .entry(task.worker.unwrap_or_else(|| "-".to_owned()))
                    .or_default() += 1;
            }
        }
        store_times = Some((start, end));
    }
    let worker_exits: Vec<String> = processes.into_iter().map(WorkerProcess::stop).collect();

    cascade.shutdown().await?;
    drop(cascade);
    let commits = match (&db, commits_before) {
        (FreshDb::Postgres { admin_url, name }, Some(before)) => {
            wait_disconnected(admin_url, name);
            xact_commits(admin_url, name).map(|after| after - before)
        }
        _ => None,
    };
    db.remove();

    if let Some(bad) = statuses.iter().find(|s| **s != JobStatus::Success) {
        return Err(format!("a job ended {bad}, not success").into());
    }

    let latencies = match &store_times {
        Some((start, end)) => dispatch_us(start, end, &deps),
        None => recorder.dispatch_us(&deps),
    };
    let slowest = latencies
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|&(_, slot)| slot);
    let mut dispatch: Vec<f64> = latencies.into_iter().map(|(us, _)| us).collect();
    dispatch.sort_by(f64::total_cmp);
    let total_tasks = task_count * jobs;
    let mut result = json!({
        "scenario": args.scenario.name(),
        "backend": args.backend.name(),
        "size": args.size,
        "tasks": total_tasks,
        "jobs": jobs,
        "task_ms": args.task_ms,
        "workers": workers,
        "wall_ms": ms(wall),
        "tasks_per_sec": round2(total_tasks as f64 / wall.as_secs_f64()),
        "trigger_ms": if jobs == 1 { json!(ms(trigger_time)) } else { Value::Null },
        "setup_ms": ms(setup),
        "engine_build_ms": ms(engine_ready),
        "dispatch_samples": dispatch.len(),
        "dispatch_p50_us": percentile(&dispatch, 50.0),
        "dispatch_p99_us": percentile(&dispatch, 99.0),
        "dispatch_max_us": dispatch.last().map_or(Value::Null, |v| json!(round2(*v))),
        // The recorder slot of the slowest edge's dependent (task `t<slot>`).
        "dispatch_max_slot": slowest,
        // The process's peak: engine start-up, DAG registration or the job.
        "peak_rss_mb": mb(peak_kb.max(hwm_engine).max(hwm_registered)),
        "rss_empty_engine_mb": mb(rss_empty),
        "rss_registered_mb": mb(rss_registered),
    });
    if let Some(k) = args.distributed_workers {
        // `workers` is then each worker process's capacity; dispatch is from
        // the store's timestamps (ms-precise clocks of one machine).
        result["distributed_workers"] = json!(k);
        result["dispatch_source"] = json!("store");
        let mut by_worker: Vec<usize> = tasks_by_worker.into_values().collect();
        by_worker.sort_unstable_by(|a, b| b.cmp(a));
        result["tasks_by_worker"] = json!(by_worker);
        result["worker_exits"] = json!(worker_exits);
        if let Some(cpu) = cpu
            && let (Value::Object(fields), Value::Object(line)) = (cpu, &mut result)
        {
            line.extend(fields);
        }
        result["commits"] = json!(commits);
        result["commits_per_sec"] = json!(commits.map(|c| round2(c as f64 / wall.as_secs_f64())));
    }
    // Memory per queued task: the rise of the peak RSS during the job over
    // the engine with the DAG registered, per task; and the peak of parsing
    // and registering the DAG over the empty engine, per task. Meaningful for
    // the big fan-out, where every task is queued at once.
    if peak_reset
        && args.scenario == Scenario::Fanout
        && let (Some(peak), Some(registered)) = (peak_kb, rss_registered)
    {
        result["bytes_per_task"] = json!((peak.saturating_sub(registered) * 1024) / total_tasks as u64);
        if let (Some(dag_peak), Some(empty)) = (hwm_registered, rss_empty) {
            result["dag_bytes_per_task"] =
                json!((dag_peak.saturating_sub(empty) * 1024) / total_tasks as u64);
        }
    }
    Ok(result)
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        cascade_examples::init_tracing();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: tokio runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Some((url, capacity)) = args.worker_mode.clone() {
        if let Err(error) = runtime.block_on(run_worker(&args, &url, capacity)) {
            eprintln!("bench worker: {error}");
            std::process::exit(1);
        }
        return;
    }
    let mut failed = false;
    for run in 0..args.repeat {
        let result = if args.scenario == Scenario::Validate {
            run_validate(&args)
        } else {
            runtime.block_on(run_engine(&args, run))
        };
        match result {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!(
                    "bench: {} {} size {} run {run}: {error}",
                    args.scenario.name(),
                    args.backend.name(),
                    args.size
                );
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
