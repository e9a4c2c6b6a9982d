//! The DAGs of a run, generated from its seed, and their handlers and
//! callbacks, which record every start, end and callback in the ledger.
//!
//! Every process builds the same set from the same seed. A task's id ends
//! in its behaviour (`t3_flaky`), which the one Rust handler reads; what an
//! attempt then does (how long it sleeps, whether it fails) is drawn from
//! the seed, the job, the task and the attempt number, so each job of a DAG
//! behaves a little differently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cascade_core::{CallbackContext, CallbackEvent, CallbackResult, Dag, TaskContext, TaskError, TaskResult};
use serde_json::{Value, json};

use crate::ledger::Ledger;
use crate::rng::Rng;

/// How many DAGs a run registers.
pub(crate) const DAG_COUNT: usize = 8;

/// What a process needs to record its side effects.
#[derive(Debug)]
pub(crate) struct NodeEnv {
    /// The process's incarnation name, e.g. `all1.g2`.
    pub(crate) node: String,
    pub(crate) seed: u64,
    pub(crate) ledger: Ledger,
    executions: AtomicU64,
}

impl NodeEnv {
    pub(crate) fn new(node: String, seed: u64, ledger: Ledger) -> NodeEnv {
        NodeEnv {
            node,
            seed,
            ledger,
            executions: AtomicU64::new(0),
        }
    }

    /// A name for one execution of a handler, unique in the run.
    fn next_execution(&self) -> String {
        format!(
            "{}.{}.{}",
            self.node,
            std::process::id(),
            self.executions.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// The DAGs of the run, with their handlers and callbacks bound to `env`.
pub(crate) fn dag_set(seed: u64, env: &Arc<NodeEnv>) -> Vec<Dag> {
    (0..DAG_COUNT)
        .map(|index| {
            let ir = dag_ir(seed, index);
            let (handler_env, task_env, job_env) = (Arc::clone(env), Arc::clone(env), Arc::clone(env));
            Dag::from_ir_json(&ir.to_string())
                .unwrap_or_else(|error| panic!("BUG: generated IR is invalid: {error}\n{ir}"))
                .with_handler("step", move |ctx| step(ctx, Arc::clone(&handler_env)))
                .with_callback("task_callback", move |ctx| callback(ctx, Arc::clone(&task_env)))
                .with_callback("job_callback", move |ctx| callback(ctx, Arc::clone(&job_env)))
        })
        .collect()
}

/// The name of DAG `index`.
pub(crate) fn dag_name(index: usize) -> String {
    format!("chaos_{index}")
}

const BEHAVIOURS: [&str; 5] = ["ok", "flaky", "fatal", "hang", "sh"];
const BEHAVIOUR_WEIGHTS: [u64; 5] = [45, 20, 5, 10, 20];

/// The JSON IR of DAG `index`: a chain, a fan-out, a diamond or random
/// layers, of tasks with random behaviours, retries and callbacks.
fn dag_ir(seed: u64, index: usize) -> Value {
    let mut rng = Rng::for_parts(seed, &["dag", &index.to_string()]);
    let mut deps: Vec<Vec<usize>> = Vec::new();
    match index % 4 {
        0 => {
            let length = rng.range(2, 6) as usize;
            for i in 0..length {
                deps.push(if i == 0 { vec![] } else { vec![i - 1] });
            }
        }
        1 => {
            let width = rng.range(2, 8) as usize;
            deps.push(vec![]);
            for _ in 0..width {
                deps.push(vec![0]);
            }
            deps.push((1..=width).collect());
        }
        2 => {
            deps.extend([vec![], vec![0], vec![0], vec![1, 2]]);
            if rng.chance(0.5) {
                deps.push(vec![3]);
            }
        }
        _ => {
            let mut previous: Vec<usize> = Vec::new();
            for _ in 0..rng.range(2, 4) {
                let width = rng.range(1, 3) as usize;
                let mut layer = Vec::new();
                for _ in 0..width {
                    let mut mine: Vec<usize> = Vec::new();
                    if !previous.is_empty() {
                        for _ in 0..rng.range(1, 2) {
                            let d = *rng.pick(&previous);
                            if !mine.contains(&d) {
                                mine.push(d);
                            }
                        }
                    }
                    layer.push(deps.len());
                    deps.push(mine);
                }
                previous = layer;
            }
        }
    }
    let ids: Vec<String> = (0..deps.len())
        .map(|i| format!("t{i}_{}", BEHAVIOURS[rng.weighted(&BEHAVIOUR_WEIGHTS)]))
        .collect();
    let tasks: Vec<Value> = ids
        .iter()
        .zip(&deps)
        .map(|(id, deps)| task_ir(&mut rng, id, deps.iter().map(|&d| ids[d].as_str()).collect()))
        .collect();
    json!({
        "ir_version": 1,
        "name": dag_name(index),
        "on_success": "job_callback",
        "on_failure": "job_callback",
        "tasks": tasks,
    })
}

fn task_ir(rng: &mut Rng, id: &str, depends_on: Vec<&str>) -> Value {
    let behaviour = behaviour(id);
    let mut task = json!({ "id": id, "depends_on": depends_on });
    let (retries, timeout) = match behaviour {
        "flaky" => (rng.range(1, 3), None),
        "hang" => (rng.range(1, 2), Some(rng.range(1, 2))),
        "sh" => (rng.range(0, 2), None),
        _ => (rng.range(0, 1), rng.chance(0.5).then_some(20)),
    };
    task["retries"] = json!(retries);
    task["retry_delay"] = json!(rng.range(0, 2));
    task["retry_jitter"] = json!(rng.chance(0.3));
    if let Some(timeout) = timeout {
        task["timeout"] = json!(timeout);
    }
    if behaviour == "sh" {
        task["type"] = json!("shell");
        task["command"] = json!(shell_command(rng.range(1, 10) * 100, rng.range(0, 2)));
    } else {
        task["handler"] = json!("step");
    }
    if !depends_on.is_empty() && rng.chance(0.1) {
        task["trigger_rule"] = json!("all_done");
    }
    if rng.chance(0.4) {
        for key in ["on_success", "on_failure", "on_retry"] {
            task[key] = json!("task_callback");
        }
    }
    task
}

/// The behaviour a task id names: the part after its last `_`.
fn behaviour(task_id: &str) -> &str {
    task_id.rsplit('_').next().unwrap_or("ok")
}

/// A shell command that records its start and end like the Rust handler
/// does, sleeps `sleep_ms`, fails its first `fail_until` attempts, and on
/// success prints its execution name (which becomes part of its result).
/// SIGTERM (cancellation, a stale attempt stopped) is recorded as `term`;
/// a `date` killed by that SIGTERM is run again, so that no line lacks its time.
fn shell_command(sleep_ms: u64, fail_until: u64) -> String {
    format!(
        r#"E="$CHAOS_NODE.sh$$.$(date +%s%N)"
line() {{ t=$(date +%s%3N); [ -n "$t" ] || t=$(date +%s%3N); printf '%s %s exec=%s node=%s pid=%s job=%s task=%s attempt=%s key=%s%s\n' "$t" "$1" "$E" "$CHAOS_NODE" "$$" "$CASCADE_JOB_ID" "$CASCADE_TASK_ID" "$CASCADE_ATTEMPT" "$CASCADE_IDEMPOTENCY_KEY" "$2" >> "$CHAOS_LEDGER"; }}
trap 'line end " outcome=term"; exit 143' TERM
line start ""
sleep {secs}.{millis:03} & wait $!
if [ "$CASCADE_ATTEMPT" -le {fail_until} ]; then line end " outcome=err"; echo "attempt $CASCADE_ATTEMPT fails" >&2; exit 3; fi
line end " outcome=ok"
echo "exec=$E""#,
        secs = sleep_ms / 1000,
        millis = sleep_ms % 1000,
    )
}

/// Records `end … outcome=drop` if the handler's future is dropped before
/// it recorded an end itself (timeout, cancellation, a stale attempt stopped).
struct EndWitness<'a> {
    env: &'a NodeEnv,
    ctx: &'a TaskContext,
    execution: &'a str,
    ended: bool,
}

impl EndWitness<'_> {
    fn end(&mut self, outcome: &str) {
        self.ended = true;
        record(self.env, "end", self.ctx, self.execution, Some(outcome));
    }
}

impl Drop for EndWitness<'_> {
    fn drop(&mut self) {
        if !self.ended {
            record(self.env, "end", self.ctx, self.execution, Some("drop"));
        }
    }
}

fn record(env: &NodeEnv, kind: &str, ctx: &TaskContext, execution: &str, outcome: Option<&str>) {
    let job = ctx.job_id().to_string();
    let attempt = ctx.attempt();
    let pid = std::process::id();
    let (task, key) = (ctx.task_id(), ctx.idempotency_key());
    let mut fields: Vec<(&str, &dyn std::fmt::Display)> = vec![
        ("exec", &execution),
        ("node", &env.node),
        ("pid", &pid),
        ("job", &job),
        ("task", &task),
        ("attempt", &attempt),
        ("key", &key),
    ];
    if let Some(outcome) = &outcome {
        fields.push(("outcome", outcome));
    }
    env.ledger.write(kind, &fields);
}

/// The one Rust handler: sleeps, then succeeds or fails as its behaviour
/// and the draw for this attempt say. Half of the attempts stop as soon as
/// they are cancelled; the others ignore the signal until they are dropped.
async fn step(ctx: TaskContext, env: Arc<NodeEnv>) -> TaskResult {
    let execution = env.next_execution();
    record(&env, "start", &ctx, &execution, None);
    let mut witness = EndWitness {
        env: &env,
        ctx: &ctx,
        execution: &execution,
        ended: false,
    };
    let job = ctx.job_id().to_string();
    let attempt = ctx.attempt().to_string();
    let mut rng = Rng::for_parts(env.seed, &[&job, ctx.task_id(), &attempt]);
    let mut sleep_ms = rng.range(50, 800);
    let mut failure = None;
    match behaviour(ctx.task_id()) {
        "flaky" if ctx.attempt() == 1 || rng.chance(0.3) => {
            failure = Some(TaskError::new(format!("attempt {attempt} fails")));
        }
        "fatal" if rng.chance(0.5) => failure = Some(TaskError::fatal("fails for good")),
        // Well past the task's timeout of 1 or 2 s.
        "hang" if rng.chance(0.6) => sleep_ms = 30_000,
        _ => {}
    }
    let sleep = tokio::time::sleep(Duration::from_millis(sleep_ms));
    if rng.chance(0.5) {
        tokio::select! {
            () = ctx.cancelled() => {
                witness.end("stop");
                return Err(TaskError::new("stopped: cancelled"));
            }
            () = sleep => {}
        }
    } else {
        sleep.await;
    }
    match failure {
        Some(error) => {
            witness.end("err");
            Err(error)
        }
        None => {
            witness.end("ok");
            Ok(json!({ "exec": execution }))
        }
    }
}

/// Records a callback: `callback job=… task=… event=… attempt=…` (task `-`
/// for the DAG's callbacks).
async fn callback(ctx: CallbackContext, env: Arc<NodeEnv>) -> CallbackResult {
    let event = match ctx.event {
        CallbackEvent::Success => "success",
        CallbackEvent::Failure => "failure",
        CallbackEvent::Retry => "retry",
        _ => "other",
    };
    let task = ctx.task_id.as_deref().unwrap_or("-");
    let pid = std::process::id();
    env.ledger.write(
        "callback",
        &[
            ("node", &env.node),
            ("pid", &pid),
            ("job", &ctx.job_id),
            ("task", &task),
            ("event", &event),
            ("attempt", &ctx.attempt),
        ],
    );
    Ok(())
}
