//! The invariants checked at the end of a run, from the store and the
//! ledger. See RELIABILITY.md for the rules in prose.
//!
//! Times are the ledger's (Unix ms, one clock for the whole machine) and the
//! store's timestamps (written by the engines, on the same clock).

use std::collections::{BTreeMap, HashMap};

use cascade_core::{JobStatus, TaskStatus};
use serde_json::{Value, json};

use crate::driver::JobData;
use crate::ledger::Entry;

/// Slack for the ledger's own delays: a line is written a little after
/// the event it records, a process killed a little after the `kill` call.
const SLACK_MS: u64 = 2_000;

/// The lease settings the engines ran with, in ms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leases {
    /// Job lease of the all-in-one engines and schedulers; also the task
    /// lease of workers (3 heartbeats).
    pub(crate) lease_ms: u64,
}

impl Leases {
    /// How long after an engine stopped renewing another may take its work
    /// over, at the earliest: it renews every third of a lease, so its
    /// lease still runs for at least two thirds of one; half is used.
    fn lapse_min(self) -> u64 {
        self.lease_ms / 2
    }

    /// How long an engine that can run again may take to stop an attempt it
    /// no longer holds: its next lease check (a third of a lease) plus a
    /// full lease for the store round trips, plus [`SLACK_MS`].
    fn stop_bound(self) -> u64 {
        self.lease_ms + SLACK_MS
    }
}

/// One invariant that did not hold, with its evidence.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    pub(crate) check: &'static str,
    pub(crate) job: Option<String>,
    pub(crate) task: Option<String>,
    pub(crate) evidence: Vec<String>,
}

impl Violation {
    fn new(check: &'static str, job: impl ToString, task: Option<&str>, evidence: Vec<String>) -> Violation {
        Violation {
            check,
            job: Some(job.to_string()),
            task: task.map(str::to_owned),
            evidence,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({ "check": self.check, "job": self.job, "task": self.task, "evidence": self.evidence })
    }
}

/// One execution of a task: a handler call or a shell command, from its
/// `start` line to its end.
#[derive(Debug, Clone)]
pub(crate) struct Execution {
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) job: String,
    pub(crate) task: String,
    pub(crate) attempt: u64,
    pub(crate) key: String,
    pub(crate) start: u64,
    /// When it ended: its `end` line, the `gone` seen by the shell watcher,
    /// or (for a handler, which dies with its process) the kill of its
    /// process. `None`: still running when the run ended.
    pub(crate) end: Option<u64>,
    pub(crate) outcome: String,
    pub(crate) evidence: Vec<String>,
}

impl Execution {
    fn shell(&self) -> bool {
        self.id.contains(".sh")
    }

    fn slot(&self) -> &str {
        self.node.split('.').next().unwrap_or("")
    }

    fn describe(&self) -> String {
        format!(
            "exec {} on {} attempt {} ran {}..{} ({}): {}",
            self.id,
            self.node,
            self.attempt,
            self.start,
            self.end.map_or("never ended".to_owned(), |e| e.to_string()),
            self.outcome,
            self.evidence.join(" | ")
        )
    }
}

/// A time during which a process could not renew its leases: frozen
/// (SIGSTOP, or a stall it measured itself), cut off the database, or the
/// database restarting.
#[derive(Debug, Clone)]
struct Window {
    scope: Scope,
    from: u64,
    to: u64,
    line: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Scope {
    All,
    Slot(String),
    Node(String),
}

impl Window {
    fn covers(&self, execution: &Execution) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Slot(slot) => slot == execution.slot(),
            Scope::Node(node) => *node == execution.node,
        }
    }
}

/// What the ledger says, parsed.
#[derive(Debug, Default)]
pub(crate) struct LedgerFacts {
    pub(crate) executions: Vec<Execution>,
    windows: Vec<Window>,
    callbacks: Vec<Entry>,
    /// Non-final kills: node → time.
    kills: HashMap<String, u64>,
    /// Re-runs that were (or may have been) committed, per job.
    reruns: HashMap<String, u64>,
    crashes: Vec<Entry>,
    /// Per kind: (count, and for PostgreSQL restarts, when it was back).
    pub(crate) faults: BTreeMap<String, u64>,
    pub(crate) restarts_back: Vec<u64>,
}

pub(crate) fn read_ledger(entries: &[Entry]) -> LedgerFacts {
    let mut facts = LedgerFacts::default();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut final_kill: HashMap<String, u64> = HashMap::new();
    for entry in entries {
        match entry.kind.as_str() {
            "start" => {
                by_id.insert(entry.get("exec").to_owned(), facts.executions.len());
                facts.executions.push(Execution {
                    id: entry.get("exec").to_owned(),
                    node: entry.get("node").to_owned(),
                    job: entry.get("job").to_owned(),
                    task: entry.get("task").to_owned(),
                    attempt: entry.number("attempt").unwrap_or(0),
                    key: entry.get("key").to_owned(),
                    start: entry.at,
                    end: None,
                    outcome: "running".to_owned(),
                    evidence: vec![entry.line.clone()],
                });
            }
            "end" | "gone" => {
                if let Some(&i) = by_id.get(entry.get("exec")) {
                    let execution = &mut facts.executions[i];
                    execution.evidence.push(entry.line.clone());
                    if execution.end.is_none_or(|end| entry.at < end) {
                        execution.end = Some(entry.at);
                        execution.outcome = match entry.kind.as_str() {
                            "end" => entry.get("outcome").to_owned(),
                            _ => "gone".to_owned(),
                        };
                    }
                }
            }
            "kill" => {
                if entry.get("final") == "1" {
                    final_kill.insert(entry.get("node").to_owned(), entry.at);
                } else {
                    facts.kills.insert(entry.get("node").to_owned(), entry.at);
                }
            }
            "exit" => facts.crashes.push(entry.clone()),
            "callback" => facts.callbacks.push(entry.clone()),
            "rerun" => {
                let result = entry.get("result");
                if result == "ok" || result.starts_with("unknown") {
                    *facts.reruns.entry(entry.get("job").to_owned()).or_default() += 1;
                }
            }
            "stall" => facts.windows.push(Window {
                scope: Scope::Node(entry.get("node").to_owned()),
                from: entry.number("from").unwrap_or(entry.at),
                to: entry.number("to").unwrap_or(entry.at),
                line: entry.line.clone(),
            }),
            "fault" => {
                let kind = entry.get("kind").to_owned();
                *facts.faults.entry(kind.clone()).or_default() += 1;
                let scope = entry.get("scope");
                let scope = if scope == "all" {
                    Scope::All
                } else if let Some(slot) = scope.strip_prefix("slot:") {
                    Scope::Slot(slot.to_owned())
                } else {
                    Scope::Node(scope.trim_start_matches("node:").to_owned())
                };
                let (from, to) = (entry.number("from"), entry.number("to"));
                if let (Some(from), Some(to)) = (from, to)
                    && kind != "sigkill"
                {
                    facts.windows.push(Window {
                        scope,
                        from,
                        to,
                        line: entry.line.clone(),
                    });
                    if kind.starts_with("pg_") {
                        facts.restarts_back.push(to);
                    }
                }
            }
            _ => {}
        }
    }
    // A handler dies with its process; a shell command's death is seen by
    // the watcher (`gone`), since it may outlive its engine.
    for execution in &mut facts.executions {
        if execution.end.is_none()
            && !execution.shell()
            && let Some(&killed) = facts.kills.get(&execution.node)
        {
            execution.end = Some(killed);
            execution.outcome = "killed".to_owned();
        }
    }
    // A shell command still running when the run ended dies with the final
    // kills: that is no end of its own.
    for execution in &mut facts.executions {
        if execution.outcome == "gone"
            && let Some(&killed) = final_kill.get(&execution.node)
            && execution.end.is_some_and(|end| end >= killed)
        {
            execution.end = None;
            execution.outcome = "running at the end of the run".to_owned();
        }
    }
    facts
}

/// The execution whose result the store committed as the task's success.
fn committed_execution(result: Option<&Value>) -> Option<String> {
    let result = result?;
    if let Some(exec) = result["exec"].as_str() {
        return Some(exec.to_owned());
    }
    result["stdout"]
        .as_str()?
        .lines()
        .find_map(|line| line.strip_prefix("exec="))
        .map(str::to_owned)
}

/// Whether `stale` running beside (or after) `other` is the allowed case:
/// it is not the execution whose success was committed, its process could
/// not renew its lease (a window that began at least half a lease before
/// `other` started, and that overlapped `stale` or ended just before it
/// started: a frozen process starts a claimed attempt when it resumes), and
/// it stopped within [`Leases::stop_bound`] of the later of the window's
/// end and `other`'s start.
fn stale_but_stopped(
    stale: &Execution,
    other: &Execution,
    committed: Option<&str>,
    windows: &[Window],
    leases: Leases,
) -> Option<String> {
    if committed == Some(stale.id.as_str()) {
        return None;
    }
    let end = stale.end?;
    windows
        .iter()
        .filter(|w| w.covers(stale))
        .find(|w| {
            w.from + leases.lapse_min() <= other.start
                && w.from < end
                && w.to + 1_000 >= stale.start
                && end <= w.to.max(other.start) + leases.stop_bound()
        })
        .map(|w| w.line.clone())
}

/// Runs every check; returns the violations.
pub(crate) fn check(
    store: &[JobData],
    facts: &LedgerFacts,
    garbled: &[String],
    leases: Leases,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for line in garbled {
        violations.push(Violation {
            check: "ledger_line_garbled",
            job: None,
            task: None,
            evidence: vec![line.clone()],
        });
    }
    for crash in &facts.crashes {
        violations.push(Violation {
            check: "engine_process_exited_by_itself",
            job: None,
            task: None,
            evidence: vec![crash.line.clone()],
        });
    }

    let mut executions: HashMap<(&str, &str), Vec<&Execution>> = HashMap::new();
    for execution in &facts.executions {
        executions
            .entry((execution.job.as_str(), execution.task.as_str()))
            .or_default()
            .push(execution);
        let expected_key = format!("{}:{}", execution.job, execution.task);
        if execution.key != expected_key {
            violations.push(Violation::new(
                "idempotency_key_differs",
                &execution.job,
                Some(&execution.task),
                vec![format!("expected {expected_key}"), execution.describe()],
            ));
        }
        match execution.end {
            None => violations.push(Violation::new(
                "execution_never_ended",
                &execution.job,
                Some(&execution.task),
                vec![execution.describe()],
            )),
            Some(end) => {
                if let Some(&killed) = facts.kills.get(&execution.node)
                    && execution.start <= killed
                    && end > killed + SLACK_MS
                {
                    violations.push(Violation::new(
                        "execution_outlived_its_engine",
                        &execution.job,
                        Some(&execution.task),
                        vec![
                            format!("{} killed at {killed}", execution.node),
                            execution.describe(),
                        ],
                    ));
                }
            }
        }
    }

    for data in store {
        let job = &data.job;
        let job_id = job.id.to_string();
        if !job.status.is_terminal() {
            violations.push(Violation::new(
                "job_not_terminal",
                &job_id,
                None,
                vec![
                    format!(
                        "job {job_id} is {} (owner {:?}, lease until {:?})",
                        job.status, job.owner, job.lease_expires_at
                    ),
                    format!(
                        "tasks: {}",
                        data.tasks
                            .iter()
                            .map(|t| format!("{}={}@{}", t.task_id, t.status, t.attempt))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ],
            ));
        }
        for task in &data.tasks {
            if job.status.is_terminal() && !task.status.is_terminal() {
                violations.push(Violation::new(
                    "terminal_job_with_unfinished_task",
                    &job_id,
                    Some(&task.task_id),
                    vec![format!(
                        "job {} but task {} is {}",
                        job.status, task.task_id, task.status
                    )],
                ));
            }
            if job.status == JobStatus::Success
                && !matches!(task.status, TaskStatus::Success | TaskStatus::Skipped)
            {
                violations.push(Violation::new(
                    "successful_job_with_unsuccessful_task",
                    &job_id,
                    Some(&task.task_id),
                    vec![format!(
                        "job success but task {} is {}",
                        task.task_id, task.status
                    )],
                ));
            }
            let attempts = data.attempts.get(&task.task_id).map_or(&[][..], Vec::as_slice);
            let successes: Vec<String> = attempts
                .iter()
                .filter(|a| a.status == TaskStatus::Success)
                .map(|a| {
                    format!(
                        "attempt {} success by {:?} at {:?}",
                        a.attempt, a.worker, a.finished_at
                    )
                })
                .collect();
            if successes.len() > 1 {
                violations.push(Violation::new(
                    "success_committed_twice",
                    &job_id,
                    Some(&task.task_id),
                    successes,
                ));
            }
            let runs = executions
                .get(&(job_id.as_str(), task.task_id.as_str()))
                .cloned()
                .unwrap_or_default();
            let committed = (task.status == TaskStatus::Success)
                .then(|| committed_execution(task.result.as_ref()))
                .flatten();
            if task.status == TaskStatus::Success {
                let finished = runs
                    .iter()
                    .find(|e| Some(e.id.as_str()) == committed.as_deref() && e.outcome == "ok");
                match finished {
                    Some(execution) if execution.attempt == u64::from(task.attempt) => {}
                    Some(execution) => violations.push(Violation::new(
                        "stored_attempt_is_not_the_successful_one",
                        &job_id,
                        Some(&task.task_id),
                        vec![
                            format!(
                                "task row: success at attempt {}, result from attempt {}",
                                task.attempt, execution.attempt
                            ),
                            execution.describe(),
                        ],
                    )),
                    None => violations.push(Violation::new(
                        "committed_result_not_from_a_finished_execution",
                        &job_id,
                        Some(&task.task_id),
                        vec![
                            format!(
                                "stored success of attempt {} names execution {committed:?}",
                                task.attempt
                            ),
                            runs.iter().map(|e| e.describe()).collect::<Vec<_>>().join(" || "),
                        ],
                    )),
                }
            }
            check_runs(
                &job_id,
                task,
                &runs,
                committed.as_deref(),
                facts,
                leases,
                &mut violations,
            );
        }
        check_callbacks(data, facts, &mut violations);
    }
    violations
}

/// Overlaps between executions of one task, and executions after its
/// committed success.
fn check_runs(
    job_id: &str,
    task: &cascade_core::TaskExecution,
    runs: &[&Execution],
    committed: Option<&str>,
    facts: &LedgerFacts,
    leases: Leases,
    violations: &mut Vec<Violation>,
) {
    let mut runs = runs.to_vec();
    runs.sort_by_key(|e| e.start);
    for (i, earlier) in runs.iter().enumerate() {
        for later in &runs[i + 1..] {
            let overlaps = earlier.end.is_none_or(|end| later.start < end);
            if !overlaps {
                continue;
            }
            let excused = stale_but_stopped(earlier, later, committed, &facts.windows, leases)
                .or_else(|| stale_but_stopped(later, earlier, committed, &facts.windows, leases));
            if excused.is_none() {
                violations.push(Violation::new(
                    "attempts_overlap",
                    job_id,
                    Some(&task.task_id),
                    vec![
                        earlier.describe(),
                        later.describe(),
                        format!("committed execution: {committed:?}"),
                    ],
                ));
            }
        }
    }
    // Nothing starts after the success was committed (`completed_at` is
    // taken before the commit, so it is early, never late).
    let (Some(committed), Some(completed_at)) = (committed, task.completed_at) else {
        return;
    };
    let Some(winner) = runs.iter().find(|e| e.id == committed) else {
        return;
    };
    let completed_ms = completed_at.timestamp_millis().max(0) as u64;
    for run in &runs {
        if run.id != committed
            && run.start > completed_ms
            && stale_but_stopped(run, winner, Some(committed), &facts.windows, leases).is_none()
        {
            violations.push(Violation::new(
                "ran_after_its_success_was_committed",
                job_id,
                Some(&task.task_id),
                vec![
                    format!("success committed at {completed_ms} ({completed_at})"),
                    winner.describe(),
                    run.describe(),
                ],
            ));
        }
    }
}

/// Each callback once per event, and only for an outcome that was committed.
fn check_callbacks(data: &JobData, facts: &LedgerFacts, violations: &mut Vec<Violation>) {
    let job_id = data.job.id.to_string();
    let mine: Vec<&Entry> = facts
        .callbacks
        .iter()
        .filter(|c| c.get("job") == job_id)
        .collect();
    let mut seen: HashMap<(String, String, String), Vec<&Entry>> = HashMap::new();
    let mut job_level = Vec::new();
    for callback in &mine {
        let task = callback.get("task");
        if task == "-" {
            job_level.push(callback.line.clone());
            continue;
        }
        seen.entry((
            task.to_owned(),
            callback.get("event").to_owned(),
            callback.get("attempt").to_owned(),
        ))
        .or_default()
        .push(callback);
        let attempt = callback.number("attempt").unwrap_or(0);
        // A task that failed because it was lost too often has its last
        // attempt recorded as `lost`.
        let expected: &[TaskStatus] = match callback.get("event") {
            "success" => &[TaskStatus::Success],
            "failure" => &[TaskStatus::Failed, TaskStatus::Lost],
            _ => &[TaskStatus::UpForRetry],
        };
        let attempts = data.attempts.get(task).map_or(&[][..], Vec::as_slice);
        if !attempts
            .iter()
            .any(|a| u64::from(a.attempt) == attempt && expected.contains(&a.status))
        {
            violations.push(Violation::new(
                "callback_without_committed_outcome",
                &job_id,
                Some(task),
                vec![
                    callback.line.clone(),
                    format!(
                        "stored attempts: {}",
                        attempts
                            .iter()
                            .map(|a| format!("{}={}", a.attempt, a.status))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                ],
            ));
        }
    }
    for ((task, _, _), lines) in seen {
        if lines.len() > 1 {
            violations.push(Violation::new(
                "callback_fired_twice",
                &job_id,
                Some(&task),
                lines.iter().map(|l| l.line.clone()).collect(),
            ));
        }
    }
    // A DAG's callback fires once per run of the job: the first run and each
    // re-run that was (or may have been) committed.
    let runs = 1 + facts.reruns.get(&job_id).copied().unwrap_or(0);
    if job_level.len() as u64 > runs {
        let mut evidence = job_level.clone();
        evidence.push(format!("runs of the job: {runs}"));
        violations.push(Violation::new("callback_fired_twice", &job_id, None, evidence));
    }
    let last_success = mine
        .iter()
        .any(|c| c.get("task") == "-" && c.get("event") == "success");
    if last_success && data.job.status != JobStatus::Success {
        violations.push(Violation::new(
            "callback_without_committed_outcome",
            &job_id,
            None,
            vec![format!("job is {}", data.job.status), job_level.join(" | ")],
        ));
    }
}

/// Recovery after each PostgreSQL restart: from the server being back to
/// the first task started after it, in ms.
pub(crate) fn recovery_times(facts: &LedgerFacts) -> Vec<u64> {
    let mut starts: Vec<u64> = facts.executions.iter().map(|e| e.start).collect();
    starts.sort_unstable();
    facts
        .restarts_back
        .iter()
        .filter_map(|&back| {
            let i = starts.partition_point(|&s| s <= back);
            starts.get(i).map(|&first| first - back)
        })
        .collect()
}
