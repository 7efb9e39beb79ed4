//! Test plugin: `reload` version 1.0.0. Its twin crate builds another
//! version under the same plugin name, to test `Pool::restart()` picking up
//! a rebuilt plugin file.

use billiard_plugin_api::{export_plugin, task};

/// The version of the plugin that ran the job.
#[task]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

export_plugin!(name: "reload", tasks: [version]);
