//! Procedural macros of `billiard-plugin-api`. Plugin authors use them
//! through that crate: `billiard_plugin_api::task`.

#![warn(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, ToTokens};
mod options;

use syn::{
    parse_macro_input, spanned::Spanned, FnArg, GenericArgument, ItemFn, Pat, PathArguments,
    ReturnType, Type,
};

/// Turns an ordinary function into a billiard task.
///
/// Arguments are decoded positionally from the job's argument tuple (any
/// owned serde type); a `&TaskContext` argument, anywhere in the list, is
/// supplied by the host instead, and so is an `&Emitter<T>` argument, which
/// makes the task a streaming task (its items go to the host as it emits
/// them; `T` is shown as the item type in `inspect`). The function may return `T` or
/// `Result<T, E>` with `E: Display` (an `Err` becomes a `task_error`);
/// a one-argument alias such as `anyhow::Result<T>` counts as a `Result`.
/// The doc comment becomes the task's documentation in `inspect`.
///
/// The task's JSON Schemas (of its argument array and of its result, for
/// `inspect --json`) are derived here from its types through schemars: a
/// type that implements `JsonSchema` (standard types do; a plugin's own
/// derive it, see `billiard_plugin_api::JsonSchema`) is described, one
/// that does not gives no schema (`null`), never a compile error.
///
/// A task that no `export_plugin!` lists is a compile warning naming it
/// (`<task>_is_a_task_not_listed_in_export_plugin is never used`).
///
/// An error that is a `billiard_plugin_api::Failure` (or converts into one:
/// `E: Into<Failure>`) also carries the Python exception class a Celery
/// caller catches and may ask for a retry, a reject or an ignore.
///
/// Registration options, as Celery's `@app.task(...)` takes them (checked
/// here, at compile time; `inspect` shows them, the worker applies them):
///
/// ```ignore
/// #[task(
///     rate_limit = "100/m",               // N, N/s, N/m or N/h (Celery's syntax)
///     max_retries = 5,                    // cap on retries
///     autoretry_for = "task_error,panic", // failure kinds retried without asking
///     retry_backoff = "1s",               // exponential backoff from this (or `true`: 1s)
///     retry_backoff_max = "10m",          // no delay longer
///     retry_jitter = false,               // draw delays from 0..=backoff
///     default_retry_delay = "3m",         // the delay without backoff
/// )]
/// fn fetch(url: String) -> Result<String, Failure> { ... }
/// ```
///
/// Celery names and arguments, as a Python `def` has them:
///
/// ```ignore
/// #[task(name = "proj.tasks.add")]           // the name a Celery client sends
/// fn add(a: i64, b: i64) -> i64 { a + b }
///
/// #[task(defaults(z = 3))]                   // add3(1, 2) is add3(1, 2, 3)
/// fn add3(x: i64, y: i64, z: i64) -> i64 { x + y + z }
///
/// #[task]                                    // a trailing Option<T>: absent is None
/// fn greet(name: String, title: Option<String>) -> String { ... }
///
/// #[task(varargs)]                           // the last Vec<T> takes extra
/// fn total(first: i64, rest: Vec<i64>) -> i64 { ... } // positional arguments (*rest)
/// ```
///
/// A default is a literal (`3`, `-1.5`, `"text"`, `true`), `None` or a list
/// of those; as in Python, arguments with defaults come last. Any argument
/// but the variadic tail may be given by keyword.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let options = match options::parse(attr.into()) {
        Ok(o) => o,
        Err(e) => {
            let mut ts = e.to_compile_error();
            if let Ok(func) = syn::parse::<ItemFn>(item) {
                func.to_tokens(&mut ts);
            }
            return ts.into();
        }
    };
    let func = parse_macro_input!(item as ItemFn);
    match expand_task(&func, &options) {
        Ok(ts) => ts.into(),
        Err(e) => {
            let mut ts = e.to_compile_error();
            func.to_tokens(&mut ts);
            ts.into()
        }
    }
}

/// `Vec<u8>` travels as a byte string (`codec::Bytes`: raw in bincode, an
/// array or `{"$bytes": base64}` in JSON); other types as they are.
fn is_vec_u8(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(last) = p.path.segments.last() else {
        return false;
    };
    if last.ident != "Vec" {
        return false;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return false;
    };
    matches!(args.args.first(), Some(GenericArgument::Type(Type::Path(inner))) if inner.path.is_ident("u8"))
}

fn is_context(ty: &Type) -> bool {
    let Type::Reference(r) = ty else { return false };
    let Type::Path(p) = &*r.elem else {
        return false;
    };
    p.path
        .segments
        .last()
        .is_some_and(|s| s.ident == "TaskContext")
}

/// `Some(T)` for `&Emitter<T>` (any path ending in `Emitter`).
fn emitter_item(ty: &Type) -> Option<&Type> {
    let Type::Reference(r) = ty else { return None };
    let Type::Path(p) = &*r.elem else {
        return None;
    };
    let last = p.path.segments.last()?;
    if last.ident != "Emitter" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

/// `Some(T)` when the return type is written `Result<T, E>` or `Result<T>`
/// (any path ending in `Result`: `std::io::Result<T>`, `anyhow::Result<T>`
/// and a crate's own alias are results too).
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    if !matches!(args.args.len(), 1 | 2) {
        return None;
    }
    match args.args.first() {
        Some(GenericArgument::Type(t)) => Some(t),
        _ => None,
    }
}

/// The type has an `impl Trait` somewhere (it cannot be named in a path).
fn mentions_impl(ty: &Type) -> bool {
    fn walk(ts: TokenStream2) -> bool {
        ts.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Ident(i) => i == "impl",
            proc_macro2::TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(ty.to_token_stream())
}

/// Type text as people write it: `Vec<u8>`, not `Vec < u8 >`.
fn type_text(ty: &impl ToTokens) -> String {
    let s = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = if i > 0 { chars[i - 1] } else { ' ' };
            let next = chars.get(i + 1).copied().unwrap_or(' ');
            if matches!(prev, '<' | '&' | ':' | '(' | '[')
                || matches!(next, '<' | '>' | ',' | ':' | ')' | ']' | ';')
            {
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// `Some(T)` for `Option<T>` (any path ending in `Option`).
fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first() {
        Some(GenericArgument::Type(t)) if args.args.len() == 1 => Some(t),
        _ => None,
    }
}

/// `Vec<T>` (not `Vec<u8>`, which travels as a byte string).
fn is_vec(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    p.path.segments.last().is_some_and(|s| {
        s.ident == "Vec" && matches!(s.arguments, PathArguments::AngleBracketed(_))
    }) && !is_vec_u8(ty)
}

/// Checks `defaults(...)` and `varargs` against the task's parameters
/// (`(name, type)` of each positional one, in order) as Python's
/// `def` would, and returns the trailing `Option<T>` parameters without an
/// explicit default (absent: `None`).
fn check_signature(
    parsed: &options::Parsed,
    params: &[(String, Type)],
    sig_span: Span,
) -> syn::Result<Vec<String>> {
    let fixed = match parsed.varargs {
        Some(span) => match params.last() {
            Some((name, ty)) if is_vec(ty) => {
                if parsed.defaults.iter().any(|(k, _, _)| k == name) {
                    return Err(syn::Error::new(
                        span,
                        format!("`{name}` is the variadic tail: it cannot have a default"),
                    ));
                }
                &params[..params.len() - 1]
            }
            _ => {
                return Err(syn::Error::new(
                    span,
                    "`varargs`: the task's last argument must be a `Vec<T>` (not `Vec<u8>`), which takes every extra positional argument",
                ))
            }
        },
        None => params,
    };
    for (k, _, span) in &parsed.defaults {
        if !fixed.iter().any(|(n, _)| n == k) {
            let names: Vec<&str> = fixed.iter().map(|(n, _)| n.as_str()).collect();
            return Err(syn::Error::new(
                *span,
                format!(
                    "`defaults`: the task has no argument `{k}` (it has: {})",
                    names.join(", ")
                ),
            ));
        }
    }
    let has_default = |n: &str| parsed.defaults.iter().any(|(k, _, _)| k == n);
    // Python's rule: after a parameter with a default, every one has one.
    let mut seen_default: Option<&str> = None;
    let mut optional = Vec::new();
    for (name, ty) in fixed {
        let explicit = has_default(name);
        let opt = option_inner(ty).is_some();
        if explicit {
            seen_default = Some(name);
        } else if opt && (seen_default.is_some() || trailing_optional(fixed, name, &has_default)) {
            optional.push(name.clone());
        } else if let Some(d) = seen_default {
            return Err(syn::Error::new(
                sig_span,
                format!(
                    "`{name}` has no default but follows `{d}`, which has one; as in Python, the arguments with defaults come last"
                ),
            ));
        }
    }
    Ok(optional)
}

/// Every parameter from `name` on has a default or is an `Option<T>`.
fn trailing_optional(
    fixed: &[(String, Type)],
    name: &str,
    has_default: &dyn Fn(&str) -> bool,
) -> bool {
    fixed
        .iter()
        .skip_while(|(n, _)| n != name)
        .all(|(n, t)| has_default(n) || option_inner(t).is_some())
}

fn expand_task(func: &ItemFn, parsed: &options::Parsed) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a #[task] function cannot be generic",
        ));
    }
    if sig.asyncness.is_some() {
        return Err(syn::Error::new(
            sig.span(),
            "a #[task] function cannot be async",
        ));
    }
    let name = &sig.ident;
    let name_str = name.to_string();
    let vis = &func.vis;

    let doc = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");

    let mut takes_context = false;
    let mut emitter: Option<Type> = None;
    let mut decode_types = Vec::new();
    let mut bindings = Vec::new();
    let mut conversions = Vec::new();
    let mut call_args = Vec::new();
    let mut arg_infos = Vec::new();
    let mut params: Vec<(String, Type)> = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = input else {
            return Err(syn::Error::new(
                input.span(),
                "a #[task] function cannot take self",
            ));
        };
        let ty = &*pt.ty;
        if is_context(ty) {
            if takes_context {
                return Err(syn::Error::new(
                    ty.span(),
                    "only one &TaskContext argument is allowed",
                ));
            }
            takes_context = true;
            call_args.push(quote!(ctx));
            continue;
        }
        if let Some(item) = emitter_item(ty) {
            if emitter.is_some() {
                return Err(syn::Error::new(
                    ty.span(),
                    "only one &Emitter argument is allowed",
                ));
            }
            emitter = Some(item.clone());
            call_args.push(quote!(&__billiard_emitter));
            continue;
        }
        if let Type::Reference(_) = ty {
            return Err(syn::Error::new(
                ty.span(),
                "task arguments must be owned types (e.g. String instead of &str, Vec<T> instead of &[T]); only &TaskContext and &Emitter<T> may be borrowed",
            ));
        }
        let arg_name = match &*pt.pat {
            Pat::Ident(id) => id.ident.to_string(),
            _ => format!("arg{i}"),
        };
        params.push((arg_name.clone(), ty.clone()));
        let var = format_ident!("__billiard_arg{}", i);
        if is_vec_u8(ty) {
            decode_types.push(quote!(::billiard_plugin_api::codec::Bytes));
            conversions.push(quote!(let #var = #var.0;));
        } else {
            decode_types.push(quote!(#ty));
        }
        bindings.push(var.clone());
        call_args.push(quote!(#var));
        let ty_str = type_text(ty);
        arg_infos.push(quote!(::billiard_plugin_api::abi::ArgInfo {
            name: ::billiard_plugin_api::__private::abi_stable::std_types::RStr::from_str(#arg_name),
            ty: ::billiard_plugin_api::__private::abi_stable::std_types::RStr::from_str(#ty_str),
        }));
    }

    let optional = check_signature(parsed, &params, sig.span())?;
    let options = parsed.json(&optional);

    // Each parameter's default as JSON text, for the callers that pass a
    // plain array that stops short (`glue::decode_args_defaulted`).
    let defaulted = !parsed.defaults.is_empty() || !optional.is_empty() || parsed.varargs.is_some();
    let default_texts: Vec<TokenStream2> = params
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let text = parsed
                .defaults
                .iter()
                .find(|(k, _, _)| k == name)
                .map(|(_, v, _)| v.clone())
                .or_else(|| optional.contains(name).then(|| "null".to_string()))
                .or_else(|| {
                    (parsed.varargs.is_some() && i + 1 == params.len()).then(|| "[]".to_string())
                });
            match text {
                Some(t) => quote!(::core::option::Option::Some(#t)),
                None => quote!(::core::option::Option::None),
            }
        })
        .collect();
    let decode = if bindings.is_empty() {
        quote!(::billiard_plugin_api::glue::decode_no_args(codec, args)?;)
    } else if defaulted {
        quote!(
            let (#(#bindings,)*): (#(#decode_types,)*) = ::billiard_plugin_api::glue::decode_args_defaulted(
                codec,
                args,
                &[#(#default_texts),*],
            )?;
            #(#conversions)*
        )
    } else {
        quote!(
            let (#(#bindings,)*): (#(#decode_types,)*) = ::billiard_plugin_api::glue::decode_args(codec, args)?;
            #(#conversions)*
        )
    };

    let streaming = emitter.is_some();
    let (item_str, make_emitter) = match &emitter {
        Some(item) => (
            type_text(item),
            quote!(let __billiard_emitter = ::billiard_plugin_api::Emitter::<#item>::new(ctx, codec);),
        ),
        None => (String::new(), quote!()),
    };
    let call = quote!(#name(#(#call_args),*));
    let (ret_str, produce) = match &sig.output {
        ReturnType::Default => ("()".to_string(), quote!({ #call; Ok(()) })),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => {
                let map = if is_vec_u8(ok) {
                    quote!(.map(::billiard_plugin_api::codec::Bytes))
                } else {
                    quote!()
                };
                // `ErrSlot` picks `Failure` for `E: Into<Failure>` and the
                // `Display` text for any other error (see glue::ErrSlot).
                (
                    type_text(ty),
                    quote!(match #call #map {
                        ::core::result::Result::Ok(v) => ::core::result::Result::Ok(v),
                        ::core::result::Result::Err(e) => {
                            #[allow(unused_imports)]
                            use ::billiard_plugin_api::glue::{ViaDisplay as _, ViaFailure as _};
                            ::core::result::Result::Err(
                                (&::billiard_plugin_api::glue::ErrSlot::new(e)).to_fail(),
                            )
                        }
                    }),
                )
            }
            None => {
                let value = if is_vec_u8(ty) {
                    quote!(::billiard_plugin_api::codec::Bytes(#call))
                } else {
                    call.clone()
                };
                (type_text(ty), quote!(Ok(#value)))
            }
        },
    };

    // The JSON Schemas `inspect --json` shows, derived from the types the
    // glue decodes and encodes (so `Vec<u8>` is `codec::Bytes`); a type
    // without `JsonSchema` gives `None` (see `schema::SchemaOf`).
    let args_schema = if decode_types.is_empty() {
        quote!(::billiard_plugin_api::schema::no_args())
    } else {
        quote!((&::billiard_plugin_api::schema::SchemaOf::<(#(#decode_types,)*)>::new()).schema())
    };
    let result_schema = match &sig.output {
        ReturnType::Default => {
            quote!((&::billiard_plugin_api::schema::SchemaOf::<()>::new()).schema())
        }
        ReturnType::Type(_, ty) => {
            let t = result_ok_type(ty).unwrap_or(ty);
            if mentions_impl(t) {
                // `impl Serialize` cannot be named here.
                quote!(::core::option::Option::None)
            } else if is_vec_u8(t) {
                quote!((&::billiard_plugin_api::schema::SchemaOf::<
                    ::billiard_plugin_api::codec::Bytes,
                >::new())
                    .schema())
            } else {
                quote!((&::billiard_plugin_api::schema::SchemaOf::<#t>::new()).schema())
            }
        }
    };
    // Unused (rustc warns, naming it) unless `export_plugin!` lists the
    // task: `pub(crate)`, so a `pub` task's marker is not exported from the
    // cdylib (an exported item never counts as unused), spanned on the
    // function's name so the warning points at it.
    let marker = format_ident!(
        "{}_is_a_task_not_listed_in_export_plugin",
        name,
        span = name.span()
    );
    let marker_fn = quote::quote_spanned!(name.span()=>
        #[doc(hidden)]
        pub(crate) fn #marker() {}
    );

    // A whole chunk in one loop (see `glue::run_batch`); a streaming task
    // runs job by job.
    let run_batch = if streaming {
        quote!(::core::option::Option::None)
    } else {
        quote!({
            #[allow(unused_variables)]
            fn __billiard_run_batch(
                codec: ::billiard_plugin_api::Codec,
                records: &[u8],
                count: u32,
                ctx: &::billiard_plugin_api::TaskContext<'_>,
                out: &mut ::billiard_plugin_api::__private::abi_stable::std_types::RVec<u8>,
            ) -> u32 {
                ::billiard_plugin_api::glue::run_batch(
                    &<#name as ::billiard_plugin_api::glue::Task>::INFO,
                    codec,
                    records,
                    count,
                    ctx,
                    out,
                    |args: &[u8], ctx: &::billiard_plugin_api::TaskContext<'_>| {
                        #decode
                        #produce
                    },
                )
            }
            ::core::option::Option::Some(__billiard_run_batch)
        })
    };

    Ok(quote! {
        #func

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        #marker_fn

        impl ::billiard_plugin_api::glue::Task for #name {
            const INFO: ::billiard_plugin_api::abi::TaskInfo = ::billiard_plugin_api::abi::TaskInfo {
                name: ::billiard_plugin_api::__private::abi_stable::std_types::RStr::from_str(#name_str),
                doc: ::billiard_plugin_api::__private::abi_stable::std_types::RStr::from_str(#doc),
                args: ::billiard_plugin_api::__private::abi_stable::std_types::RSlice::from_slice(&[#(#arg_infos),*]),
                ret: ::billiard_plugin_api::__private::abi_stable::std_types::RStr::from_str(#ret_str),
                takes_context: #takes_context,
                streaming: #streaming,
                item: ::billiard_plugin_api::__private::abi_stable::std_types::RStr::from_str(#item_str),
            };
            const RUN: ::billiard_plugin_api::glue::RunFn = {
                #[allow(unused_variables)]
                fn __billiard_run(
                    codec: ::billiard_plugin_api::Codec,
                    args: &[u8],
                    ctx: &::billiard_plugin_api::TaskContext<'_>,
                    out: &mut ::billiard_plugin_api::__private::abi_stable::std_types::RVec<u8>,
                ) -> ::billiard_plugin_api::Status {
                    ::billiard_plugin_api::glue::run(
                        &<#name as ::billiard_plugin_api::glue::Task>::INFO,
                        codec,
                        ctx,
                        out,
                        || {
                            #decode
                            #make_emitter
                            #produce
                        },
                    )
                }
                __billiard_run
            };
            const RUN_BATCH: ::core::option::Option<::billiard_plugin_api::glue::BatchRunFn> = #run_batch;
            const OPTIONS: &'static str = #options;
            const SCHEMA: ::billiard_plugin_api::schema::SchemaFn = {
                fn __billiard_schema() -> (
                    ::core::option::Option<::billiard_plugin_api::__private::serde_json::Value>,
                    ::core::option::Option<::billiard_plugin_api::__private::serde_json::Value>,
                ) {
                    #[allow(unused_imports)]
                    use ::billiard_plugin_api::schema::{ViaJsonSchema as _, ViaNoSchema as _};
                    (#args_schema, #result_schema)
                }
                __billiard_schema
            };
        }
    })
}

/// Exports the plugin's root module (used by `export_plugin!`). Like
/// abi_stable's `export_root_module`, but with paths through
/// `billiard_plugin_api` so a plugin needs no direct abi_stable dependency.
#[doc(hidden)]
#[proc_macro_attribute]
pub fn __export_root_module(attr: TokenStream, item: TokenStream) -> TokenStream {
    let module: TokenStream2 = if attr.is_empty() {
        quote!(::billiard_plugin_api::abi::PluginModRef)
    } else {
        attr.into()
    };
    let func = parse_macro_input!(item as ItemFn);
    let ident = &func.sig.ident;
    let export_name = syn::Ident::new(
        &abi_stable_shared::mangled_root_module_loader_name(),
        Span::call_site(),
    );
    quote!(
        #func

        #[no_mangle]
        pub static #export_name: ::billiard_plugin_api::__private::abi_stable::library::LibHeader = {
            pub extern "C" fn _sabi_erased_module() -> ::billiard_plugin_api::__private::abi_stable::library::RootModuleResult {
                ::billiard_plugin_api::__private::abi_stable::library::__call_root_module_loader(#ident)
            }
            // SAFETY: the constructor returns the module type named here,
            // exactly as abi_stable's own `export_root_module` arranges.
            unsafe {
                ::billiard_plugin_api::__private::abi_stable::library::LibHeader::from_constructor::<
                    #module,
                >(
                    _sabi_erased_module,
                    ::billiard_plugin_api::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    )
    .into()
}

/// `__listed_in_export_plugin!(square, tasks::add)`: a reference to each
/// task's `..._is_a_task_not_listed_in_export_plugin` marker (see `#[task]`),
/// as statements of `export_plugin!`'s root-module function.
#[doc(hidden)]
#[proc_macro]
pub fn __listed_in_export_plugin(input: TokenStream) -> TokenStream {
    // `$task:path` fragments arrive wrapped in invisible groups.
    fn flatten(ts: TokenStream2) -> TokenStream2 {
        ts.into_iter()
            .flat_map(|t| match t {
                proc_macro2::TokenTree::Group(g)
                    if g.delimiter() == proc_macro2::Delimiter::None =>
                {
                    flatten(g.stream())
                }
                t => std::iter::once(t).collect(),
            })
            .collect()
    }
    let parser = syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated;
    let paths = match syn::parse::Parser::parse2(parser, flatten(input.into())) {
        Ok(p) => p,
        Err(e) => return e.to_compile_error().into(),
    };
    let refs = paths.into_iter().filter_map(|mut p| {
        let last = p.segments.last_mut()?;
        last.ident = format_ident!(
            "{}_is_a_task_not_listed_in_export_plugin",
            last.ident,
            span = last.ident.span()
        );
        Some(quote!(let _: fn() = #p;))
    });
    quote!(#(#refs)*).into()
}
