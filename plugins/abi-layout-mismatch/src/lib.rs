//! Test plugin: exports a root module with the billiard name but another
//! layout, as a plugin built against an incompatible `plugin-api` would.
//! The host must refuse it with a `plugin_load` error.

use billiard_plugin_api::__private::abi_stable::{prefix_type::PrefixTypeTrait, std_types::RStr};
use billiard_plugin_api::abi::incompatible_for_tests::{PluginMod, PluginModRef};

#[billiard_plugin_api::__export_root_module(
    billiard_plugin_api::abi::incompatible_for_tests::PluginModRef
)]
fn get_root_module() -> PluginModRef {
    PluginMod {
        abi_version: 1,
        name: RStr::from_str("abi-layout-mismatch"),
        extra: 0,
    }
    .leak_into_prefix()
}
