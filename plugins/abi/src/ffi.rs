//! The C types and exported symbol names of ABI 1.0: the only things that cross a plugin boundary.
//!
//! Every type is `#[repr(C)]` plain data (integers, `f64`, pointers to caller-owned buffers, NUL-terminated
//! UTF-8). A C header equivalent is written out in `docs/plugins.md`. Changing any layout here, or the
//! meaning of a field, is a new major ABI version (see [`crate::ABI_VERSION`]).

use std::os::raw::c_char;

/// `uint32_t longrope_plugin_abi_version(void)`: `major << 16 | minor`. The host calls it before anything else.
pub const SYMBOL_ABI_VERSION: &str = "longrope_plugin_abi_version";
/// `const PluginDescriptor *longrope_plugin_descriptor(void)`: a pointer to static data of the library.
pub const SYMBOL_DESCRIPTOR: &str = "longrope_plugin_descriptor";
/// `size_t longrope_plugin_last_error(uint8_t *buf, size_t cap)`: copies the calling thread's last error.
pub const SYMBOL_LAST_ERROR: &str = "longrope_plugin_last_error";
/// `int32_t longrope_scaling_resolve(const RopeContext *, const uint8_t *params, size_t len, ResolveOut *)`.
pub const SYMBOL_SCALING_RESOLVE: &str = "longrope_scaling_resolve";
/// `int32_t longrope_scaling_tables(const RopeContext *, const uint8_t *params, size_t len, TablesOut *)`.
pub const SYMBOL_SCALING_TABLES: &str = "longrope_scaling_tables";

/// Return code of an entry point: success.
pub const STATUS_OK: i32 = 0;
/// Return code of an entry point: failure; the message is in `longrope_plugin_last_error`.
pub const STATUS_ERROR: i32 = 1;
/// Return code of `longrope_scaling_resolve`: `params_json` was too small; `params_len` holds the size needed.
pub const STATUS_BUFFER_TOO_SMALL: i32 = 2;

/// [`PluginDescriptor::kind`] of a position-scaling plugin (the only kind ABI 1.0 defines).
pub const KIND_SCALING: u32 = 0;

/// [`ResolveOut::flags`] bit: the tables depend on the current sequence length (`PositionScaling::depends_on_seq_len`).
pub const FLAG_DEPENDS_ON_SEQ_LEN: u32 = 1;
/// [`ResolveOut::flags`] bit: the tables differ between layers (`PositionScaling::per_layer`).
pub const FLAG_PER_LAYER: u32 = 2;

/// What a library is: returned by `longrope_plugin_descriptor`, static data owned by the library.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// The plugin's name (NUL-terminated UTF-8): what users write as `method = "NAME"`.
    pub name: *const c_char,
    /// The plugin kind, [`KIND_SCALING`].
    pub kind: u32,
    /// A one-line summary for `longrope plugins` (NUL-terminated UTF-8).
    pub summary: *const c_char,
}

// SAFETY: a descriptor only points at `'static` immutable string literals of the library.
unsafe impl Sync for PluginDescriptor {}

/// The inputs of every scaling call: the fields of `longrope_core::RopeContext` (shape, sequence length, layer).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeContext {
    /// Dimension of one attention head `d` (even); tables hold `d/2` frequencies.
    pub head_dim: usize,
    /// RoPE base `b` (HF `rope_theta`).
    pub rope_base: f64,
    /// The trained context `L` (HF `original_max_position_embeddings`).
    pub original_max_position_embeddings: usize,
    /// The target context `L'` (HF `max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// Number of transformer layers.
    pub num_layers: usize,
    /// Current sequence length of the forward (0 in `longrope_scaling_resolve`, which sees only the shape).
    pub seq_len: usize,
    /// Layer index, `0 .. num_layers` (0 in `longrope_scaling_resolve`).
    pub layer: usize,
}

/// The outputs of `longrope_scaling_resolve`: the resolved parameters (defaults filled in) and the flags.
#[repr(C)]
#[derive(Debug)]
pub struct ResolveOut {
    /// Caller-owned buffer for the resolved parameters as a UTF-8 JSON object (not NUL-terminated).
    pub params_json: *mut u8,
    /// Capacity of `params_json` in bytes.
    pub params_cap: usize,
    /// Written by the plugin: the length of the JSON. When it exceeds `params_cap` the plugin writes nothing
    /// into the buffer and returns [`STATUS_BUFFER_TOO_SMALL`]; the caller retries with a larger buffer.
    pub params_len: usize,
    /// Written by the plugin: [`FLAG_DEPENDS_ON_SEQ_LEN`] | [`FLAG_PER_LAYER`].
    pub flags: u32,
}

/// The outputs of `longrope_scaling_tables`, in caller-owned buffers of exactly `head_dim / 2` values each.
#[repr(C)]
#[derive(Debug)]
pub struct TablesOut {
    /// Caller-owned buffer for the inverse frequencies.
    pub inv_freq: *mut f64,
    /// Its length; must be `head_dim / 2`.
    pub inv_freq_len: usize,
    /// Written by the plugin: the attention factor `m` (cos and sin are multiplied by it).
    pub attn_factor: f64,
    /// Written by the plugin: retained start positions `n_hat` (0 = no start-token rule).
    pub n_hat: usize,
    /// Caller-owned buffer for the inverse frequencies of the first `n_hat` positions.
    pub retained_inv_freq: *mut f64,
    /// Its length; must be `head_dim / 2`.
    pub retained_inv_freq_len: usize,
    /// Written by the plugin: the attention factor of the first `n_hat` positions.
    pub retained_attn_factor: f64,
}
