//! Generates the DAG fn: the baked IR, one wrapper per handler and callback,
//! and the tables of fn pointers.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Meta};

use crate::ast::DagDef;
use crate::validate::{self, Checked, Header};

/// Parses nothing: checks the definition and expands it. Validation errors
/// come back as `Ok` tokens holding the errors plus a stub fn, so that the
/// rest of the crate still sees the fn and the handlers are still type-checked.
pub(crate) fn dag(def: DagDef) -> syn::Result<TokenStream> {
    let checked = validate::check(def)?;
    let function = generate(&checked);
    Ok(match &checked.error {
        Some(error) => {
            let mut tokens = error.to_compile_error();
            tokens.extend(function);
            tokens
        }
        None => function,
    })
}

fn generate(checked: &Checked) -> TokenStream {
    let Header { vis, name, .. } = &checked.header;
    let docs = docs(&checked.header);
    let private = quote!(::cascade_core::__private);

    let mut wrappers = Vec::new();
    let mut handler_entries = Vec::new();
    for (i, (handler, path)) in checked.handlers.iter().enumerate() {
        let wrapper = format_ident!("__h{}", i);
        // Spanned at the `run:` path: a handler with the wrong signature fails
        // to compile with the error on that path.
        // Every token of the call carries the path's span: a token spanned at
        // the call site would make rustc report at the whole `dag!` instead.
        wrappers.push(quote_spanned! {path.span()=>
            fn #wrapper(
                ctx: ::cascade_core::__private::TaskContext,
            ) -> ::cascade_core::__private::BoxFuture<::cascade_core::__private::TaskResult> {
                ::cascade_core::__private::call_handler(#path, ctx)
            }
        });
        handler_entries.push(quote!((#handler, #wrapper as #private::HandlerFn)));
    }
    let mut callback_entries = Vec::new();
    for (i, (callback, path)) in checked.callbacks.iter().enumerate() {
        let wrapper = format_ident!("__c{}", i);
        wrappers.push(quote_spanned! {path.span()=>
            fn #wrapper(
                ctx: ::cascade_core::__private::CallbackContext,
            ) -> ::cascade_core::__private::BoxFuture<::cascade_core::__private::CallbackResult> {
                ::cascade_core::__private::call_callback(#path, ctx)
            }
        });
        callback_entries.push(quote!((#callback, #wrapper as #private::CallbackFn)));
    }

    let body = match &checked.ir_json {
        Some(ir_json) => {
            let ir_json = LitStr::new(ir_json, Span::call_site());
            quote! {
                const IR: &str = #ir_json;
                #private::dag_from_macro(IR, HANDLERS, CALLBACKS)
            }
        }
        None => quote! {
            let _ = (HANDLERS, CALLBACKS);
            ::core::panic!("the dag! invocation of this fn has compile errors")
        },
    };
    quote! {
        #(#docs)*
        #vis fn #name() -> ::cascade_core::Dag {
            #(#wrappers)*
            static HANDLERS: &[(&str, #private::HandlerFn)] = &[#(#handler_entries),*];
            static CALLBACKS: &[(&str, #private::CallbackFn)] = &[#(#callback_entries),*];
            #body
        }
    }
}

/// The fn's docs: the dag's `///` comments (or a generated line), then a list
/// of the tasks that have docs of their own.
fn docs(header: &Header) -> Vec<TokenStream> {
    let mut docs: Vec<TokenStream> = header.docs.iter().map(|attr| quote!(#attr)).collect();
    if docs.is_empty() {
        let line = format!(" Builds the `{}` DAG, defined with `dag!`.", header.name);
        docs.push(quote!(#[doc = #line]));
    }
    if !header.task_docs.is_empty() {
        docs.push(quote!(#[doc = ""]));
        docs.push(quote!(#[doc = " # Tasks"]));
        docs.push(quote!(#[doc = ""]));
        for (task, attrs) in &header.task_docs {
            let text = doc_text(attrs).replace('\n', "\n   ");
            let line = format!(" - `{task}`: {}", text.trim_start());
            docs.push(quote!(#[doc = #line]));
        }
    }
    docs
}

fn doc_text(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(meta) => match &meta.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(text), ..
                }) => Some(text.value()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd inputs give errors, never panics.
    #[test]
    fn odd_inputs_do_not_panic() {
        let inputs = [
            "",
            "name:",
            "name: a",
            "name: a, name: b, tasks: {}",
            "name: a, tasks: {}",
            "name: a, tasks: { t: 5 }",
            "name: a, tasks: { t: { depends_on: [1] } }",
            "name: a, tasks: { t: { run: f, env: { a: b } } }",
            "name: a, tasks: { t: { run: f, timeout: - } }",
            "name: a, tasks: { t: { run: f, retry_factor: -0.0 } }",
            "name: a, tasks: { t: { run: f, x: , y: 1 } }",
            "name: a, tasks: { t: { run: ::f::<u8>, type: r#type } }",
            "name: r#type, tasks: { r#fn: { run: f, depends_on: [r#fn] } }",
            "name: a, defaults: { run: f }, tasks: { t: { run: f } }",
            "tasks: { t: { run: f } }, name: a",
            "name: a, schedule: \"\", tasks: { t: { type: shell, command: \"\" } }",
            "#[inline] name: a",
            "name: a, tasks: { t: { run: f } }, #[doc = \"late\"]",
        ];
        for input in inputs {
            if let Ok(def) = syn::parse_str::<DagDef>(input) {
                let _ = dag(def);
            }
        }
    }

    #[test]
    fn valid_dag_expands_to_a_fn_with_the_ir() {
        let def: DagDef = syn::parse_quote!(name: pub etl, tasks: { a: { run: crate::x } });
        let tokens = dag(def).map(|t| t.to_string()).unwrap_or_default();
        assert!(tokens.contains("pub fn etl"), "{tokens}");
        assert!(tokens.contains("dag_from_macro"), "{tokens}");
        assert!(tokens.contains(r#"\"handler\":\"crate::x\""#), "{tokens}");
    }
}
