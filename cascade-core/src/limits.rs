//! Limits on the data that enters the engine: task results, task error
//! messages and job params are checked where they arrive, so that one bad
//! value fails only its own task (or trigger) and never reaches the store,
//! where it would fail a whole batch or make its rows unreadable.
//!
//! A JSON value is refused when it holds a NUL character (`\u0000`, in a
//! string or a key: PostgreSQL stores neither), when it serializes to more
//! than `max_result_bytes`, or when it is nested more than [`MAX_JSON_DEPTH`]
//! levels deep (serde_json refuses to read back more than 127). Error
//! messages and captured output are never refused: their NULs are replaced
//! and they are cut to a bounded size.

use std::fmt;

use serde_json::Value;

use crate::task::TaskError;

/// Default of [`CascadeBuilder::max_result_bytes`](crate::CascadeBuilder::max_result_bytes):
/// 2 MiB of serialized JSON per task result or job's params.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 2 * 1024 * 1024;

/// The most nested arrays and objects a task result or job's params may
/// have. serde_json reads back at most 127, so a deeper value could be
/// written but never read again.
pub const MAX_JSON_DEPTH: usize = 100;

/// The largest `max_result_bytes` the builder accepts: far below what either
/// database can hold in one value, and far above what belongs in a row.
pub(crate) const MAX_RESULT_BYTES_CEILING: usize = 128 * 1024 * 1024;

/// Error messages are cut to this many bytes.
pub(crate) const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Captured output (a command's stdout and stderr) is cut to this many bytes.
pub(crate) const MAX_OUTPUT_BYTES: usize = 256 * 1024;

/// The limits in force in an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// Why a JSON value (a task result, a job's params) was refused.
///
/// ```
/// use cascade_core::LimitViolation;
///
/// let violation = LimitViolation::TooLarge { bytes: 3_145_728, max_bytes: 2_097_152 };
/// assert_eq!(violation.to_string(), "is 3145728 bytes, over max_result_bytes 2097152");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitViolation {
    /// A string or key holds a NUL character (`\u0000`), which PostgreSQL
    /// cannot store.
    Nul {
        /// Where: a JSON path such as `$.rows[3].name`, with `(key)` when the
        /// NUL is in the key.
        path: String,
    },
    /// The value serializes to more bytes than allowed.
    TooLarge {
        /// Its serialized size.
        bytes: usize,
        /// The limit (`max_result_bytes`).
        max_bytes: usize,
    },
    /// The value is nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep {
        /// How deep it is nested (arrays and objects).
        depth: usize,
        /// The limit.
        max_depth: usize,
    },
}

impl fmt::Display for LimitViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitViolation::Nul { path } => {
                write!(f, "contains a NUL character (\\u0000) at {path}")
            }
            LimitViolation::TooLarge { bytes, max_bytes } => {
                write!(f, "is {bytes} bytes, over max_result_bytes {max_bytes}")
            }
            LimitViolation::TooDeep { depth, max_depth } => {
                write!(f, "is nested {depth} levels deep, over the limit of {max_depth}")
            }
        }
    }
}

impl std::error::Error for LimitViolation {}

/// Checks a JSON value against the limits: depth first (so that the
/// recursive serializer only ever sees a shallow value), then NUL
/// characters, then the serialized size.
pub(crate) fn check_value(value: &Value, limits: Limits) -> Result<(), LimitViolation> {
    let (depth, has_nul) = depth_and_nul(value);
    if depth > MAX_JSON_DEPTH {
        return Err(LimitViolation::TooDeep {
            depth,
            max_depth: MAX_JSON_DEPTH,
        });
    }
    if has_nul {
        return Err(LimitViolation::Nul {
            path: nul_path(value).unwrap_or_else(|| "$".to_owned()),
        });
    }
    let bytes = serialized_len(value);
    if bytes > limits.max_result_bytes {
        return Err(LimitViolation::TooLarge {
            bytes,
            max_bytes: limits.max_result_bytes,
        });
    }
    Ok(())
}

/// Checks what a handler returned: a result that breaks a limit becomes a
/// fatal error naming the limit (no retry can shrink it), and a failure has
/// its message and output made storable.
pub(crate) fn check_outcome(outcome: Result<Value, TaskError>, limits: Limits) -> Result<Value, TaskError> {
    match outcome {
        Ok(value) => match check_value(&value, limits) {
            Ok(()) => Ok(value),
            Err(violation) => {
                if matches!(violation, LimitViolation::TooDeep { .. }) {
                    dismantle(value);
                }
                Err(TaskError::fatal(format!("result {violation}")))
            }
        },
        Err(error) => Err(sanitize_error(error)),
    }
}

/// Makes an error storable: NULs replaced, message and output cut to size.
pub(crate) fn sanitize_error(error: TaskError) -> TaskError {
    error.map_text(
        |message| sanitize_text(message, MAX_ERROR_BYTES),
        |output| sanitize_text(output, MAX_OUTPUT_BYTES),
    )
}

/// Replaces NUL characters with U+FFFD and cuts the text to at most
/// `max_bytes` (on a character boundary), saying how much was cut.
pub(crate) fn sanitize_text(text: String, max_bytes: usize) -> String {
    let mut text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    };
    if text.len() > max_bytes {
        let total = text.len();
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(&format!("… [cut at {end} of {total} bytes]"));
    }
    text
}

/// The nesting depth of a value (a scalar is 0, `[]` is 1) and whether any
/// string or key holds a NUL; iterative, so any depth is safe.
fn depth_and_nul(value: &Value) -> (usize, bool) {
    let mut deepest = 0;
    let mut has_nul = false;
    let mut stack = vec![(value, 0_usize)];
    while let Some((value, depth)) = stack.pop() {
        match value {
            Value::String(text) => has_nul |= text.contains('\0'),
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(fields) => {
                deepest = deepest.max(depth + 1);
                for (key, item) in fields {
                    has_nul |= key.contains('\0');
                    stack.push((item, depth + 1));
                }
            }
            _ => {}
        }
    }
    (deepest, has_nul)
}

/// The JSON path of the first NUL found (only called once one is known to
/// be there, on a value of bounded depth).
fn nul_path(value: &Value) -> Option<String> {
    let mut stack = vec![(value, "$".to_owned())];
    while let Some((value, path)) = stack.pop() {
        match value {
            Value::String(text) if text.contains('\0') => return Some(path),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push((item, format!("{path}[{i}]")));
                }
            }
            Value::Object(fields) => {
                if let Some(key) = fields.keys().find(|key| key.contains('\0')) {
                    return Some(format!("{path}.{} (key)", key.replace('\0', "\\u0000")));
                }
                let fields: Vec<_> = fields.iter().collect();
                for (key, item) in fields.into_iter().rev() {
                    stack.push((item, format!("{path}.{key}")));
                }
            }
            _ => {}
        }
    }
    None
}

/// The number of bytes `serde_json::to_vec` would produce, without
/// allocating them.
fn serialized_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Drops a value of any depth without recursing (`Value`'s own drop
/// recurses, one stack frame per level).
fn dismantle(value: Value) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(fields) => stack.extend(fields.into_iter().map(|(_, item)| item)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nested(depth: usize) -> Value {
        let mut value = json!("leaf");
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn values_within_the_limits_pass() {
        let limits = Limits::default();
        assert_eq!(check_value(&json!({ "a": [1, "two", null] }), limits), Ok(()));
        assert_eq!(check_value(&nested(MAX_JSON_DEPTH), limits), Ok(()));
    }

    #[test]
    fn each_limit_names_itself_and_the_actual_value() {
        let limits = Limits { max_result_bytes: 10 };
        assert_eq!(
            check_value(&json!("0123456789"), limits),
            Err(LimitViolation::TooLarge {
                bytes: 12,
                max_bytes: 10
            })
        );
        let deep = check_value(&nested(200), Limits::default());
        assert_eq!(
            deep,
            Err(LimitViolation::TooDeep {
                depth: 200,
                max_depth: MAX_JSON_DEPTH
            })
        );
        assert_eq!(
            check_value(
                &json!({ "rows": [{ "ok": "x" }, { "name": "a\u{0}b" }] }),
                Limits::default()
            )
            .map_err(|v| v.to_string()),
            Err("contains a NUL character (\\u0000) at $.rows[1].name".to_owned())
        );
        assert_eq!(
            check_value(&json!({ "k\u{0}": 1 }), Limits::default()).map_err(|v| v.to_string()),
            Err("contains a NUL character (\\u0000) at $.k\\u0000 (key)".to_owned())
        );
    }

    #[test]
    fn a_value_far_too_deep_is_refused_without_overflowing_the_stack() {
        let outcome = check_outcome(Ok(nested(1_000_000)), Limits::default());
        let error = outcome.expect_err("too deep");
        assert!(!error.is_retryable());
        assert_eq!(
            error.message(),
            "result is nested 1000000 levels deep, over the limit of 100"
        );
    }

    #[test]
    fn error_text_is_made_storable() {
        assert_eq!(sanitize_text("a\u{0}b".to_owned(), 100), "a\u{FFFD}b");
        let cut = sanitize_text("é".repeat(10), 5);
        assert_eq!(cut, "éé… [cut at 4 of 20 bytes]");
        let error = sanitize_error(TaskError::new("x\u{0}".repeat(10_000)).with_output("\u{0}"));
        assert!(error.message().len() < MAX_ERROR_BYTES + 64);
        assert!(!error.message().contains('\0'));
        assert_eq!(error.output(), Some("\u{FFFD}"));
        assert!(error.is_retryable(), "the kind is kept");
    }
}
