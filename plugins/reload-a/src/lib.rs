//! Test plugin: `reload` version 1.0.0. Its twin crate builds another
//! version under the same plugin name, to test `Pool::restart()` picking up
//! a rebuilt plugin file.

use billiard_plugin_api::{export_plugin, task};

/// The version of the plugin that ran the job.
#[task]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// `x * x`. Gone in reload-b (a reload that removes a task, B1).
#[task]
pub fn square(x: u64) -> u64 {
    x * x
}

/// `2 * x`. First in reload-b's table (a reload that reorders tasks, B1).
#[task]
pub fn double(x: u64) -> u64 {
    2 * x
}

export_plugin!(name: "reload", tasks: [version, square, double]);
