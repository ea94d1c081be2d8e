//! A library that claims plugin ABI 2.0, for `tests/plugins_dynamic.rs`: the host must refuse it after
//! reading `longrope_plugin_abi_version` and before calling anything else, so every other export aborts the
//! process (the test would die if the host called one).

/// Reports ABI 2.0 (`2 << 16`), a major version no host of ABI 1 accepts.
#[no_mangle]
pub extern "C" fn longrope_plugin_abi_version() -> u32 {
    2 << 16
}

/// Must never be called by a host that checks the version first.
#[no_mangle]
pub extern "C" fn longrope_plugin_descriptor() -> *const u8 {
    std::process::abort()
}
