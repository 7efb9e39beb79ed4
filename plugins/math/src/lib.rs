//! `math`: small numeric tasks, the built-in example plugin.

use std::collections::BTreeMap;

use billiard_plugin_api::serde::{Deserialize, Serialize};
use billiard_plugin_api::{export_plugin, task, JsonSchema};

/// Returns x squared (wrapping on overflow).
#[task]
pub fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Returns a + b; fails on overflow.
#[task]
pub fn add(a: i64, b: i64) -> Result<i64, String> {
    a.checked_add(b)
        .ok_or_else(|| format!("{a} + {b} overflows i64"))
}

/// Sums a list of numbers.
#[task]
pub fn sum(xs: Vec<f64>) -> f64 {
    xs.iter().sum()
}

/// The n-th Fibonacci number (fib(0) = 0), computed iteratively; fails past u64.
#[task]
pub fn fib(n: u32) -> Result<u64, String> {
    if n == 0 {
        return Ok(0);
    }
    // (fib(i - 1), fib(i)), from i = 1 up to n: never computes fib(n + 1),
    // which overflows for fib(93), the largest that fits.
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 1..n {
        let next = a
            .checked_add(b)
            .ok_or_else(|| format!("fib({n}) does not fit in u64"))?;
        a = b;
        b = next;
    }
    Ok(b)
}

/// A shape, to show enums crossing the boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "billiard_plugin_api::serde", rename_all = "snake_case")]
#[schemars(crate = "billiard_plugin_api::schemars")]
pub enum Shape {
    Circle { radius: f64 },
    Rect { w: f64, h: f64 },
}

/// A record with nested, optional and map fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(crate = "billiard_plugin_api::serde")]
#[schemars(crate = "billiard_plugin_api::schemars")]
pub struct Item {
    pub id: u32,
    pub name: String,
    pub shape: Shape,
    pub note: Option<String>,
    pub tags: BTreeMap<String, i32>,
}

/// Returns the item with its id doubled, its name upper-cased, the shape
/// scaled by `factor` and an `area` tag added: a struct/enum round trip.
#[task]
pub fn transform(item: Item, factor: f64) -> Item {
    let shape = match item.shape {
        Shape::Circle { radius } => Shape::Circle {
            radius: radius * factor,
        },
        Shape::Rect { w, h } => Shape::Rect {
            w: w * factor,
            h: h * factor,
        },
    };
    let area = match &shape {
        Shape::Circle { radius } => std::f64::consts::PI * radius * radius,
        Shape::Rect { w, h } => w * h,
    };
    let mut tags = item.tags;
    tags.insert("area".into(), area.round() as i32);
    Item {
        id: item.id.wrapping_mul(2),
        name: item.name.to_uppercase(),
        shape,
        note: item.note,
        tags,
    }
}

/// Returns the plugin's version (used to check hot reload).
#[task]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

export_plugin!(name: "math", tasks: [square, add, sum, fib, transform, version]);
