//! The `dag!` macro of Cascade: a DAG written in Rust, checked by the IR
//! validator at compile time and baked into JSON IR plus a table of handler fn
//! pointers.
//!
//! Use it through `cascade_core::dag`; the documentation of the syntax and of
//! the compile errors is there and in `docs/ir.md`. This crate is parse →
//! validate → expand: `ast` holds the syntax, `validate` builds the IR and runs
//! `cascade_ir::validate` on it, `expand` generates the code.
//!
//! Set `CASCADE_MACROS_DEBUG=1` to print every expansion to stderr.

use proc_macro::TokenStream;
use syn::parse_macro_input;

mod ast;
mod expand;
mod validate;

/// Defines a DAG and generates `fn NAME() -> cascade_core::Dag`.
///
/// ```text
/// dag! {
///     /// The nightly ETL.
///     name: pub etl,
///     schedule: "0 3 * * *",
///     defaults: { retries: 2, queue: "etl" },
///     tasks: {
///         extract: { run: extract, timeout: 300 },
///         load:    { run: crate::db::load, depends_on: [extract] },
///         report:  { type: shell, command: "./report.sh", depends_on: [load],
///                    env: { "REGION": "${params.region}", "ROWS": "${upstream.load.rows}" } },
///     }
/// }
/// ```
///
/// Entries are `key: value`, separated by commas (a trailing comma is fine).
/// Each key may appear once; an unknown key is an error that lists the
/// accepted ones. The same settings in JSON are documented in `docs/ir.md`.
///
/// # DAG keys
///
/// | key | value | default |
/// |---|---|---|
/// | `name` | identifier, optionally with a visibility: `name: pub etl` | **required**; the DAG's unique name and the generated fn's name |
/// | `description` | string | `""` |
/// | `schedule` | string: a cron expression in UTC, five fields (or six with leading seconds), or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`, … | none: the DAG runs only when triggered |
/// | `catchup` | `true` / `false`: backfill every missed cron tick instead of only the latest | `false` |
/// | `defaults` | `{ key: value, … }` with any of `timeout`, `retries`, `retry_delay`, `retry_factor`, `retry_max_delay`, `retry_jitter`, `trigger_rule`, `queue`: the value of each task that does not set its own | `{}` |
/// | `on_failure` | path to an `async fn(CallbackContext) -> CallbackResult`, run when a job fails | none |
/// | `on_success` | path to an `async fn(CallbackContext) -> CallbackResult`, run when a job succeeds | none |
/// | `tasks` | `{ task_id: { key: value, … }, … }` | **required**, at least one task |
///
/// `///` comments before `name:` document the generated fn; `///` comments
/// before a task id are listed in that documentation.
///
/// # Task keys
///
/// | key | value | default |
/// |---|---|---|
/// | `run` | path to an `async fn(TaskContext) -> TaskResult`: `run: extract`, `run: crate::etl::load` | **required** for local tasks; not allowed on shell tasks |
/// | `type` | `local` (runs `run`) or `shell` (runs `command`) | `local` |
/// | `command` | string, run by `/bin/sh -c` | **required** for shell tasks |
/// | `env` | `{ "NAME": "value", … }`: extra environment variables of a shell task. A value may hold `${params.<field>}` and `${upstream.<dependency>.<field>}` (any depth, `.0` indexes an array); it is filled in when the task runs, never in the command text. `$${` is a literal `${` | `{}` |
/// | `cwd` | string: the working directory of a shell task | the engine's |
/// | `clean_env` | `true` / `false`: start a shell task from a clean environment (`PATH`, `HOME`, `USER`, `LANG`-like basics only) instead of the engine's environment without its secrets | `false` |
/// | `depends_on` | `[task_id, …]`: the tasks this one runs after, whose results it receives | `[]` |
/// | `timeout` | whole seconds, 1 to 2,592,000 (30 days) | none |
/// | `retries` | 0 to 100 retries after the first attempt | `0` |
/// | `retry_delay` | whole seconds before the first retry, 0 to 86,400 | `0` |
/// | `retry_factor` | number, 1.0 to 10.0: each further retry waits this many times longer | `2.0` |
/// | `retry_max_delay` | whole seconds, 0 to 604,800, at least `retry_delay`: the cap on a retry's delay | `max(3600, retry_delay)` |
/// | `retry_jitter` | `true` / `false`: equal jitter, the delay is random in `[d / 2, d]` of the computed delay `d` | `true` |
/// | `trigger_rule` | `all_success`, `all_done`, `all_failed`, `one_success`, `one_failed` or `none_failed` | `all_success` |
/// | `queue` | string: the queue workers claim the task from | `"default"` |
/// | `priority` | whole number, -1000 to 1000: higher starts first among waiting tasks | `0` |
/// | `labels` | `["gpu", …]`: labels a worker must all have to claim the task | `[]` |
/// | `on_failure` | path to an `async fn(CallbackContext) -> CallbackResult`, run when the task fails | none |
/// | `on_success` | path to an `async fn(CallbackContext) -> CallbackResult`, run when the task succeeds | none |
/// | `on_retry` | path to an `async fn(CallbackContext) -> CallbackResult`, run when a retry is scheduled | none |
///
/// `run` and the callbacks take a path, not an expression. To run a closure
/// or a fn with another signature, wrap it in an `async fn`:
///
/// ```text
/// async fn load(ctx: TaskContext) -> TaskResult {
///     load_rows(ctx.params_as::<LoadParams>()?).await
/// }
/// ```
///
/// # Errors
///
/// A definition the validator rejects (a cycle, an unknown dependency, a bad
/// value, an `env` reference to a task that is not a direct dependency, …) is
/// a compile error pointing at the offending token, and every problem in the
/// definition is reported at once. A `run:` fn with the wrong signature is a
/// type error at its path. Compiled examples of every key are the UI tests in
/// `tests/macro-ui`.
#[proc_macro]
pub fn dag(input: TokenStream) -> TokenStream {
    let def = parse_macro_input!(input as ast::DagDef);
    let output = expand::dag(def).unwrap_or_else(syn::Error::into_compile_error);
    if std::env::var_os("CASCADE_MACROS_DEBUG").is_some_and(|v| v == "1") {
        eprintln!("{output}");
    }
    output.into()
}
