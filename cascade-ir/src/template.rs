//! `${...}` references in the `env` values of shell tasks.
//!
//! A shell task's `env` value may refer to the job's parameters and to the
//! results of the task's direct dependencies:
//!
//! ```text
//! env: { "REGION": "${params.region}", "N": "${upstream.extract.count}" }
//! ```
//!
//! The reference is replaced in the variable's *value* when the task runs,
//! never in the command text, so a value cannot inject shell syntax. A JSON
//! string is substituted as is (without quotes); any other JSON value (a
//! number, `true`, an object, `null`) as its compact JSON text.
//!
//! The syntax:
//!
//! - `${params}` is the whole parameter object, `${params.a.b}` a field of it;
//! - `${upstream.<task>}` is the whole result of the direct dependency
//!   `<task>`, `${upstream.<task>.a.b}` a field of it. A task id may contain
//!   `.`; the longest dependency id that matches wins;
//! - a field name is made of letters, digits, `_` and `-`; on an array a
//!   field of digits is an index (`${params.regions.0}`);
//! - `$${` is a literal `${`; any other `$` is a literal `$`.
//!
//! [`EnvTemplate::parse`] checks a value against the task's dependencies (the
//! validator does this for every shell task, so `dag!` reports a bad reference
//! at compile time); [`EnvTemplate::render`] substitutes it, failing with a
//! [`RenderError`] that names the missing field.

use std::fmt;

use serde_json::Value;

/// A parsed `env` value: literal text and `${...}` references.
///
/// ```
/// use cascade_ir::EnvTemplate;
/// use serde_json::json;
///
/// let template = EnvTemplate::parse("${params.region}-${upstream.extract.count}", &["extract"])?;
/// let params = json!({ "region": "eu" });
/// let extract = json!({ "count": 3 });
/// let value = template.render(&params, &|task| (task == "extract").then_some(&extract))?;
/// assert_eq!(value, "eu-3");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Reference(Reference),
}

/// One `${...}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    /// `None` for `params`, the dependency's id for `upstream.<task>`.
    task: Option<String>,
    /// Field names below the root.
    path: Vec<String>,
}

impl Reference {
    /// The root as written: `params` or `upstream.<task>`.
    fn root(&self) -> String {
        match &self.task {
            None => "params".to_owned(),
            Some(task) => format!("upstream.{task}"),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${{{}", self.root())?;
        for field in &self.path {
            write!(f, ".{field}")?;
        }
        f.write_str("}")
    }
}

/// Why an `env` value's `${...}` reference is invalid (found when the DAG is
/// validated).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// `${` without a closing `}`.
    #[error("`${{` at byte {offset} is not closed by `}}` (write `$${{` for a literal `${{`)")]
    Unclosed {
        /// Byte offset of the `$` in the value.
        offset: usize,
    },
    /// `${}`.
    #[error("empty reference `${{}}`: expected `${{params.<field>}}` or `${{upstream.<task>.<field>}}`")]
    Empty {
        /// Byte offset of the `$` in the value.
        offset: usize,
    },
    /// The reference does not start with `params` or `upstream`.
    #[error(
        "`${{{reference}}}`: unknown root `{root}`: expected `params` or `upstream` (write `$${{` for a literal `${{`)"
    )]
    UnknownRoot {
        /// The reference as written, without `${` and `}`.
        reference: String,
        /// The first name of the reference.
        root: String,
    },
    /// `${upstream}` without a task.
    #[error(
        "`${{{reference}}}`: name a dependency: `${{upstream.<task>}}` or `${{upstream.<task>.<field>}}`"
    )]
    MissingTask {
        /// The reference as written, without `${` and `}`.
        reference: String,
    },
    /// `${upstream.<task>…}` where `<task>` is not a direct dependency.
    #[error(
        "`${{{reference}}}`: `{task}` is not a direct dependency of this task (its dependencies: {})",
        list(dependencies)
    )]
    NotADependency {
        /// The reference as written, without `${` and `}`.
        reference: String,
        /// The task named.
        task: String,
        /// The task's direct dependencies.
        dependencies: Vec<String>,
    },
    /// A field name that is empty or has other characters than letters,
    /// digits, `_` and `-`.
    #[error(
        "`${{{reference}}}`: invalid field name `{field}`: use letters, digits, `_` and `-`, separated by `.`"
    )]
    InvalidField {
        /// The reference as written, without `${` and `}`.
        reference: String,
        /// The field name as written.
        field: String,
    },
}

/// Why an `env` value could not be filled in when its task ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The dependency has no result: it did not succeed, or has not finished
    /// (possible with trigger rules such as `one_success`).
    #[error("`{reference}`: task `{task}` has no result")]
    NoResult {
        /// The reference, `${...}`.
        reference: String,
        /// The dependency.
        task: String,
    },
    /// A field named in the reference is not there.
    #[error("`{reference}`: `{at}` has no field `{field}`")]
    MissingField {
        /// The reference, `${...}`.
        reference: String,
        /// The part of the reference that was found, e.g. `params.db`.
        at: String,
        /// The field that is missing below it.
        field: String,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl EnvTemplate {
    /// Parses an `env` value whose `upstream` references may name the given
    /// direct dependencies.
    pub fn parse(text: &str, dependencies: &[&str]) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at..];
            let consumed = if after.starts_with("$${") {
                literal.push_str("${");
                3
            } else if let Some(inner) = after.strip_prefix("${") {
                let Some(end) = inner.find('}') else {
                    return Err(TemplateError::Unclosed { offset: offset + at });
                };
                let reference = parse_reference(&inner[..end], dependencies, offset + at)?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Reference(reference));
                end + 3
            } else {
                literal.push('$');
                1
            };
            rest = &after[consumed..];
            offset += at + consumed;
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(EnvTemplate { parts })
    }

    /// Whether the value has no reference (it is used as written, apart from
    /// `$${` escapes).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Fills in the references: `params` is the job's parameters, `upstream`
    /// returns the result of a direct dependency by id (`None` when it has
    /// none).
    pub fn render<'a>(
        &self,
        params: &'a Value,
        upstream: &dyn Fn(&str) -> Option<&'a Value>,
    ) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Reference(reference) => {
                    let root = match &reference.task {
                        None => params,
                        Some(task) => upstream(task).ok_or_else(|| RenderError::NoResult {
                            reference: reference.to_string(),
                            task: task.clone(),
                        })?,
                    };
                    let mut value = root;
                    let mut at = reference.root();
                    for field in &reference.path {
                        let next = match value {
                            Value::Object(map) => map.get(field),
                            Value::Array(items) => field.parse::<usize>().ok().and_then(|i| items.get(i)),
                            _ => None,
                        };
                        value = next.ok_or_else(|| RenderError::MissingField {
                            reference: reference.to_string(),
                            at: at.clone(),
                            field: field.clone(),
                        })?;
                        at.push('.');
                        at.push_str(field);
                    }
                    match value {
                        Value::String(text) => out.push_str(text),
                        other => out.push_str(&other.to_string()),
                    }
                }
            }
        }
        Ok(out)
    }
}

fn parse_reference(raw: &str, dependencies: &[&str], offset: usize) -> Result<Reference, TemplateError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(TemplateError::Empty { offset });
    }
    let (root, rest) = match text.split_once('.') {
        Some((root, rest)) => (root, Some(rest)),
        None => (text, None),
    };
    let (task, path) = match root {
        "params" => (None, rest),
        "upstream" => {
            let Some(rest) = rest else {
                return Err(TemplateError::MissingTask {
                    reference: text.to_owned(),
                });
            };
            // Task ids may contain `.`: the longest dependency id that is a
            // whole prefix of the rest names the task.
            let task = dependencies
                .iter()
                .filter(|d| rest == **d || rest.strip_prefix(**d).is_some_and(|r| r.starts_with('.')))
                .max_by_key(|d| d.len());
            match task {
                Some(task) => {
                    let path = rest[task.len()..].strip_prefix('.');
                    (Some((*task).to_owned()), path)
                }
                None => {
                    let named = rest.split('.').next().unwrap_or(rest);
                    return Err(TemplateError::NotADependency {
                        reference: text.to_owned(),
                        task: named.to_owned(),
                        dependencies: dependencies.iter().map(|d| (*d).to_owned()).collect(),
                    });
                }
            }
        }
        other => {
            return Err(TemplateError::UnknownRoot {
                reference: text.to_owned(),
                root: other.to_owned(),
            });
        }
    };
    let mut fields = Vec::new();
    if let Some(path) = path {
        for field in path.split('.') {
            let valid = !field.is_empty()
                && field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !valid {
                return Err(TemplateError::InvalidField {
                    reference: text.to_owned(),
                    field: field.to_owned(),
                });
            }
            fields.push(field.to_owned());
        }
    }
    Ok(Reference { task, path: fields })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(text: &str, deps: &[&str], params: &Value, upstream: &Value) -> Result<String, RenderError> {
        let template = EnvTemplate::parse(text, deps).unwrap();
        template.render(params, &|task| upstream.get(task).filter(|v| !v.is_null()))
    }

    #[test]
    fn substitutes_strings_raw_and_other_values_as_json() {
        let params = json!({ "region": "eu west", "n": 3, "flags": { "a": true }, "list": ["x", "y"], "nothing": null });
        let upstream = json!({ "extract": { "count": 7, "name": "a\"b" } });
        let deps = ["extract"];
        let cases = [
            ("${params.region}", "eu west"),
            ("n=${params.n}", "n=3"),
            ("${params.flags}", r#"{"a":true}"#),
            ("${params.list.1}", "y"),
            ("${params.nothing}", "null"),
            ("${upstream.extract.count}/${upstream.extract.name}", "7/a\"b"),
            ("${ params.n }", "3"),
            ("cost: $5, $${literal} $$", "cost: $5, ${literal} $$"),
            ("no references", "no references"),
            ("", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(
                render(text, &deps, &params, &upstream).unwrap(),
                expected,
                "{text}"
            );
        }
        assert!(EnvTemplate::parse("$${x}", &[]).unwrap().is_literal());
        assert!(!EnvTemplate::parse("${params}", &[]).unwrap().is_literal());
    }

    #[test]
    fn the_longest_dependency_id_wins() {
        let upstream = json!({ "a": { "b": { "c": 1 } }, "a.b": { "c": 2 } });
        assert_eq!(
            render("${upstream.a.b.c}", &["a", "a.b"], &json!({}), &upstream).unwrap(),
            "2"
        );
        assert_eq!(
            render("${upstream.a.b.c}", &["a"], &json!({}), &upstream).unwrap(),
            "1"
        );
    }

    #[test]
    fn invalid_references_say_what_is_wrong() {
        let error = |text: &str| EnvTemplate::parse(text, &["extract", "load"]).unwrap_err();
        assert_eq!(error("x ${params.a"), TemplateError::Unclosed { offset: 2 });
        assert_eq!(error("${}"), TemplateError::Empty { offset: 0 });
        assert!(matches!(error("${HOME}"), TemplateError::UnknownRoot { root, .. } if root == "HOME"));
        assert!(matches!(error("${upstream}"), TemplateError::MissingTask { .. }));
        let not_dep = error("${upstream.transform.rows}");
        assert_eq!(
            not_dep.to_string(),
            "`${upstream.transform.rows}`: `transform` is not a direct dependency of this task (its dependencies: `extract`, `load`)"
        );
        assert!(
            matches!(error("${params..a}"), TemplateError::InvalidField { field, .. } if field.is_empty())
        );
        assert!(
            matches!(error("${params.a b}"), TemplateError::InvalidField { field, .. } if field == "a b")
        );
        assert!(matches!(
            error("${upstream.extract.}"),
            TemplateError::InvalidField { .. }
        ));
        assert!(
            EnvTemplate::parse("${upstream.x}", &[])
                .unwrap_err()
                .to_string()
                .ends_with("(its dependencies: none)")
        );
    }

    #[test]
    fn missing_values_name_the_field() {
        let params = json!({ "db": { "host": "h" } });
        let upstream = json!({ "extract": null });
        let deps = ["extract"];
        assert_eq!(
            render("${params.db.port}", &deps, &params, &upstream)
                .unwrap_err()
                .to_string(),
            "`${params.db.port}`: `params.db` has no field `port`"
        );
        assert_eq!(
            render("${params.db.host.x}", &deps, &params, &upstream)
                .unwrap_err()
                .to_string(),
            "`${params.db.host.x}`: `params.db.host` has no field `x`"
        );
        assert_eq!(
            render("${upstream.extract.count}", &deps, &params, &upstream)
                .unwrap_err()
                .to_string(),
            "`${upstream.extract.count}`: task `extract` has no result"
        );
    }
}
