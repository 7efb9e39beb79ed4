//! Test plugin: its root-module constructor panics. The host must report a
//! `plugin_load` error, not crash.

use billiard_plugin_api::__private::abi_stable::prefix_type::PrefixTypeTrait;
use billiard_plugin_api::abi::PluginModRef;

#[billiard_plugin_api::__export_root_module]
fn get_root_module() -> PluginModRef {
    let fail = std::env::var_os("BILLIARD_TEST_NEVER_SET").is_none();
    if fail {
        panic!("init-panic plugin: constructor fails on purpose");
    }
    #[allow(unreachable_code)]
    billiard_plugin_api::abi::PluginMod {
        abi_version: billiard_plugin_api::ABI_VERSION,
        name: "init-panic".into(),
        version: "0.0.0".into(),
        api_version: billiard_plugin_api::abi::API_VERSION.into(),
        tasks: Default::default(),
        call: unreachable_call,
        call_batch: unreachable_batch,
        metadata: billiard_plugin_api::abi::PluginMetadata::EMPTY,
        failure_detail: billiard_plugin_api::abi::FAILURE_DETAIL_VERSION,
        task_options: Default::default(),
        task_schema: unreachable_schema,
    }
    .leak_into_prefix()
}

extern "C" fn unreachable_call(
    _: u32,
    _: billiard_plugin_api::Codec,
    _: billiard_plugin_api::__private::abi_stable::std_types::RSlice<'_, u8>,
    _: &billiard_plugin_api::TaskContext<'_>,
    _: &mut billiard_plugin_api::__private::abi_stable::std_types::RVec<u8>,
) -> billiard_plugin_api::Status {
    billiard_plugin_api::Status::UnknownTask
}

extern "C" fn unreachable_schema(
    _: u32,
    _: &mut billiard_plugin_api::__private::abi_stable::std_types::RVec<u8>,
) {
}

extern "C" fn unreachable_batch(
    _: u32,
    _: billiard_plugin_api::Codec,
    _: billiard_plugin_api::__private::abi_stable::std_types::RSlice<'_, u8>,
    _: u32,
    _: &billiard_plugin_api::TaskContext<'_>,
    _: &mut billiard_plugin_api::__private::abi_stable::std_types::RVec<u8>,
) -> u32 {
    0
}
