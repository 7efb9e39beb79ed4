//! Test plugin: `reload` version 2.0.0. Its twin crate builds another
//! version under the same plugin name, to test `Pool::restart()` picking up
//! a rebuilt plugin file.

use billiard_plugin_api::{export_plugin, task};

/// The version of the plugin that ran the job.
#[task]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// `2 * x`; reload-a lists it last, this build first (B1).
#[task]
pub fn double(x: u64) -> u64 {
    2 * x
}

// reload-a's `square` is gone here on purpose (B1).
export_plugin!(name: "reload", tasks: [double, version]);
