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
///     }
/// }
/// ```
///
/// (Compiled examples of every key are the UI tests in `tests/macro-ui`, and
/// the crate docs of `cascade_core`.)
///
/// A definition the validator rejects (a cycle, an unknown dependency, a bad
/// value, …) is a compile error pointing at the offending token, and every
/// problem in the definition is reported at once.
#[proc_macro]
pub fn dag(input: TokenStream) -> TokenStream {
    let def = parse_macro_input!(input as ast::DagDef);
    let output = expand::dag(def).unwrap_or_else(syn::Error::into_compile_error);
    if std::env::var_os("CASCADE_MACROS_DEBUG").is_some_and(|v| v == "1") {
        eprintln!("{output}");
    }
    output.into()
}
