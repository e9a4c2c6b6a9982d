//! Checks on the values a write carries, made before anything is sent to the
//! database, so that both backends refuse the same values with the same
//! typed error ([`StoreError::InvalidValue`]) instead of PostgreSQL failing
//! the whole statement and SQLite storing what cannot be read back.
//!
//! Refused: a NUL character in any text or JSON string (PostgreSQL accepts
//! neither a NUL byte in `text` nor `\u0000` in `jsonb`; in a SQLite file it
//! cuts the text short for C tools), and JSON nested deeper than
//! [`MAX_JSON_DEPTH`], which serde_json would refuse to read back.

use serde_json::Value;

use crate::error::{Result, StoreError};
use crate::ids::JobId;
use crate::model::{JobTransition, NewJob, TaskTransition};

/// The deepest JSON nesting the store writes. serde_json stops reading at
/// 128 nested arrays or objects (its recursion limit), so a deeper value
/// would make every read of its row fail.
pub(crate) const MAX_JSON_DEPTH: usize = 127;

/// What is wrong with a text, if anything.
fn text_problem(text: &str) -> Option<String> {
    text.find('\0')
        .map(|at| format!("it contains a NUL character at byte {at}"))
}

/// What is wrong with a JSON value, if anything. Iterative, so that a value
/// nested far too deep is reported rather than overflowing the stack.
pub(crate) fn json_problem(value: &Value) -> Option<String> {
    let mut stack = vec![(value, 1_usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::String(text) if text.contains('\0') => {
                return Some("a string in it contains a NUL character (\\u0000)".to_owned());
            }
            Value::Array(items) => {
                if depth > MAX_JSON_DEPTH {
                    return Some(too_deep());
                }
                stack.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(fields) => {
                if depth > MAX_JSON_DEPTH {
                    return Some(too_deep());
                }
                for (key, item) in fields {
                    if key.contains('\0') {
                        return Some("a key in it contains a NUL character (\\u0000)".to_owned());
                    }
                    stack.push((item, depth + 1));
                }
            }
            _ => {}
        }
    }
    None
}

fn too_deep() -> String {
    format!("it is nested more than {MAX_JSON_DEPTH} levels deep, more than can be read back")
}

/// Checks the values a task transition writes.
pub(crate) fn check_task(transition: &TaskTransition) -> Result<()> {
    let invalid = |column: &'static str, problem: String| StoreError::InvalidValue {
        column,
        job_id: Some(transition.job_id),
        task_id: Some(transition.task_id.clone()),
        problem,
    };
    let changes = &transition.changes;
    if let Some(problem) = changes.result.as_ref().and_then(json_problem) {
        return Err(invalid("task_executions.result", problem));
    }
    let attempt = changes.record_attempt.as_ref();
    let texts = [
        ("task_executions.task_id", Some(transition.task_id.as_str())),
        ("task_executions.error", changes.error.as_deref()),
        ("task_executions.worker", changes.worker.as_deref()),
        ("task_attempts.error", attempt.and_then(|a| a.error.as_deref())),
        ("task_attempts.output", attempt.and_then(|a| a.output.as_deref())),
        ("task_attempts.worker", attempt.and_then(|a| a.worker.as_deref())),
    ];
    for (column, text) in texts {
        if let Some(problem) = text.and_then(text_problem) {
            return Err(invalid(column, problem));
        }
    }
    Ok(())
}

/// Checks the values a job transition writes.
pub(crate) fn check_job(transition: &JobTransition) -> Result<()> {
    match transition.error.as_deref().and_then(text_problem) {
        Some(problem) => Err(StoreError::InvalidValue {
            column: "jobs.error",
            job_id: Some(transition.job_id),
            task_id: None,
            problem,
        }),
        None => Ok(()),
    }
}

/// Checks the values a new job and its task rows write.
pub(crate) fn check_new_job(job: &NewJob) -> Result<()> {
    let invalid = |column: &'static str, task_id: Option<&str>, problem: String| StoreError::InvalidValue {
        column,
        job_id: None::<JobId>,
        task_id: task_id.map(str::to_owned),
        problem,
    };
    if let Some(problem) = json_problem(&job.params) {
        return Err(invalid("jobs.params", None, problem));
    }
    let texts = [
        ("jobs.trigger", Some(job.trigger.as_str())),
        ("jobs.idempotency_key", job.idempotency_key.as_deref()),
        ("jobs.owner", job.owner.as_deref()),
    ];
    for (column, text) in texts {
        if let Some(problem) = text.and_then(text_problem) {
            return Err(invalid(column, None, problem));
        }
    }
    for task in &job.tasks {
        let texts = std::iter::once(("task_executions.task_id", task.task_id.as_str()))
            .chain(std::iter::once(("task_executions.queue", task.queue.as_str())))
            .chain(task.labels.iter().map(|l| ("task_executions.labels", l.as_str())));
        for (column, text) in texts {
            if let Some(problem) = text_problem(text) {
                return Err(invalid(column, Some(&task.task_id), problem));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(depth: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn json_problems_are_found_at_any_depth() {
        assert_eq!(json_problem(&json!({ "a": ["ok", { "b": null }] })), None);
        assert!(json_problem(&json!({ "a": [1, "x\u{0}y"] })).is_some_and(|p| p.contains("string")));
        assert!(json_problem(&json!({ "k\u{0}": 1 })).is_some_and(|p| p.contains("key")));
        assert_eq!(json_problem(&nested(MAX_JSON_DEPTH)), None);
        assert!(json_problem(&nested(MAX_JSON_DEPTH + 1)).is_some_and(|p| p.contains("deep")));
        // The limit is what serde_json can read back.
        let text = nested(MAX_JSON_DEPTH).to_string();
        assert!(serde_json::from_str::<Value>(&text).is_ok());
        let text = nested(MAX_JSON_DEPTH + 1).to_string();
        assert!(serde_json::from_str::<Value>(&text).is_err());
    }
}
