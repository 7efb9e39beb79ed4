//! Test plugin: the right layout but a future ABI version. The host must
//! refuse it with a `plugin_load` error naming both versions.

use billiard_plugin_api::task;

/// Would return 1.
#[task]
pub fn one() -> u64 {
    1
}

billiard_plugin_api::export_plugin!(@abi 999, name: "abi-version-mismatch", version: "0.0.1", tasks: [one]);
