//! DAGs for the crash-recovery tests, shared by the test and the child
//! process it kills (`src/bin/cascade-crash-child.rs`).
//!
//! Every handler leaves a marker file in the job's `dir` param, so the test can
//! see what ran, how often, and in which process.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cascade_core::{Dag, JobId, TaskContext, TaskError, TaskResult};
use serde_json::json;

/// Which process runs the handlers: the one that will be killed hangs in the
/// middle of `work`; the recovering one finishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The child process that gets SIGKILLed.
    Victim,
    /// The test process that recovers.
    Survivor,
}

fn dir(ctx: &TaskContext) -> Result<PathBuf, TaskError> {
    ctx.params()["dir"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| TaskError::fatal("param dir missing"))
}

/// Appends a line to `<dir>/<name>.log`.
pub fn mark(dir: &Path, name: &str, line: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    // One write per line, so that lines appended concurrently never mix.
    file.write_all(format!("{line}\n").as_bytes())
}

/// The lines of `<dir>/<name>.log`.
pub fn marks(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.log")))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

async fn prepare(ctx: TaskContext) -> TaskResult {
    mark(&dir(&ctx)?, "prepare", &format!("pid {}", std::process::id()))?;
    Ok(json!({ "prepared": true }))
}

/// A side effect made exactly-once with the idempotency key: the ledger entry
/// is written only if no entry with this key exists.
fn charge_once(dir: &Path, key: &str) -> std::io::Result<bool> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!("ledger-{}", key.replace(':', "-"))))
    {
        Ok(mut file) => {
            writeln!(file, "charged")?;
            mark(dir, "ledger", key)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

async fn work(ctx: TaskContext, role: Role) -> TaskResult {
    let dir = dir(&ctx)?;
    mark(
        &dir,
        "work",
        &format!("pid {} attempt {}", std::process::id(), ctx.attempt()),
    )?;
    let charged = charge_once(&dir, ctx.idempotency_key())?;
    if role == Role::Victim {
        // Hang mid-task until the test kills this process.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Ok(json!({ "charged_now": charged, "saw": ctx.upstream("prepare").cloned() }))
}

async fn finish(ctx: TaskContext) -> TaskResult {
    mark(&dir(&ctx)?, "finish", &format!("pid {}", std::process::id()))?;
    Ok(json!("done"))
}

async fn flaky(ctx: TaskContext) -> TaskResult {
    mark(
        &dir(&ctx)?,
        "flaky",
        &format!("pid {} attempt {}", std::process::id(), ctx.attempt()),
    )?;
    if ctx.attempt() == 1 {
        return Err(TaskError::new("first attempt fails"));
    }
    Ok(json!({ "attempt": ctx.attempt() }))
}

/// prepare → work → finish; `work` hangs in the victim.
pub fn mid_task_dag(role: Role) -> Dag {
    let ir = r#"{"ir_version":1,"name":"crash_mid_task","tasks":[
        {"id":"prepare","handler":"prepare"},
        {"id":"work","handler":"work","depends_on":["prepare"]},
        {"id":"finish","handler":"finish","depends_on":["work"]}]}"#;
    Dag::from_ir_json(ir)
        .unwrap_or_else(|e| panic!("crash IR: {e}"))
        .with_handler("prepare", prepare)
        .with_handler("work", move |ctx| work(ctx, role))
        .with_handler("finish", finish)
}

/// One task that fails its first attempt and retries after 3 s.
pub fn retry_backoff_dag() -> Dag {
    let ir = r#"{"ir_version":1,"name":"crash_in_backoff","tasks":[
        {"id":"flaky","handler":"flaky","retries":2,"retry_delay":3,"retry_jitter":false}]}"#;
    Dag::from_ir_json(ir)
        .unwrap_or_else(|e| panic!("crash IR: {e}"))
        .with_handler("flaky", flaky)
}

/// Two shell tasks that print their environment: one from the engine's
/// environment, one with `clean_env`.
pub fn shell_env_dag() -> Dag {
    let ir = r#"{"ir_version":1,"name":"shell_env","tasks":[
        {"id":"inherited","type":"shell","command":"env","env":{"FROM_TASK":"${params.dir}"}},
        {"id":"clean","type":"shell","command":"env","clean_env":true,"env":{"FROM_TASK":"yes"}}]}"#;
    Dag::from_ir_json(ir).unwrap_or_else(|e| panic!("shell env IR: {e}"))
}

/// A shell task that starts a background `sleep`, writes its own pid to
/// `<dir>/shell.pid` and the sleep's to `<dir>/child.pid`, and waits a minute.
pub fn shell_sleep_dag() -> Dag {
    let ir = r#"{"ir_version":1,"name":"shell_sleep","tasks":[
        {"id":"sleeper","type":"shell","env":{"DIR":"${params.dir}"},
         "command":"sleep 60 & echo $! > \"$DIR/child.pid.tmp\"; mv \"$DIR/child.pid.tmp\" \"$DIR/child.pid\"; echo $$ > \"$DIR/shell.pid.tmp\"; mv \"$DIR/shell.pid.tmp\" \"$DIR/shell.pid\"; wait"}]}"#;
    Dag::from_ir_json(ir).unwrap_or_else(|e| panic!("shell sleep IR: {e}"))
}

async fn fenced_step(ctx: TaskContext) -> TaskResult {
    let dir = dir(&ctx)?;
    let pid = std::process::id();
    let task = ctx.task_id().to_owned();
    mark(&dir, &task, &format!("start pid {pid} attempt {}", ctx.attempt()))?;
    let ms = if task == "slow" {
        ctx.params()["slow_ms"].as_u64().unwrap_or(8_000)
    } else {
        0
    };
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
        () = ctx.cancelled() => {
            mark(&dir, &task, &format!("stopped pid {pid} attempt {}", ctx.attempt()))?;
            return Err(TaskError::new("stopped"));
        }
    }
    mark(&dir, &task, &format!("end pid {pid} attempt {}", ctx.attempt()))?;
    Ok(json!({ "pid": pid }))
}

/// `first` → `slow` → `last`, with a success callback on the job; every
/// handler marks `<dir>/<task>.log` with `start`, `end` or `stopped` (when
/// its attempt is stopped), its pid and attempt; `slow` takes the `slow_ms`
/// param (8 s by default); the callback marks `<dir>/callback.log`.
pub fn fenced_dag() -> Dag {
    let ir = r#"{"ir_version":1,"name":"fenced","on_success":"done","tasks":[
        {"id":"first","handler":"step"},
        {"id":"slow","handler":"step","depends_on":["first"]},
        {"id":"last","handler":"step","depends_on":["slow"]}]}"#;
    Dag::from_ir_json(ir)
        .unwrap_or_else(|e| panic!("fenced IR: {e}"))
        .with_handler("step", fenced_step)
        .with_callback("done", |ctx: cascade_core::CallbackContext| async move {
            let dir = ctx.params["dir"].as_str().unwrap_or_default().to_owned();
            mark(
                Path::new(&dir),
                "callback",
                &format!("success pid {}", std::process::id()),
            )?;
            Ok(())
        })
}

/// A child engine process running one job, to be killed.
#[derive(Debug)]
pub struct Victim {
    pub child: Child,
    pub job_id: JobId,
}

impl Drop for Victim {
    /// A child left behind by a failed test is killed too.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory for a job's marker files.
pub fn temp_dir(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("cascade-crash-{label}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Starts `exe` (the `cascade-crash-child` binary) on `scenario` with a job
/// lease of `lease_secs` and the extra environment `env`; returns once it
/// printed its job id.
pub fn start_victim(
    exe: &str,
    url: &str,
    scenario: &str,
    dir: &Path,
    lease_secs: u64,
    env: &[(&str, &str)],
) -> Victim {
    let mut child = Command::new(exe)
        .args([url, scenario, &dir.display().to_string(), &lease_secs.to_string()])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child process");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the job id");
    let job_id = line
        .trim()
        .strip_prefix("job ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("child said {line:?}"));
    Victim { child, job_id }
}

/// Polls `done` until it holds; panics after 30 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs the child and reaps it.
pub fn sigkill(mut victim: Victim) {
    victim.child.kill().expect("SIGKILL");
    victim.child.wait().expect("reap");
}
