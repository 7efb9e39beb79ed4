//! Python's `repr()` of the values this host words Celery's replies and
//! errors with (strings, JSON values, floats), byte for byte as CPython
//! writes them: one copy for the control replies, the rate-limit errors
//! and the chord's exception reprs. Not behind the `celery` feature: the
//! rate syntax shared with the task options (`crate::rate`) words its
//! errors with it.

// Without the `celery` feature only the task options' check uses it.
#![cfg_attr(not(feature = "celery"), allow(dead_code))]

use serde_json::Value;

/// Python's `repr()` of a JSON value (`None`, `True`, `'text'`, `[1, 2]`,
/// `{'k': 1}`; floats as [`py_float`]).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => py_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => py_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, x)| format!("{}: {}", py_str(k), py_repr(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Python's `repr(str)`: single quotes unless the text holds one and no
/// double quote; `\\`, `\n`, `\r`, `\t` and the quote escaped, and the
/// other characters of Latin-1 that Python does not print (C0 and C1
/// controls, DEL, no-break space, soft hyphen) as `\xNN`. Beyond Latin-1
/// every character is written as is (Python escapes the unprintable ones
/// there, such as U+2028, as `\uNNNN`: this host has no Unicode table).
pub fn py_str(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Python's `repr(float)`: the shortest digits that round-trip, fixed
/// notation for exponents -4..16, else `d.ddde+XX`. A non-finite one as
/// Python's `json.dumps` writes it (`NaN`, `Infinity`; a JSON value never
/// holds one).
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{:e}", f);
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let (int, frac) = if exp >= 0 {
            let e = exp as usize + 1;
            if digits.len() > e {
                (digits[..e].to_string(), digits[e..].to_string())
            } else {
                (
                    format!("{digits}{}", "0".repeat(e - digits.len())),
                    String::new(),
                )
            }
        } else {
            (
                "0".to_string(),
                format!("{}{digits}", "0".repeat((-exp - 1) as usize)),
            )
        };
        let frac = if frac.is_empty() {
            "0".to_string()
        } else {
            frac
        };
        format!("{sign}{int}.{frac}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each input with what CPython 3.11 prints for it: generated with
    /// `python3 -c 'import json, sys; [print(json.dumps([s, repr(s)])) for s in ...]'`.
    #[test]
    fn strings_are_written_as_python_reprs_them() {
        for (s, py) in [
            ("", "''"),
            ("plain", "'plain'"),
            ("it's", "\"it's\""),
            ("say \"hi\"", "'say \"hi\"'"),
            ("both ' and \"", "'both \\' and \"'"),
            ("a\\b\n", "'a\\\\b\\n'"),
            ("tab\there\r", "'tab\\there\\r'"),
            ("\u{0}\u{1}\u{1f}", "'\\x00\\x01\\x1f'"),
            ("\u{7f}\u{80}\u{9f}", "'\\x7f\\x80\\x9f'"),
            ("a\u{a0}b\u{ad}c", "'a\\xa0b\\xadc'"),
            (
                "\u{e9}\u{65e5}\u{672c}\u{1f600}",
                "'\u{e9}\u{65e5}\u{672c}\u{1f600}'",
            ),
        ] {
            assert_eq!(py_str(s), py, "{s:?}");
        }
    }

    /// JSON values with CPython 3.11's `repr()` of `json.loads` of them.
    #[test]
    fn values_are_written_as_python_reprs_them() {
        for (v, py) in [
            (json!(null), "None"),
            (json!(true), "True"),
            (json!(false), "False"),
            (json!(0), "0"),
            (json!(-7), "-7"),
            (json!(12345678901234567890u64), "12345678901234567890"),
            (json!(1.0), "1.0"),
            (json!(0.1), "0.1"),
            (json!(1e16), "1e+16"),
            (json!(1.5e-7), "1.5e-07"),
            (json!(-2.5), "-2.5"),
            (json!([]), "[]"),
            (json!({}), "{}"),
            (
                json!([1, "x", null, [true, 2.5]]),
                "[1, 'x', None, [True, 2.5]]",
            ),
            (
                json!({"a": ["x", 1, null, true], "b'": "it's", "c": {"d": 1e-5}}),
                r#"{'a': ['x', 1, None, True], "b'": "it's", 'c': {'d': 1e-05}}"#,
            ),
        ] {
            assert_eq!(py_repr(&v), py, "{v}");
        }
    }

    /// The reprs `control`'s replies were pinned with before this module.
    #[test]
    fn control_replies_keep_their_reprs() {
        assert_eq!(
            py_repr(&json!({"a": ["x", 1, null, true], "b'": "it's"})),
            r#"{'a': ['x', 1, None, True], "b'": "it's"}"#
        );
        assert_eq!(py_str("a\\b\n"), r"'a\\b\n'");
    }

    #[test]
    fn floats_are_written_as_python_reprs_them() {
        for (f, py) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (-2.5, "-2.5"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (100.0, "100.0"),
        ] {
            assert_eq!(py_float(f), py, "{f}");
        }
    }
}
