//! Shell tasks: `type: shell, command: "…"` runs `/bin/sh -c command` as a
//! child process in a process group of its own. Output is captured, bounded,
//! keeping the tail. When the attempt ends — normally, by timeout or by
//! cancellation — the whole group is killed, so no orphan survives it.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::task::{TaskContext, TaskError, TaskErrorKind, TaskResult};

/// Bytes of each stream kept (the tail).
pub(crate) const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long a cancelled command gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// What a shell task runs.
#[derive(Debug, Clone)]
pub(crate) struct ShellSpec {
    pub(crate) command: String,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) cwd: Option<String>,
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

/// Runs one attempt of a shell task.
pub(crate) async fn run(ctx: TaskContext, spec: ShellSpec) -> TaskResult {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .envs(&spec.env)
        .env("CASCADE_JOB_ID", ctx.job_id().to_string())
        .env("CASCADE_TASK_ID", ctx.task_id())
        .env("CASCADE_ATTEMPT", ctx.attempt().to_string())
        .env("CASCADE_IDEMPOTENCY_KEY", ctx.idempotency_key())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
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
    let group = GroupGuard(child.id());
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
            return Err(TaskError::with_kind(TaskErrorKind::Cancelled, "shell command cancelled"));
        }
    };
    // Background children would hold the pipes open: end the group first.
    drop(group);
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
