//! The syntax of `dag!`: `Parse` impls that keep every token, so that
//! validation can point at what the user wrote.
//!
//! Keys are dispatched with `lookahead1()`, so a misspelt key gets an error
//! listing the accepted ones. Problems that do not stop parsing (an unknown or
//! repeated key, a number that does not fit) are collected in
//! [`DagDef::errors`] and reported together with the validator's findings.

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{Lookahead1, Parse, ParseStream};
use syn::{Attribute, Ident, LitBool, LitStr, Path, Token, Visibility, braced, bracketed, token};

/// Keywords of `dag!`. `type` is Rust's own keyword, `Token![type]`.
pub(crate) mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(description);
    syn::custom_keyword!(schedule);
    syn::custom_keyword!(catchup);
    syn::custom_keyword!(on_failure);
    syn::custom_keyword!(on_success);
    syn::custom_keyword!(on_retry);
    syn::custom_keyword!(defaults);
    syn::custom_keyword!(tasks);
    syn::custom_keyword!(run);
    syn::custom_keyword!(command);
    syn::custom_keyword!(env);
    syn::custom_keyword!(cwd);
    syn::custom_keyword!(clean_env);
    syn::custom_keyword!(depends_on);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(retries);
    syn::custom_keyword!(retry_delay);
    syn::custom_keyword!(retry_factor);
    syn::custom_keyword!(retry_max_delay);
    syn::custom_keyword!(retry_jitter);
    syn::custom_keyword!(trigger_rule);
    syn::custom_keyword!(queue);
    syn::custom_keyword!(priority);
    syn::custom_keyword!(labels);
}

/// A whole `dag! { ... }` invocation.
pub(crate) struct DagDef {
    /// `///` comments before `name`.
    pub(crate) docs: Vec<Attribute>,
    /// The DAG-level settings in the order written.
    pub(crate) settings: Vec<Setting<DagValue>>,
    /// Problems found while parsing that did not stop it.
    pub(crate) errors: Vec<syn::Error>,
}

/// One `key: value` entry; `key` keeps the key's token for spans.
pub(crate) struct Setting<V> {
    pub(crate) key: Ident,
    pub(crate) value: V,
    /// The value's tokens, for an error spanning the whole value.
    pub(crate) value_tokens: TokenStream,
}

/// A DAG-level value.
pub(crate) enum DagValue {
    Name { vis: Visibility, ident: Ident },
    Description(LitStr),
    Schedule(LitStr),
    Catchup(LitBool),
    Callback(Path),
    Defaults(Vec<Setting<(TaskKey, TaskValue)>>),
    Tasks(Vec<TaskDef>),
}

/// One task: `/// docs` `id: { key: value, ... }`.
pub(crate) struct TaskDef {
    pub(crate) docs: Vec<Attribute>,
    pub(crate) id: Ident,
    pub(crate) settings: Vec<Setting<(TaskKey, TaskValue)>>,
}

/// A task-level (or `defaults`) value.
pub(crate) enum TaskValue {
    Run(Path),
    Type(Ident),
    Command(LitStr),
    Env(Vec<(LitStr, LitStr)>),
    Cwd(LitStr),
    DependsOn(Vec<Ident>),
    /// `timeout`, `retries`, `retry_delay`, `retry_max_delay`; `None` when the
    /// literal did not fit (already reported).
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(LitBool),
    TriggerRule(Ident),
    Queue(LitStr),
    Labels(Vec<LitStr>),
    Callback(Path),
}

impl Parse for DagDef {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let docs = parse_docs(input)?;
        let mut errors = Vec::new();
        let mut settings = Vec::new();
        while !input.is_empty() {
            if input.peek(Token![#]) {
                return Err(input.error("doc comments on the dag go before `name:`"));
            }
            let lookahead = input.lookahead1();
            let start = input.fork();
            let value = if lookahead.peek(kw::name) {
                let key = parse_key(input)?;
                let vis: Visibility = input.parse()?;
                let ident = input.call(Ident::parse_any)?;
                Some((key, DagValue::Name { vis, ident }))
            } else if lookahead.peek(kw::description) {
                Some((parse_key(input)?, DagValue::Description(input.parse()?)))
            } else if lookahead.peek(kw::schedule) {
                Some((parse_key(input)?, DagValue::Schedule(input.parse()?)))
            } else if lookahead.peek(kw::catchup) {
                Some((parse_key(input)?, DagValue::Catchup(input.parse()?)))
            } else if lookahead.peek(kw::on_failure) || lookahead.peek(kw::on_success) {
                Some((
                    parse_key(input)?,
                    DagValue::Callback(input.call(Path::parse_mod_style)?),
                ))
            } else if lookahead.peek(kw::defaults) {
                let key = parse_key(input)?;
                let content;
                braced!(content in input);
                let defaults = parse_settings(&content, SettingsKind::Defaults, "`defaults`", &mut errors)?;
                Some((key, DagValue::Defaults(defaults)))
            } else if lookahead.peek(kw::tasks) {
                let key = parse_key(input)?;
                let content;
                braced!(content in input);
                let tasks = parse_tasks(&content, &mut errors)?;
                Some((key, DagValue::Tasks(tasks)))
            } else {
                skip_unknown_key(input, lookahead, "the dag", DAG_KEYS, &mut errors)?;
                None
            };
            if let Some((key, value)) = value {
                let value_tokens = tokens_between(&start, input, 2);
                push_setting(
                    &mut settings,
                    Setting {
                        key,
                        value,
                        value_tokens,
                    },
                    "the dag",
                    &mut errors,
                );
            }
            parse_separator(input)?;
        }
        Ok(DagDef {
            docs,
            settings,
            errors,
        })
    }
}

/// Which keys a `{ ... }` block of task settings accepts.
#[derive(Clone, Copy, PartialEq)]
enum SettingsKind {
    Task,
    Defaults,
}

fn parse_tasks(input: ParseStream<'_>, errors: &mut Vec<syn::Error>) -> syn::Result<Vec<TaskDef>> {
    let mut tasks = Vec::new();
    while !input.is_empty() {
        let docs = parse_docs(input)?;
        let id = input
            .call(Ident::parse_any)
            .map_err(|e| syn::Error::new(e.span(), "expected a task id: `my_task: { run: my_handler }`"))?;
        input.parse::<Token![:]>()?;
        if !input.peek(token::Brace) {
            return Err(input.error(format!("expected `{{ ... }}` with the settings of task `{id}`")));
        }
        let content;
        braced!(content in input);
        let settings = parse_settings(&content, SettingsKind::Task, &format!("task `{id}`"), errors)?;
        tasks.push(TaskDef { docs, id, settings });
        parse_separator(input)?;
    }
    Ok(tasks)
}

fn parse_settings(
    input: ParseStream<'_>,
    kind: SettingsKind,
    owner: &str,
    errors: &mut Vec<syn::Error>,
) -> syn::Result<Vec<Setting<(TaskKey, TaskValue)>>> {
    let mut settings = Vec::new();
    let task_only = kind == SettingsKind::Task;
    while !input.is_empty() {
        let lookahead = input.lookahead1();
        // `peek` records each key for the error message, so task-only keys are
        // only peeked where they are accepted.
        let task_key = if task_only && lookahead.peek(kw::run) {
            Some(TaskKey::Run)
        } else if task_only && lookahead.peek(Token![type]) {
            Some(TaskKey::Type)
        } else if task_only && lookahead.peek(kw::command) {
            Some(TaskKey::Command)
        } else if task_only && lookahead.peek(kw::env) {
            Some(TaskKey::Env)
        } else if task_only && lookahead.peek(kw::cwd) {
            Some(TaskKey::Cwd)
        } else if task_only && lookahead.peek(kw::clean_env) {
            Some(TaskKey::CleanEnv)
        } else if task_only && lookahead.peek(kw::depends_on) {
            Some(TaskKey::DependsOn)
        } else if lookahead.peek(kw::timeout) {
            Some(TaskKey::Timeout)
        } else if lookahead.peek(kw::retries) {
            Some(TaskKey::Retries)
        } else if lookahead.peek(kw::retry_delay) {
            Some(TaskKey::RetryDelay)
        } else if lookahead.peek(kw::retry_factor) {
            Some(TaskKey::RetryFactor)
        } else if lookahead.peek(kw::retry_max_delay) {
            Some(TaskKey::RetryMaxDelay)
        } else if lookahead.peek(kw::retry_jitter) {
            Some(TaskKey::RetryJitter)
        } else if lookahead.peek(kw::trigger_rule) {
            Some(TaskKey::TriggerRule)
        } else if lookahead.peek(kw::queue) {
            Some(TaskKey::Queue)
        } else if task_only && lookahead.peek(kw::priority) {
            Some(TaskKey::Priority)
        } else if task_only && lookahead.peek(kw::labels) {
            Some(TaskKey::Labels)
        } else if task_only && lookahead.peek(kw::on_failure) {
            Some(TaskKey::OnFailure)
        } else if task_only && lookahead.peek(kw::on_success) {
            Some(TaskKey::OnSuccess)
        } else if task_only && lookahead.peek(kw::on_retry) {
            Some(TaskKey::OnRetry)
        } else {
            let accepted = if task_only { TASK_KEYS } else { DEFAULTS_KEYS };
            skip_unknown_key(input, lookahead, owner, accepted, errors)?;
            None
        };
        if let Some(task_key) = task_key {
            let key = parse_key(input)?;
            let start = input.fork();
            let value = parse_task_value(input, task_key, errors)?;
            let value_tokens = tokens_between(&start, input, 0);
            push_setting(
                &mut settings,
                Setting {
                    key,
                    value: (task_key, value),
                    value_tokens,
                },
                owner,
                errors,
            );
        }
        parse_separator(input)?;
    }
    Ok(settings)
}
/// A task-level (or `defaults`) key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TaskKey {
    Run,
    Type,
    Command,
    Env,
    Cwd,
    CleanEnv,
    DependsOn,
    Timeout,
    Retries,
    RetryDelay,
    RetryFactor,
    RetryMaxDelay,
    RetryJitter,
    TriggerRule,
    Queue,
    Priority,
    Labels,
    OnFailure,
    OnSuccess,
    OnRetry,
}

impl TaskKey {
    /// The key as the IR and the validator's `Location` name it.
    pub(crate) fn ir_key(self, in_defaults: bool) -> &'static str {
        match (self, in_defaults) {
            (TaskKey::Run, _) => "handler",
            (TaskKey::Type, _) => "type",
            (TaskKey::Command, _) => "command",
            (TaskKey::Env, _) => "env",
            (TaskKey::Cwd, _) => "cwd",
            (TaskKey::CleanEnv, _) => "clean_env",
            (TaskKey::DependsOn, _) => "depends_on",
            (TaskKey::Timeout, false) => "timeout",
            (TaskKey::Timeout, true) => "defaults.timeout",
            (TaskKey::Retries, false) => "retries",
            (TaskKey::Retries, true) => "defaults.retries",
            (TaskKey::RetryDelay, false) => "retry_delay",
            (TaskKey::RetryDelay, true) => "defaults.retry_delay",
            (TaskKey::RetryFactor, false) => "retry_factor",
            (TaskKey::RetryFactor, true) => "defaults.retry_factor",
            (TaskKey::RetryMaxDelay, false) => "retry_max_delay",
            (TaskKey::RetryMaxDelay, true) => "defaults.retry_max_delay",
            (TaskKey::RetryJitter, false) => "retry_jitter",
            (TaskKey::RetryJitter, true) => "defaults.retry_jitter",
            (TaskKey::TriggerRule, false) => "trigger_rule",
            (TaskKey::TriggerRule, true) => "defaults.trigger_rule",
            (TaskKey::Queue, false) => "queue",
            (TaskKey::Queue, true) => "defaults.queue",
            (TaskKey::Priority, _) => "priority",
            (TaskKey::Labels, _) => "labels",
            (TaskKey::OnFailure, _) => "on_failure",
            (TaskKey::OnSuccess, _) => "on_success",
            (TaskKey::OnRetry, _) => "on_retry",
        }
    }
}

fn parse_task_value(
    input: ParseStream<'_>,
    key: TaskKey,
    errors: &mut Vec<syn::Error>,
) -> syn::Result<TaskValue> {
    Ok(match key {
        TaskKey::Run => TaskValue::Run(parse_fn_path(input, "a path to an async fn: `run: my_handler`", RUN_HELP)?),
        TaskKey::Type => TaskValue::Type(
            input
                .call(Ident::parse_any)
                .map_err(|e| syn::Error::new(e.span(), "expected a task type: `local` or `shell`"))?,
        ),
        TaskKey::Command => TaskValue::Command(input.parse()?),
        TaskKey::Env => {
            let content;
            braced!(content in input);
            let mut env = Vec::new();
            while !content.is_empty() {
                let name: LitStr = content.parse()?;
                content.parse::<Token![:]>()?;
                let value: LitStr = content.parse()?;
                if env.iter().any(|(n, _): &(LitStr, LitStr)| n.value() == name.value()) {
                    errors.push(syn::Error::new(
                        name.span(),
                        format!("environment variable `{}` is set twice", name.value()),
                    ));
                }
                env.push((name, value));
                parse_separator(&content)?;
            }
            TaskValue::Env(env)
        }
        TaskKey::Cwd => TaskValue::Cwd(input.parse()?),
        TaskKey::DependsOn => {
            let content;
            bracketed!(content in input);
            let mut dependencies = Vec::new();
            while !content.is_empty() {
                dependencies.push(
                    content
                        .call(Ident::parse_any)
                        .map_err(|e| syn::Error::new(e.span(), "expected a task id"))?,
                );
                parse_separator(&content)?;
            }
            TaskValue::DependsOn(dependencies)
        }
        TaskKey::Timeout | TaskKey::Retries | TaskKey::RetryDelay | TaskKey::RetryMaxDelay | TaskKey::Priority => {
            TaskValue::Int(parse_int(input, errors)?)
        }
        TaskKey::Labels => {
            let content;
            bracketed!(content in input);
            let mut labels = Vec::new();
            while !content.is_empty() {
                labels.push(content.parse::<LitStr>()?);
                parse_separator(&content)?;
            }
            TaskValue::Labels(labels)
        }
        TaskKey::RetryFactor => TaskValue::Float(parse_float(input, errors)?),
        TaskKey::RetryJitter | TaskKey::CleanEnv => TaskValue::Bool(input.parse()?),
        TaskKey::TriggerRule => TaskValue::TriggerRule(input.call(Ident::parse_any).map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected a trigger rule: all_success, all_done, all_failed, one_success, one_failed or none_failed",
            )
        })?),
        TaskKey::Queue => TaskValue::Queue(input.parse()?),
        TaskKey::OnFailure | TaskKey::OnSuccess | TaskKey::OnRetry => TaskValue::Callback(parse_fn_path(
            input,
            "a path to an async fn taking a CallbackContext: `on_failure: alert_team`",
            CALLBACK_HELP,
        )?),
    })
}

/// How to adapt what is not a path to an `async fn(TaskContext) -> TaskResult`.
const RUN_HELP: &str = "\n\
    help: to run a closure, or a fn with another signature, wrap it in an async fn and name that fn:\n\
    \x20   async fn my_handler(ctx: TaskContext) -> TaskResult {\n\
    \x20       other_fn(ctx, 10).await\n\
    \x20   }";

/// How to adapt what is not a path to an `async fn(CallbackContext) -> CallbackResult`.
const CALLBACK_HELP: &str = "\n\
    help: to use a closure, or a fn with another signature, wrap it in an async fn and name that fn:\n\
    \x20   async fn alert_team(ctx: CallbackContext) -> CallbackResult {\n\
    \x20       other_fn(ctx, \"#ops\").await\n\
    \x20   }";

/// A path to an async fn; anything else (a string, a closure, a call) is an
/// error saying what is expected and how to adapt what was written.
fn parse_fn_path(input: ParseStream<'_>, expected: &str, help: &str) -> syn::Result<Path> {
    if input.peek(LitStr) {
        return Err(input.error(format!("expected {expected}, not a string")));
    }
    let path = input
        .call(Path::parse_mod_style)
        .map_err(|e| syn::Error::new(e.span(), format!("expected {expected}{help}")))?;
    // A call or a method chain (`make_handler()`, `h.clone()`) starts with a
    // path; what follows it must end the value.
    if !input.is_empty() && !input.peek(Token![,]) {
        return Err(input.error(format!("expected {expected}, not an expression{help}")));
    }
    Ok(path)
}

/// An integer literal with an optional `-`. Out-of-range values are the
/// validator's business; a literal that does not fit in an `i64` is reported here.
fn parse_int(input: ParseStream<'_>, errors: &mut Vec<syn::Error>) -> syn::Result<Option<i64>> {
    let negative = input.parse::<Option<Token![-]>>()?.is_some();
    let lookahead = input.lookahead1();
    if !lookahead.peek(syn::LitInt) {
        if input.peek(syn::LitFloat) {
            return Err(input.error("expected a whole number, not a fraction"));
        }
        return Err(lookahead.error());
    }
    let literal: syn::LitInt = input.parse()?;
    if !literal.suffix().is_empty() {
        errors.push(syn::Error::new(
            literal.span(),
            "write the number without a type suffix",
        ));
        return Ok(None);
    }
    let digits = if negative {
        format!("-{}", literal.base10_digits())
    } else {
        literal.base10_digits().to_owned()
    };
    match digits.parse::<i64>() {
        Ok(value) => Ok(Some(value)),
        Err(_) => {
            errors.push(syn::Error::new(
                literal.span(),
                format!("the number {digits} is far too large"),
            ));
            Ok(None)
        }
    }
}

fn parse_float(input: ParseStream<'_>, errors: &mut Vec<syn::Error>) -> syn::Result<Option<f64>> {
    let negative = input.parse::<Option<Token![-]>>()?.is_some();
    let lookahead = input.lookahead1();
    let (digits, suffix, span) = if lookahead.peek(syn::LitFloat) {
        let literal: syn::LitFloat = input.parse()?;
        (
            literal.base10_digits().to_owned(),
            literal.suffix().to_owned(),
            literal.span(),
        )
    } else if lookahead.peek(syn::LitInt) {
        let literal: syn::LitInt = input.parse()?;
        (
            literal.base10_digits().to_owned(),
            literal.suffix().to_owned(),
            literal.span(),
        )
    } else {
        return Err(lookahead.error());
    };
    if !suffix.is_empty() {
        errors.push(syn::Error::new(span, "write the number without a type suffix"));
        return Ok(None);
    }
    match digits.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(Some(if negative { -value } else { value })),
        _ => {
            errors.push(syn::Error::new(
                span,
                format!("`{digits}` is not a usable number"),
            ));
            Ok(None)
        }
    }
}

/// `///` comments; any other attribute is an error.
fn parse_docs(input: ParseStream<'_>) -> syn::Result<Vec<Attribute>> {
    let attrs = input.call(Attribute::parse_outer)?;
    for attr in &attrs {
        if !attr.path().is_ident("doc") {
            return Err(syn::Error::new_spanned(
                attr,
                "only doc comments (`///`) are allowed here",
            ));
        }
    }
    Ok(attrs)
}

/// Consumes `key:` and returns the key.
fn parse_key(input: ParseStream<'_>) -> syn::Result<Ident> {
    let key = input.call(Ident::parse_any)?;
    input.parse::<Token![:]>()?;
    Ok(key)
}

/// Records an unknown key (naming the accepted ones) and skips its value, so
/// that parsing goes on and later problems are reported too.
fn skip_unknown_key(
    input: ParseStream<'_>,
    lookahead: Lookahead1<'_>,
    owner: &str,
    accepted: &[&str],
    errors: &mut Vec<syn::Error>,
) -> syn::Result<()> {
    if !input.peek(Ident::peek_any) || !input.peek2(Token![:]) || input.peek2(Token![::]) {
        return Err(lookahead.error());
    }
    let key = input.call(Ident::parse_any)?;
    let expected = lookahead.error().to_string();
    let hint = did_you_mean(&key.to_string(), accepted.iter().copied());
    errors.push(syn::Error::new(
        key.span(),
        format!("unknown key `{key}` in {owner}: {expected}{hint}"),
    ));
    input.parse::<Token![:]>()?;
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

const DAG_KEYS: &[&str] = &[
    "name",
    "description",
    "schedule",
    "catchup",
    "on_failure",
    "on_success",
    "defaults",
    "tasks",
];
const TASK_KEYS: &[&str] = &[
    "run",
    "type",
    "command",
    "env",
    "cwd",
    "clean_env",
    "depends_on",
    "timeout",
    "retries",
    "retry_delay",
    "retry_factor",
    "retry_max_delay",
    "retry_jitter",
    "trigger_rule",
    "queue",
    "priority",
    "labels",
    "on_failure",
    "on_success",
    "on_retry",
];
const DEFAULTS_KEYS: &[&str] = &[
    "timeout",
    "retries",
    "retry_delay",
    "retry_factor",
    "retry_max_delay",
    "retry_jitter",
    "trigger_rule",
    "queue",
];

/// `: did you mean `x`?` naming the candidate closest to `word`, if one is
/// close enough to be a typo; otherwise empty.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| format!(": did you mean `{candidate}`?"))
        .unwrap_or_default()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Entries are separated by commas; the last may have one.
fn parse_separator(input: ParseStream<'_>) -> syn::Result<()> {
    if input.is_empty() {
        return Ok(());
    }
    input.parse::<Token![,]>().map(drop)
}

fn push_setting<V>(
    settings: &mut Vec<Setting<V>>,
    setting: Setting<V>,
    owner: &str,
    errors: &mut Vec<syn::Error>,
) {
    if settings.iter().any(|s| s.key == setting.key) {
        errors.push(syn::Error::new(
            setting.key.span(),
            format!("`{}` is set twice in {owner}", setting.key),
        ));
    } else {
        settings.push(setting);
    }
}

/// The tokens `start` has that `end` has not any more, skipping `skip` leading
/// tokens (`key :`).
fn tokens_between(start: ParseStream<'_>, end: ParseStream<'_>, skip: usize) -> TokenStream {
    let end = end.cursor();
    let mut cursor = start.cursor();
    let mut tokens = TokenStream::new();
    let mut n = 0;
    while cursor != end {
        let Some((tree, next)) = cursor.token_tree() else {
            break;
        };
        if n >= skip {
            tree.to_tokens(&mut tokens);
        }
        n += 1;
        cursor = next;
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(
            did_you_mean("timout", TASK_KEYS.iter().copied()),
            ": did you mean `timeout`?"
        );
        assert_eq!(did_you_mean("colour", TASK_KEYS.iter().copied()), "");
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn parses_every_key_without_errors() {
        let def: DagDef = syn::parse_quote! {
            /// docs
            name: pub(crate) etl,
            description: "d", schedule: "@daily", catchup: false, on_failure: a, on_success: b::c,
            defaults: { timeout: 1, retries: 2, retry_delay: 3, retry_factor: 2, retry_max_delay: 4,
                        retry_jitter: true, trigger_rule: all_done, queue: "q" },
            tasks: {
                /// task docs
                t: { run: f, type: local, depends_on: [], timeout: -1, retry_factor: 1.5,
                     on_failure: a, on_success: a, on_retry: a },
                s: { type: shell, command: "x", env: { "A": "${params.a}", }, cwd: "/", clean_env: true, },
            },
        };
        assert!(def.errors.is_empty());
        assert_eq!(def.settings.len(), 8);
    }

    #[test]
    fn reports_oversized_numbers_without_panicking() {
        let def: DagDef = syn::parse_quote! {
            name: etl,
            tasks: { t: { run: f, timeout: 99999999999999999999999, retry_factor: 1e999, retries: 5u8 } },
        };
        assert_eq!(def.errors.len(), 3);
    }
}
