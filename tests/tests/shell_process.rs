//! Shell tasks and the engine process around them, with a real child engine
//! process: the engine's secrets stay out of a task's environment, and a
//! shell task dies with an engine killed by SIGKILL.

use std::path::Path;
use std::time::{Duration, Instant};

use cascade_core::{JobStatus, Store, TaskStatus};
use cascade_tests::backend_tests;
use cascade_tests::crash::{start_victim, temp_dir};

backend_tests!(
    shell_tasks_do_not_see_the_engine_secrets,
    shell_tasks_die_with_the_engine
);

/// `NAME=value` lines of `env` output, as (name, value).
fn variables(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

async fn shell_tasks_do_not_see_the_engine_secrets(url: &str) {
    let dir = temp_dir("env");
    let engine = start_victim(
        env!("CARGO_BIN_EXE_cascade-crash-child"),
        url,
        "shell_env",
        &dir,
        1,
        &[
            ("DATABASE_URL", url),
            ("PGPASSWORD", "hunter2"),
            ("MY_SERVICE_TOKEN", "tok-123"),
            ("CASCADE_WORKERS", "2"),
            ("APP_MODE", "visible"),
        ],
    );
    let store = Store::open(Some(url)).await.expect("store");
    let start = Instant::now();
    let job = loop {
        let job = store.get_job(engine.job_id).await.expect("job");
        if job.status.is_terminal() {
            break job;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the job never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job.status, JobStatus::Success);
    let rows = store
        .list_task_executions_for_job(engine.job_id)
        .await
        .expect("tasks");
    let env_of = |task: &str| {
        let row = rows.iter().find(|r| r.task_id == task).expect("row");
        assert_eq!(row.status, TaskStatus::Success);
        let stdout = row.result.as_ref().expect("result")["stdout"]
            .as_str()
            .expect("stdout")
            .to_owned();
        variables(&stdout)
    };
    let names = |vars: &[(String, String)]| vars.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let value =
        |vars: &[(String, String)], name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());

    let inherited = env_of("inherited");
    for secret in [
        "DATABASE_URL",
        "PGPASSWORD",
        "MY_SERVICE_TOKEN",
        "CASCADE_WORKERS",
    ] {
        assert!(
            !names(&inherited).iter().any(|n| n == secret),
            "{secret} reached the shell task: {inherited:?}"
        );
    }
    assert!(
        !inherited
            .iter()
            .any(|(_, v)| v.contains("hunter2") || v.contains("tok-123")),
        "a secret's value reached the shell task"
    );
    assert_eq!(value(&inherited, "APP_MODE").as_deref(), Some("visible"));
    assert_eq!(
        value(&inherited, "FROM_TASK").as_deref(),
        Some(dir.display().to_string().as_str())
    );
    assert_eq!(value(&inherited, "CASCADE_TASK_ID").as_deref(), Some("inherited"));
    assert_eq!(
        value(&inherited, "CASCADE_PARAMS"),
        Some(serde_json::json!({ "dir": dir.display().to_string() }).to_string())
    );

    let clean = env_of("clean");
    assert_eq!(value(&clean, "APP_MODE"), None, "clean_env kept APP_MODE");
    assert!(value(&clean, "PATH").is_some(), "clean_env dropped PATH");
    assert_eq!(value(&clean, "FROM_TASK").as_deref(), Some("yes"));
    assert_eq!(value(&clean, "CASCADE_TASK_ID").as_deref(), Some("clean"));
    assert_eq!(value(&clean, "CASCADE_UPSTREAM").as_deref(), Some("{}"));
    assert_eq!(value(&clean, "DATABASE_URL"), None);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a process is gone: no such pid, or a zombie nobody reaped yet
/// (the container's init may not reap orphans).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) state …`; comm may hold spaces or parentheses.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn shell_tasks_die_with_the_engine(url: &str) {
    let dir = temp_dir("death");
    let mut engine = start_victim(
        env!("CARGO_BIN_EXE_cascade-crash-child"),
        url,
        "shell_sleep",
        &dir,
        1,
        &[],
    );
    let start = Instant::now();
    let (shell, sleeper) = loop {
        if let (Some(shell), Some(sleeper)) =
            (read_pid(&dir.join("shell.pid")), read_pid(&dir.join("child.pid")))
        {
            break (shell, sleeper);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the shell task never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!process_gone(shell) && !process_gone(sleeper));

    engine.child.kill().expect("SIGKILL the engine");
    engine.child.wait().expect("reap the engine");
    let killed = Instant::now();
    while !(process_gone(shell) && process_gone(sleeper)) {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the shell task outlived its engine: shell {shell} gone {}, sleep {sleeper} gone {}",
            process_gone(shell),
            process_gone(sleeper)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
