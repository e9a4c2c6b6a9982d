//! Shell tasks: `type: shell, command: "…"` runs `/bin/sh -c command` as a
//! child process in a process group of its own. Output is captured, bounded,
//! keeping the tail. When the attempt ends — normally, by timeout or by
//! cancellation — the whole group is killed, so no orphan survives it; when
//! the engine process itself dies, a watchdog in the group kills it.
//!
//! The command sees the job's data through its environment (`CASCADE_PARAMS`,
//! `CASCADE_UPSTREAM`, or files for large values) and the task's `env`, whose
//! `${...}` references are filled into the variables' values, never into the
//! command text. The engine's own secrets are withheld (see [`withheld`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cascade_ir::{EnvTemplate, TaskKind, TaskPlan, ValidDag};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStdin, Command};

use crate::dag::Handler;
use crate::task::{BoxFuture, TaskContext, TaskError, TaskErrorKind, TaskResult};

/// Bytes of each stream kept (the tail).
pub(crate) const OUTPUT_LIMIT: usize = 64 * 1024;

/// Largest `CASCADE_PARAMS` / `CASCADE_UPSTREAM` passed in the environment;
/// a larger one goes through a file. Linux refuses a single environment
/// string over 128 KiB, and all of them together count against `ARG_MAX`.
pub(crate) const ENV_VALUE_LIMIT: usize = 64 * 1024;

/// How long a cancelled command gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Variables a `clean_env` task keeps from the engine's environment (plus
/// every `LC_*`).
const BASICS: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// `PATH` of a `clean_env` task when the engine has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Parts of a variable name (compared in upper case) that mark a secret.
const SECRET_MARKERS: &[&str] = &[
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "API_KEY",
    "PRIVATE_KEY",
];

/// What a shell task runs.
#[derive(Debug, Clone)]
pub(crate) struct ShellSpec {
    command: String,
    env: Vec<(String, EnvTemplate)>,
    cwd: Option<String>,
    clean_env: bool,
}

/// The handler of shell task `task` of `plan`; `None` if it is not a shell task.
pub(crate) fn handler(plan: &ValidDag, task: &TaskPlan) -> Option<Handler> {
    let TaskKind::Shell {
        command,
        env,
        cwd,
        clean_env,
    } = &task.kind
    else {
        return None;
    };
    let dependencies: Vec<&str> = task
        .dependencies
        .iter()
        .map(|&d| plan.tasks()[d].id.as_str())
        .collect();
    let env: Result<Vec<_>, _> = env
        .iter()
        .map(|(name, value)| {
            EnvTemplate::parse(value, &dependencies)
                .map(|template| (name.clone(), template))
                .map_err(|e| format!("env `{name}`: {e}"))
        })
        .collect();
    let handler: Handler = match env {
        Ok(env) => {
            let spec = Arc::new(ShellSpec {
                command: command.clone(),
                env,
                cwd: cwd.clone(),
                clean_env: *clean_env,
            });
            Arc::new(move |ctx| -> BoxFuture<TaskResult> { Box::pin(run(ctx, Arc::clone(&spec))) })
        }
        // The validator checks every reference, so this is a plan from
        // elsewhere; the task fails saying why.
        Err(message) => Arc::new(move |_| -> BoxFuture<TaskResult> {
            let message = message.clone();
            Box::pin(async move { Err(TaskError::fatal(message)) })
        }),
    };
    Some(handler)
}

/// Whether a variable of the engine's environment is kept from shell tasks:
/// `DATABASE_URL` (and any name containing it), every `CASCADE_*` variable
/// (the engine's configuration, such as `CASCADE_WORKERS`; a task gets its
/// own `CASCADE_*` variables instead), and names containing `PASSWORD`,
/// `PASSWD`, `SECRET`, `TOKEN`, `CREDENTIAL`, `API_KEY` or `PRIVATE_KEY`, in
/// any case.
pub(crate) fn withheld(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.contains("DATABASE_URL")
        || upper.starts_with("CASCADE_")
        || SECRET_MARKERS.iter().any(|marker| upper.contains(marker))
}

/// The environment a shell task starts from, before its `env` and Cascade's
/// variables: the engine's without what [`withheld`] keeps back, or for
/// `clean_env` only the [`BASICS`].
fn base_env(clean: bool) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            if clean {
                BASICS.contains(&&*name) || name.starts_with("LC_")
            } else {
                !withheld(&name)
            }
        })
        .collect();
    if clean && !env.iter().any(|(name, _)| name == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

/// A file holding a value too large for the environment; removed when the
/// attempt ends (a crash of the engine can leave it in the temp dir).
struct DataFile(PathBuf);

impl Drop for DataFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `text` to a new file readable only by this user.
async fn data_file(ctx: &TaskContext, kind: &str, text: String) -> Result<DataFile, TaskError> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "cascade-{}-{}-{}-{}-{}-{kind}.json",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        ctx.job_id(),
        ctx.task_id(),
        ctx.attempt()
    );
    let path = std::env::temp_dir().join(name);
    let write = move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        // From here on the guard removes the file, also when writing fails.
        let guard = DataFile(path);
        file.write_all(text.as_bytes())?;
        Ok::<_, std::io::Error>(guard)
    };
    match tokio::task::spawn_blocking(write).await {
        Ok(Ok(guard)) => Ok(guard),
        Ok(Err(e)) => Err(TaskError::new(format!(
            "could not write the {kind} file in {}: {e}",
            std::env::temp_dir().display()
        ))),
        Err(e) => Err(TaskError::new(format!("writing the {kind} file failed: {e}"))),
    }
}

/// Sets `NAME` to `text`, or `NAME_FILE` to a file holding it when it is too
/// large for the environment.
async fn pass_data(
    ctx: &TaskContext,
    command: &mut Command,
    name: &str,
    text: String,
    files: &mut Vec<DataFile>,
) -> Result<(), TaskError> {
    if text.len() <= ENV_VALUE_LIMIT {
        command.env(name, text);
    } else {
        let kind = name.trim_start_matches("CASCADE_").to_ascii_lowercase();
        let file = data_file(ctx, &kind, text).await?;
        command.env(format!("{name}_FILE"), &file.0);
        files.push(file);
    }
    Ok(())
}

/// Kills the process group when dropped: covers the timeout (the future is
/// dropped), cancellation and normal exit (background children).
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pgid) = self.0.and_then(|id| i32::try_from(id).ok()) {
            // ESRCH (the group is gone already) is fine.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Starts the watchdog that leads the task's process group: a `/bin/sh` that
/// blocks reading a pipe whose only writer is this engine process, then
/// SIGKILLs its own group (`kill -9 0`). It ignores SIGTERM (and SIGINT,
/// SIGHUP), so a cancellation's SIGTERM to the group or a command's own
/// `kill 0` leaves it watching; the engine ends it with the group's SIGKILL.
///
/// The read returns when the write end closes, which the kernel does when
/// the engine process exits in any way, SIGKILL included; the engine never
/// writes to it. So a shell task never runs on beside the re-run that
/// recovery starts elsewhere. Why this design:
///
/// - It needs no `unsafe` (`pre_exec` + `prctl(PR_SET_PDEATHSIG)` would) and
///   no util-linux: `setpriv --pdeathsig` would also only reach the direct
///   child (not what the command starts), and the parent-death signal fires
///   when the spawning *thread* exits, which tokio's blocking-pool threads
///   do when idle.
/// - It does not poll, and cannot hit a recycled pid: a pipe's end is never
///   reused, and `kill 0` names the watchdog's own group, which exists as long
///   as the watchdog does. The write end is close-on-exec, so no other child
///   keeps it open.
/// - Leading the group, the watchdog is started first: if the engine dies
///   before the command starts, there is no command.
///
/// The task's command joins this group; killing the group (end of the
/// attempt, timeout, cancellation) ends the watchdog too.
fn spawn_watchdog() -> std::io::Result<(Child, ChildStdin)> {
    let mut watchdog = Command::new("/bin/sh")
        .arg("-c")
        .arg("trap '' HUP INT TERM; read -r line; kill -9 0")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = watchdog
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the watchdog has no stdin"))?;
    Ok((watchdog, stdin))
}

/// Runs one attempt of a shell task.
async fn run(ctx: TaskContext, spec: Arc<ShellSpec>) -> TaskResult {
    let params = ctx.params();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .env_clear()
        .envs(base_env(spec.clean_env));
    for (name, template) in &spec.env {
        let value = template
            .render(params, &|task| ctx.upstream(task))
            .map_err(|e| TaskError::fatal(format!("env `{name}`: {e}")))?;
        command.env(name, value);
    }
    // Cascade's variables come last, so a task's `env` cannot hide them.
    command
        .env("CASCADE_JOB_ID", ctx.job_id().to_string())
        .env("CASCADE_TASK_ID", ctx.task_id())
        .env("CASCADE_ATTEMPT", ctx.attempt().to_string())
        .env("CASCADE_IDEMPOTENCY_KEY", ctx.idempotency_key());
    let upstream: Map<String, Value> = ctx
        .dependency_ids()
        .into_iter()
        .map(|id| (id.to_owned(), ctx.upstream(id).cloned().unwrap_or(Value::Null)))
        .collect();
    let mut files = Vec::new();
    pass_data(
        &ctx,
        &mut command,
        "CASCADE_PARAMS",
        params.to_string(),
        &mut files,
    )
    .await?;
    pass_data(
        &ctx,
        &mut command,
        "CASCADE_UPSTREAM",
        Value::Object(upstream).to_string(),
        &mut files,
    )
    .await?;

    let (mut watchdog, _watchdog_pipe) =
        spawn_watchdog().map_err(|e| TaskError::new(format!("could not start `/bin/sh`: {e}")))?;
    let group = GroupGuard(watchdog.id());
    let Some(pgid) = watchdog.id().and_then(|id| i32::try_from(id).ok()) else {
        return Err(TaskError::new("the shell task's watchdog exited at once"));
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(pgid);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|e| {
        TaskError::fatal(format!(
            "could not start `/bin/sh -c {}`{}: {e}",
            spec.command,
            spec.cwd
                .as_deref()
                .map(|c| format!(" in {c}"))
                .unwrap_or_default()
        ))
    })?;
    let stdout = tokio::spawn(read_tail(child.stdout.take()));
    let stderr = tokio::spawn(read_tail(child.stderr.take()));

    let status = tokio::select! {
        status = child.wait() => status,
        () = ctx.cancelled() => {
            group.signal(nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_err() {
                group.signal(nix::sys::signal::Signal::SIGKILL);
            }
            drop(group);
            reap(&mut watchdog).await;
            return Err(TaskError::with_kind(TaskErrorKind::Cancelled, "shell command cancelled"));
        }
    };
    // Background children would hold the pipes open: end the group first.
    drop(group);
    reap(&mut watchdog).await;
    drop(files);
    let stdout = stdout.await.unwrap_or_default();
    // Diagnostics only: a NUL there is shown as U+FFFD rather than failing a
    // command that succeeded.
    let stderr = stderr.await.unwrap_or_default().replace('\0', "\u{FFFD}");
    let status = status.map_err(|e| TaskError::new(format!("waiting for the shell command failed: {e}")))?;
    let output = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    match status.code() {
        // The result is text that the store keeps; binary output is refused
        // here, with a message that says what to do, rather than as a
        // result that breaks a limit.
        Some(0) if stdout.contains('\0') => Err(TaskError::fatal(format!(
            "command wrote NUL bytes to stdout (at byte {}), which a task result cannot hold: \
             encode binary output (e.g. pipe it through base64) or write it to a file",
            stdout.find('\0').unwrap_or_default()
        ))
        .with_output(output)),
        Some(0) => Ok(json!({ "exit_code": 0, "stdout": stdout, "stderr": stderr })),
        Some(code @ (126 | 127)) => Err(TaskError::fatal(format!(
            "command exited with status {code} (not found or not executable): {}",
            last_line(&stderr)
        ))
        .with_output(output)),
        Some(code) => Err(TaskError::new(format!(
            "command exited with status {code}: {}",
            last_line(&stderr)
        ))
        .with_output(output)),
        None => Err(TaskError::new("command was killed by a signal").with_output(output)),
    }
}

/// Waits for the watchdog, which the group's SIGKILL has ended, so that no
/// zombie is left (a watchdog dropped on another path is reaped by tokio).
async fn reap(watchdog: &mut Child) {
    let _ = watchdog.start_kill();
    let _ = watchdog.wait().await;
}

/// The attempt output stored for a successful shell task: its stdout and stderr.
pub(crate) fn success_output(result: &Value) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        result["stdout"].as_str().unwrap_or_default(),
        result["stderr"].as_str().unwrap_or_default()
    )
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no stderr)")
}

/// Reads a stream to its end, keeping at most [`OUTPUT_LIMIT`] bytes of its tail.
async fn read_tail<R: AsyncRead + Unpin>(stream: Option<R>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut dropped = 0usize;
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend(&chunk[..n]);
                if tail.len() > OUTPUT_LIMIT {
                    let excess = tail.len() - OUTPUT_LIMIT;
                    tail.drain(..excess);
                    dropped += excess;
                }
            }
        }
    }
    let (a, b) = tail.as_slices();
    let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
    if dropped > 0 {
        format!("[… {dropped} earlier bytes dropped …]\n{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_engine_settings_are_withheld() {
        for name in [
            "DATABASE_URL",
            "REPLICA_DATABASE_URL",
            "CASCADE_WORKERS",
            "cascade_anything",
            "PGPASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "GITHUB_TOKEN",
            "openai_api_key",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ] {
            assert!(withheld(name), "{name}");
        }
        for name in ["PATH", "HOME", "RUST_LOG", "APP_MODE", "LANG"] {
            assert!(!withheld(name), "{name}");
        }
    }
}
