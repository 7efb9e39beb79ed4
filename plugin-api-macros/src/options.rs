//! `#[task(rate_limit = "100/m", max_retries = 5, ...)]`: the registration
//! options, checked at compile time and written as the JSON object the
//! plugin exports beside its task table (`abi::PluginMod::task_options`).
//! The host parses that object again (a plugin may be hostile); the keys
//! and value forms here are the ones it reads.

use proc_macro2::Span;
use proc_macro2::TokenStream as TokenStream2;
use syn::{
    parse::Parser, punctuated::Punctuated, spanned::Spanned, Expr, Lit, Meta, MetaNameValue, Token,
    UnOp,
};

/// The failure kinds `autoretry_for` may list (the host's `ErrorKind`
/// names, the contract's `kind` strings).
const KINDS: [&str; 9] = [
    "panic",
    "task_error",
    "bad_args",
    "unknown_task",
    "worker_lost",
    "soft_time_limit",
    "time_limit",
    "terminated",
    "plugin_load",
];

const KEYS: [&str; 10] = [
    "name",
    "defaults",
    "varargs",
    "rate_limit",
    "max_retries",
    "autoretry_for",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "default_retry_delay",
];

/// The host's bound on any configured duration (`bounds::MAX_DURATION`).
const MAX_DURATION_SECS: u64 = 10 * 365 * 86_400;

/// The longest Celery task name `name = "..."` takes (the host's bound).
const MAX_NAME: usize = 255;

/// The attribute's arguments: the options' JSON fields, and what the
/// function's signature must confirm (`expand_task` checks the defaults'
/// parameter names and the variadic tail against it).
pub struct Parsed {
    /// `(key, JSON value)` in the order written.
    pub fields: Vec<(String, String)>,
    /// `defaults(z = 3, label = "x")`: parameter, its JSON value, its span.
    pub defaults: Vec<(String, String, Span)>,
    /// `varargs`: the last parameter takes every extra positional argument.
    pub varargs: Option<Span>,
}

impl Parsed {
    /// The options' JSON object, with `defaults` (the explicit ones and
    /// `null` for each trailing `Option<T>` parameter, `optional`) and
    /// `varargs` added.
    pub fn json(&self, optional: &[String]) -> String {
        let mut fields = self.fields.clone();
        let mut defaults: Vec<String> = self
            .defaults
            .iter()
            .map(|(k, v, _)| format!("{}:{v}", json_string(k)))
            .collect();
        for o in optional {
            if !self.defaults.iter().any(|(k, _, _)| k == o) {
                defaults.push(format!("{}:null", json_string(o)));
            }
        }
        if !defaults.is_empty() {
            fields.push(("defaults".into(), format!("{{{}}}", defaults.join(","))));
        }
        if self.varargs.is_some() {
            fields.push(("varargs".into(), "true".into()));
        }
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_string(k)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

/// Parses the attribute's arguments (see [`Parsed`]).
pub fn parse(attr: TokenStream2) -> syn::Result<Parsed> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut defaults: Vec<(String, String, Span)> = Vec::new();
    let mut varargs: Option<Span> = None;
    let mut args: Vec<MetaNameValue> = Vec::new();
    for m in metas {
        match m {
            Meta::NameValue(nv) => args.push(nv),
            Meta::Path(p) if p.is_ident("varargs") => {
                if varargs.is_some() {
                    return Err(syn::Error::new(p.span(), "`varargs` is given twice"));
                }
                varargs = Some(p.span());
            }
            Meta::List(l) if l.path.is_ident("defaults") => {
                if !defaults.is_empty() {
                    return Err(syn::Error::new(l.path.span(), "`defaults` is given twice"));
                }
                let items =
                    l.parse_args_with(Punctuated::<MetaNameValue, Token![,]>::parse_terminated)?;
                for nv in items {
                    let Some(param) = nv.path.get_ident().map(|i| i.to_string()) else {
                        return Err(syn::Error::new(
                            nv.path.span(),
                            "`defaults(...)` takes `parameter = value` pairs",
                        ));
                    };
                    if defaults.iter().any(|(k, _, _)| *k == param) {
                        return Err(syn::Error::new(
                            nv.path.span(),
                            format!("the default of `{param}` is given twice"),
                        ));
                    }
                    let v = default_value(&nv.value)?;
                    defaults.push((param, v, nv.path.span()));
                }
            }
            other => {
                let key = other
                    .path()
                    .get_ident()
                    .map_or_else(|| "?".to_string(), |i| i.to_string());
                return Err(syn::Error::new(other.span(), unknown_key(&key)));
            }
        }
    }
    for nv in &args {
        let Some(key) = nv.path.get_ident().map(|i| i.to_string()) else {
            return Err(syn::Error::new(nv.path.span(), unknown_key("?")));
        };
        if fields.iter().any(|(k, _)| *k == key) {
            return Err(syn::Error::new(
                nv.path.span(),
                format!("`{key}` is given twice"),
            ));
        }
        let span = nv.value.span();
        let value = match key.as_str() {
            "name" => {
                let s = string(&nv.value, &key)?;
                check_name(&s).map_err(|e| syn::Error::new(span, e))?;
                json_string(&s)
            }
            "rate_limit" => {
                let s = string(&nv.value, &key)?;
                check_rate(&s).map_err(|e| syn::Error::new(span, e))?;
                json_string(&s)
            }
            "max_retries" => {
                let n = int(&nv.value, &key)?;
                n.to_string()
            }
            "autoretry_for" => {
                let s = string(&nv.value, &key)?;
                let mut kinds: Vec<String> = Vec::new();
                for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    if !KINDS.contains(&k) {
                        return Err(syn::Error::new(
                            span,
                            format!(
                                "`{k}` is not a failure kind; the kinds are {}",
                                KINDS.join(", ")
                            ),
                        ));
                    }
                    let k = json_string(k);
                    if !kinds.contains(&k) {
                        kinds.push(k);
                    }
                }
                format!("[{}]", kinds.join(","))
            }
            "retry_backoff" => match &nv.value {
                // Celery's `retry_backoff=True`: a factor of one second.
                Expr::Lit(l) if matches!(l.lit, Lit::Bool(_)) => match &l.lit {
                    Lit::Bool(b) if b.value => json_string("1s"),
                    _ => "false".to_string(),
                },
                v => {
                    let s = string(v, &key)?;
                    check_duration(&s, &key).map_err(|e| syn::Error::new(span, e))?;
                    json_string(&s)
                }
            },
            "retry_backoff_max" | "default_retry_delay" => {
                let s = string(&nv.value, &key)?;
                check_duration(&s, &key).map_err(|e| syn::Error::new(span, e))?;
                json_string(&s)
            }
            "retry_jitter" => match &nv.value {
                Expr::Lit(l) => match &l.lit {
                    Lit::Bool(b) => b.value.to_string(),
                    _ => return Err(syn::Error::new(span, "`retry_jitter` takes true or false")),
                },
                _ => return Err(syn::Error::new(span, "`retry_jitter` takes true or false")),
            },
            other => return Err(syn::Error::new(nv.path.span(), unknown_key(other))),
        };
        fields.push((key, value));
    }
    Ok(Parsed {
        fields,
        defaults,
        varargs,
    })
}

/// A Celery task name a client can send (`proj.tasks.add`): printable,
/// without spaces, at most [`MAX_NAME`] bytes (the host checks the same).
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{s}` is not a task name: write 1 to {MAX_NAME} bytes without spaces, e.g. \"proj.tasks.add\""
        ));
    }
    Ok(())
}

/// A float literal as JSON (finite; `1.` is written `1.0`).
fn float(f: &syn::LitFloat, sign: &str) -> syn::Result<String> {
    match f.base10_parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(format!("{sign}{v:?}")),
        _ => Err(syn::Error::new(
            f.span(),
            "a default must be a finite number",
        )),
    }
}

/// A default's value as JSON: a literal (number, string, bool), a negated
/// number, `None` (null) or a list of those.
fn default_value(e: &Expr) -> syn::Result<String> {
    let bad = || {
        syn::Error::new(
            e.span(),
            "a default is a literal (3, -1.5, \"text\", true), None or a list of those ([1, 2])",
        )
    };
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Int(i) => Ok(i.base10_digits().to_string()),
            Lit::Float(f) => float(f, ""),
            Lit::Str(s) => Ok(json_string(&s.value())),
            Lit::Bool(b) => Ok(b.value.to_string()),
            _ => Err(bad()),
        },
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => match &*u.expr {
            Expr::Lit(l) => match &l.lit {
                Lit::Int(i) => Ok(format!("-{}", i.base10_digits())),
                Lit::Float(f) => float(f, "-"),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        },
        Expr::Path(p) if p.path.is_ident("None") => Ok("null".into()),
        Expr::Array(a) => {
            let items: syn::Result<Vec<String>> = a.elems.iter().map(default_value).collect();
            Ok(format!("[{}]", items?.join(",")))
        }
        _ => Err(bad()),
    }
}

fn unknown_key(key: &str) -> String {
    format!(
        "#[task] has no option `{key}`; it takes {}",
        KEYS.join(", ")
    )
}

fn string(e: &Expr, key: &str) -> syn::Result<String> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Str(s) => Ok(s.value()),
            _ => Err(syn::Error::new(e.span(), format!("`{key}` takes a string"))),
        },
        _ => Err(syn::Error::new(
            e.span(),
            format!("`{key}` takes a string literal"),
        )),
    }
}

fn int(e: &Expr, key: &str) -> syn::Result<u32> {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Int(i) => i.base10_parse::<u32>().map_err(|_| {
                syn::Error::new(
                    e.span(),
                    format!("`{key}` takes a whole number from 0 to {}", u32::MAX),
                )
            }),
            _ => Err(syn::Error::new(
                e.span(),
                format!("`{key}` takes a whole number"),
            )),
        },
        _ => Err(syn::Error::new(
            e.span(),
            format!("`{key}` takes an integer literal"),
        )),
    }
}

/// Celery's rate syntax (`celery.utils.time.rate`): a number of tasks,
/// optionally `/s`, `/m` or `/h` (per second without one).
pub fn check_rate(s: &str) -> Result<(), String> {
    let (n, unit) = match s.split_once('/') {
        Some((n, u)) => (n, Some(u)),
        None => (s, None),
    };
    let number = !n.is_empty()
        && n.chars().all(|c| c.is_ascii_digit() || c == '.')
        && n.chars().filter(|&c| c == '.').count() <= 1
        && n.chars().any(|c| c.is_ascii_digit())
        && n.parse::<f64>().is_ok_and(|v| v.is_finite());
    if !number || !matches!(unit, None | Some("s") | Some("m") | Some("h")) {
        return Err(format!(
            "`{s}` is not a rate limit: write N, N/s, N/m or N/h (tasks per second, minute or hour), e.g. \"100/m\""
        ));
    }
    Ok(())
}

fn check_duration(s: &str, key: &str) -> Result<(), String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        format!("`{key}`: `{s}` is not a duration ({e}); write e.g. \"1s\", \"500ms\", \"10m\"")
    })?;
    if d.as_secs() > MAX_DURATION_SECS {
        return Err(format!("`{key}`: `{s}` is longer than 10 years"));
    }
    Ok(())
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
