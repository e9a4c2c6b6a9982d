//! Turns the parsed `dag!` into a [`DagIr`], runs the one validator
//! (`cascade_ir::validate`) on it, and maps each problem's [`Location`] back to
//! the token the user wrote.

use std::collections::HashMap;

use cascade_ir::{DagIr, IR_VERSION, Location, TaskDefaults, TaskIr, ValidationError};
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{Attribute, Ident, LitStr, Path, Visibility};

use crate::ast::{DagDef, DagValue, Setting, TaskKey, TaskValue, did_you_mean};

const TRIGGER_RULES: [&str; 6] = [
    "all_success",
    "all_done",
    "all_failed",
    "one_success",
    "one_failed",
    "none_failed",
];

/// A checked DAG: what expansion needs.
pub(crate) struct Checked {
    pub(crate) header: Header,
    /// The canonical IR, or `None` when there were errors.
    pub(crate) ir_json: Option<String>,
    /// Every distinct `run:` path by handler name, in first-use order.
    pub(crate) handlers: Vec<(String, Path)>,
    /// Every distinct callback path by name, in first-use order.
    pub(crate) callbacks: Vec<(String, Path)>,
    /// Every problem found, combined; `None` when there are none.
    pub(crate) error: Option<syn::Error>,
}

/// What the generated fn is called and how it is documented.
pub(crate) struct Header {
    pub(crate) vis: Visibility,
    pub(crate) name: Ident,
    pub(crate) docs: Vec<Attribute>,
    /// `(task id, its doc attributes)` for tasks that have docs.
    pub(crate) task_docs: Vec<(String, Vec<Attribute>)>,
}

/// The tokens behind one key: the key itself and its value.
struct KeyTokens {
    key: TokenStream,
    value: TokenStream,
}

impl KeyTokens {
    fn pick(&self, want_key: bool) -> &TokenStream {
        if want_key { &self.key } else { &self.value }
    }
}

#[derive(Default)]
struct TaskTokens {
    id: TokenStream,
    keys: HashMap<&'static str, KeyTokens>,
    dependencies: Vec<TokenStream>,
    /// Each `env` value's tokens, by variable name.
    env_values: HashMap<String, TokenStream>,
}

/// Where each part of the definition was written.
#[derive(Default)]
struct SourceMap {
    name: TokenStream,
    dag_keys: HashMap<&'static str, KeyTokens>,
    tasks: Vec<TaskTokens>,
}

impl SourceMap {
    /// The tokens to point at for a validator location. Keys are the IR's;
    /// a key the user did not write (a value taken from `defaults`) falls back
    /// to the task id, and a DAG-level one to the name.
    /// For a task's `env`, `env_variable` picks the value of that variable.
    fn tokens(&self, location: Location, want_key: bool, env_variable: Option<&str>) -> &TokenStream {
        match location.task.and_then(|i| self.tasks.get(i)) {
            Some(task) => {
                if location.key == "depends_on"
                    && let Some(dependency) = location.position.and_then(|p| task.dependencies.get(p))
                {
                    return dependency;
                }
                if location.key == "id" {
                    return &task.id;
                }
                if let Some(value) = env_variable.and_then(|v| task.env_values.get(v)) {
                    return value;
                }
                task.keys.get(location.key).map_or(&task.id, |k| k.pick(want_key))
            }
            None => self
                .dag_keys
                .get(location.key)
                .map_or(&self.name, |k| k.pick(want_key)),
        }
    }
}

/// Builds the IR, validates it, and gathers every error.
pub(crate) fn check(def: DagDef) -> syn::Result<Checked> {
    let DagDef {
        docs,
        settings,
        errors: parse_errors,
    } = def;
    let mut errors = parse_errors;
    let mut map = SourceMap::default();
    let mut handlers: Vec<(String, Path)> = Vec::new();
    let mut callbacks: Vec<(String, Path)> = Vec::new();
    let mut ir = DagIr {
        ir_version: IR_VERSION,
        name: String::new(),
        description: String::new(),
        schedule: None,
        catchup: false,
        defaults: TaskDefaults::default(),
        on_failure: None,
        on_success: None,
        tasks: Vec::new(),
        topological_order: None,
        hash: None,
    };
    let mut header = None;
    let mut tasks_key = None;
    let mut task_docs = Vec::new();

    for Setting {
        key,
        value,
        value_tokens,
    } in settings
    {
        let ir_key: &'static str = match value {
            DagValue::Name { vis, ident } => {
                ir.name = ident.unraw_string();
                map.name = ident.to_token_stream();
                header = Some((vis, ident));
                "name"
            }
            DagValue::Description(text) => {
                ir.description = text.value();
                "description"
            }
            DagValue::Schedule(text) => {
                ir.schedule = Some(text.value());
                "schedule"
            }
            DagValue::Catchup(flag) => {
                ir.catchup = flag.value;
                "catchup"
            }
            DagValue::Callback(path) => {
                let name = path_name(&path);
                add_unique(&mut callbacks, &name, &path);
                if key == "on_failure" {
                    ir.on_failure = Some(name);
                    "on_failure"
                } else {
                    ir.on_success = Some(name);
                    "on_success"
                }
            }
            DagValue::Defaults(defaults) => {
                for setting in defaults {
                    let (task_key, value) = setting.value;
                    let ir_key = apply_default(&mut ir.defaults, task_key, value);
                    map.dag_keys.insert(
                        ir_key,
                        KeyTokens {
                            key: setting.key.to_token_stream(),
                            value: setting.value_tokens,
                        },
                    );
                }
                "defaults"
            }
            DagValue::Tasks(tasks) => {
                tasks_key = Some(key.clone());
                for task in tasks {
                    let mut task_ir = TaskIr {
                        id: task.id.unraw_string(),
                        ..TaskIr::default()
                    };
                    let mut tokens = TaskTokens {
                        id: task.id.to_token_stream(),
                        ..TaskTokens::default()
                    };
                    if !task.docs.is_empty() {
                        task_docs.push((task_ir.id.clone(), task.docs));
                    }
                    for setting in task.settings {
                        let (task_key, value) = setting.value;
                        if let TaskValue::Env(env) = &value {
                            tokens.env_values = env
                                .iter()
                                .map(|(name, value)| (name.value(), value.to_token_stream()))
                                .collect();
                        }
                        let (ir_key, dependencies) =
                            apply_task(&mut task_ir, task_key, value, &mut handlers, &mut callbacks);
                        if let Some(dependencies) = dependencies {
                            tokens.dependencies = dependencies;
                        }
                        tokens.keys.insert(
                            ir_key,
                            KeyTokens {
                                key: setting.key.to_token_stream(),
                                value: setting.value_tokens,
                            },
                        );
                    }
                    ir.tasks.push(task_ir);
                    map.tasks.push(tokens);
                }
                "tasks"
            }
        };
        map.dag_keys.insert(
            ir_key,
            KeyTokens {
                key: key.to_token_stream(),
                value: value_tokens,
            },
        );
    }

    let Some((vis, name)) = header else {
        errors.insert(
            0,
            syn::Error::new(
                Span::call_site(),
                "a dag needs a name: `name: my_dag,` (it is also the name of the generated fn)",
            ),
        );
        return Err(combine(errors).expect("BUG: errors is not empty"));
    };
    if tasks_key.is_none() {
        errors.push(syn::Error::new(
            name.span(),
            format!("dag `{name}` has no `tasks: {{ ... }}`: add at least one task"),
        ));
    }

    let task_ids: Vec<String> = ir.tasks.iter().map(|task| task.id.clone()).collect();
    let ir_json = match cascade_ir::validate(ir) {
        Ok(valid) => Some(valid.ir_json().to_owned()),
        Err(invalid) => {
            for error in &invalid.errors {
                if tasks_key.is_none() && matches!(error, ValidationError::NoTasks { .. }) {
                    continue;
                }
                let want_key = matches!(error, ValidationError::KeyNotAllowed { .. });
                let env_variable = match error {
                    ValidationError::InvalidEnvReference { variable, .. } => Some(variable.as_str()),
                    _ => None,
                };
                let tokens = map.tokens(error.location(), want_key, env_variable);
                let hint = match error {
                    ValidationError::UnknownDependency { dependency, .. } => {
                        did_you_mean(dependency, task_ids.iter().map(String::as_str))
                    }
                    ValidationError::UnknownTriggerRule { value, .. } => did_you_mean(value, TRIGGER_RULES),
                    _ => String::new(),
                };
                errors.push(syn::Error::new_spanned(tokens, format!("{error}{hint}")));
            }
            None
        }
    };
    let error = combine(errors);
    Ok(Checked {
        header: Header {
            vis,
            name,
            docs,
            task_docs,
        },
        ir_json: ir_json.filter(|_| error.is_none()),
        handlers,
        callbacks,
        error,
    })
}

fn combine(errors: Vec<syn::Error>) -> Option<syn::Error> {
    errors.into_iter().reduce(|mut all, error| {
        all.combine(error);
        all
    })
}

/// The name a path is registered under: the path as written, without
/// whitespace (`crate::tasks::transform`).
fn path_name(path: &Path) -> String {
    path.to_token_stream()
        .to_string()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

fn add_unique(paths: &mut Vec<(String, Path)>, name: &str, path: &Path) {
    if !paths.iter().any(|(n, _)| n == name) {
        paths.push((name.to_owned(), path.clone()));
    }
}

/// Sets one `defaults` value; returns its IR key (`defaults.timeout`, …).
fn apply_default(defaults: &mut TaskDefaults, key: TaskKey, value: TaskValue) -> &'static str {
    match (key, value) {
        (TaskKey::Timeout, TaskValue::Int(n)) => defaults.timeout = n,
        (TaskKey::Retries, TaskValue::Int(n)) => defaults.retries = n,
        (TaskKey::RetryDelay, TaskValue::Int(n)) => defaults.retry_delay = n,
        (TaskKey::RetryMaxDelay, TaskValue::Int(n)) => defaults.retry_max_delay = n,
        (TaskKey::RetryFactor, TaskValue::Float(x)) => defaults.retry_factor = x,
        (TaskKey::RetryJitter, TaskValue::Bool(flag)) => defaults.retry_jitter = Some(flag.value),
        (TaskKey::TriggerRule, TaskValue::TriggerRule(rule)) => {
            defaults.trigger_rule = Some(rule.unraw_string())
        }
        (TaskKey::Queue, TaskValue::Queue(queue)) => defaults.queue = Some(queue.value()),
        // The parser accepts no other key in `defaults`.
        _ => {}
    }
    key.ir_key(true)
}

/// Sets one task value; returns its IR key, and for `depends_on` the entries' tokens.
fn apply_task(
    task: &mut TaskIr,
    key: TaskKey,
    value: TaskValue,
    handlers: &mut Vec<(String, Path)>,
    callbacks: &mut Vec<(String, Path)>,
) -> (&'static str, Option<Vec<TokenStream>>) {
    let mut dependency_tokens = None;
    match (key, value) {
        (TaskKey::Run, TaskValue::Run(path)) => {
            let name = path_name(&path);
            add_unique(handlers, &name, &path);
            task.handler = Some(name);
        }
        (TaskKey::Type, TaskValue::Type(kind)) => task.kind = Some(kind.unraw_string()),
        (TaskKey::Command, TaskValue::Command(command)) => task.command = Some(command.value()),
        (TaskKey::Env, TaskValue::Env(env)) => {
            task.env = env
                .iter()
                .map(|(name, value)| (name.value(), value.value()))
                .collect();
        }
        (TaskKey::Cwd, TaskValue::Cwd(cwd)) => task.cwd = Some(cwd.value()),
        (TaskKey::CleanEnv, TaskValue::Bool(flag)) => task.clean_env = flag.value,
        (TaskKey::DependsOn, TaskValue::DependsOn(dependencies)) => {
            task.depends_on = dependencies.iter().map(UnrawString::unraw_string).collect();
            dependency_tokens = Some(dependencies.iter().map(ToTokens::to_token_stream).collect());
        }
        (TaskKey::Timeout, TaskValue::Int(n)) => task.timeout = n,
        (TaskKey::Retries, TaskValue::Int(n)) => task.retries = n,
        (TaskKey::RetryDelay, TaskValue::Int(n)) => task.retry_delay = n,
        (TaskKey::RetryMaxDelay, TaskValue::Int(n)) => task.retry_max_delay = n,
        (TaskKey::RetryFactor, TaskValue::Float(x)) => task.retry_factor = x,
        (TaskKey::RetryJitter, TaskValue::Bool(flag)) => task.retry_jitter = Some(flag.value),
        (TaskKey::TriggerRule, TaskValue::TriggerRule(rule)) => task.trigger_rule = Some(rule.unraw_string()),
        (TaskKey::Queue, TaskValue::Queue(queue)) => task.queue = Some(queue.value()),
        (TaskKey::Priority, TaskValue::Int(n)) => task.priority = n,
        (TaskKey::Labels, TaskValue::Labels(labels)) => {
            task.labels = labels.iter().map(LitStr::value).collect()
        }
        (TaskKey::OnFailure | TaskKey::OnSuccess | TaskKey::OnRetry, TaskValue::Callback(path)) => {
            let name = path_name(&path);
            add_unique(callbacks, &name, &path);
            let slot = match key {
                TaskKey::OnFailure => &mut task.on_failure,
                TaskKey::OnSuccess => &mut task.on_success,
                _ => &mut task.on_retry,
            };
            *slot = Some(name);
        }
        // The parser pairs every key with its own kind of value.
        _ => {}
    }
    (key.ir_key(false), dependency_tokens)
}

trait UnrawString {
    fn unraw_string(&self) -> String;
}

impl UnrawString for Ident {
    fn unraw_string(&self) -> String {
        syn::ext::IdentExt::unraw(self).to_string()
    }
}
