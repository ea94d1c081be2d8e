//! `longrope-plugin-abi`: the versioned C ABI through which shared libraries add scaling methods to longrope-rs.
//!
//! Rust trait objects are not a stable interface across separately compiled libraries (Bevy removed its
//! `dylib` plugins for exactly this reason), so a dynamic plugin talks to the host only through the
//! `#[repr(C)]` plain data of [`ffi`] (integers, `f64`, caller-owned buffers, UTF-8 JSON parameters), the
//! design of polars' expression plugins: an exported version function the host checks before any other call,
//! a static descriptor, stateless entry points, and errors through a thread-local last-error string.
//!
//! Two halves:
//! - the plugin side (always built, no dependencies, so an out-of-tree plugin builds in seconds with any
//!   rustc): [`ffi`], the [`plugin::ScalingPlugin`] trait and the [`export_scaling_plugin!`] macro;
//! - the host side ([`host`], feature `host`, used by the `longrope` binary): loads a library with
//!   `libloading` (after [`elf`] has checked the file is a complete shared library for this machine, which
//!   `dlopen` would otherwise crash on), checks the version, registers the plugin in `longrope_core::registry` and as a dynamic
//!   scaling method so `method = "NAME"` works in TOML configs. Libraries are never unloaded.
//!
//! The ABI covers position-scaling methods only: a `SearchStrategy` is stateful (propose/observe rounds) and
//! does not fit the stateless fill-a-buffer shape; [`ffi::PluginDescriptor::kind`] leaves room for it.
//! See `docs/plugins.md` for the rules and `plugins/examples/powerlaw` for a complete plugin.

pub mod ffi;
pub mod plugin;

#[cfg(feature = "host")]
pub mod elf;
#[cfg(feature = "host")]
pub mod host;

pub use plugin::{base_inv_freq, ScalingPlugin, TablesMut};

/// Major ABI version: bumped by any change of a layout, a signature or a meaning in [`ffi`].
pub const ABI_MAJOR: u16 = 1;
/// Minor ABI version: bumped when optional entry points are added; a host serves plugins of its minor or older.
pub const ABI_MINOR: u16 = 0;
/// The ABI version a plugin built against this crate reports: `major << 16 | minor`.
pub const ABI_VERSION: u32 = encode_version(ABI_MAJOR, ABI_MINOR);

/// `major << 16 | minor`, the encoding of `longrope_plugin_abi_version`.
pub const fn encode_version(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// The `(major, minor)` of an encoded version.
pub const fn decode_version(version: u32) -> (u16, u16) {
    ((version >> 16) as u16, (version & 0xffff) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_encoding() {
        assert_eq!(ABI_VERSION, 0x0001_0000);
        assert_eq!(encode_version(2, 7), 0x0002_0007);
        assert_eq!(decode_version(0x0003_0001), (3, 1));
    }
}
