//! `proj`: a Celery app's `proj/tasks.py` ported to Rust, under the names
//! its Python callers send (`proj.tasks.add`), with Python's optional,
//! defaulted and variadic parameters (issue 29 items 1 and 4;
//! `tests/celery_k29_args.rs` runs the same calls against the Python
//! tasks).

use billiard_plugin_api::{export_plugin, task};

/// a + b (wrapping).
#[task(name = "proj.tasks.add")]
pub fn add(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

/// x + y + z, z 3 unless given (`def add3(x, y, z=3)`).
#[task(name = "proj.tasks.add3", defaults(z = 3))]
pub fn add3(x: i64, y: i64, z: i64) -> i64 {
    x.wrapping_add(y).wrapping_add(z)
}

/// "Hello, name" with an optional title (`def greet(name, title=None)`).
#[task(name = "proj.tasks.greet")]
pub fn greet(name: String, title: Option<String>) -> String {
    match title {
        Some(t) => format!("Hello, {t} {name}"),
        None => format!("Hello, {name}"),
    }
}

/// first + every further argument (`def total(first, *rest)`).
#[task(name = "proj.tasks.total", varargs)]
pub fn total(first: i64, rest: Vec<i64>) -> i64 {
    rest.iter().fold(first, |acc, x| acc.wrapping_add(*x))
}

/// "pong": takes no argument (`def ping()`).
#[task(name = "proj.tasks.ping")]
pub fn ping() -> String {
    "pong".to_string()
}

/// a * b (wrapping), without a Celery name of its own: a worker maps one
/// to it (`--task-name proj.tasks.mul=proj.mul`).
#[task]
pub fn mul(a: i64, b: i64) -> i64 {
    a.wrapping_mul(b)
}

export_plugin!(name: "proj", tasks: [add, add3, greet, total, ping, mul]);
