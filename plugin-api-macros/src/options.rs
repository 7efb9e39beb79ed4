//! `#[task(rate_limit = "100/m", max_retries = 5, ...)]`: the registration
//! options, checked at compile time and written as the JSON object the
//! plugin exports beside its task table (`abi::PluginMod::task_options`).
//! The host parses that object again (a plugin may be hostile); the keys
//! and value forms here are the ones it reads.

use proc_macro2::TokenStream as TokenStream2;
use syn::{
    parse::Parser, punctuated::Punctuated, spanned::Spanned, Expr, Lit, MetaNameValue, Token,
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

const KEYS: [&str; 7] = [
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

/// Parses the attribute's arguments into the options' JSON object (`{}`
/// without any).
pub fn parse(attr: TokenStream2) -> syn::Result<String> {
    let args = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr)?;
    let mut fields: Vec<(String, String)> = Vec::new();
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
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_string(k)))
        .collect();
    Ok(format!("{{{}}}", body.join(",")))
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
