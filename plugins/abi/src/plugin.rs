//! The plugin side: the trait a plugin author implements and the panic-safe bodies of the exported functions.
//!
//! A plugin crate (`crate-type = ["cdylib"]`) implements [`ScalingPlugin`] for one type and invokes
//! [`crate::export_scaling_plugin!`]; the macro emits the `extern "C"` symbols of [`crate::ffi`], each of which
//! calls one of the generic functions below. Those wrap the author's code in `catch_unwind`, turn a panic or an
//! `Err` into [`STATUS_ERROR`] with the message in a thread-local last-error string, and never let a panic
//! cross the C boundary. (A plugin built with `panic = "abort"` aborts instead: leave the default `unwind`.)

use std::any::Any;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::ffi::{
    ResolveOut, RopeContext, TablesOut, FLAG_DEPENDS_ON_SEQ_LEN, FLAG_PER_LAYER, STATUS_BUFFER_TOO_SMALL, STATUS_ERROR,
    STATUS_OK,
};

/// The tables a plugin fills for one layer and one sequence length (views of the host's buffers).
#[derive(Debug)]
pub struct TablesMut<'a> {
    /// Inverse frequencies, `head_dim / 2` values, pre-filled with the unscaled `b^(-2i/d)`.
    pub inv_freq: &'a mut [f64],
    /// Attention factor `m` (cos and sin are multiplied by it); 1.0 unless set.
    pub attn_factor: f64,
    /// Retained start positions `n_hat`: positions `< n_hat` use `retained_inv_freq`; 0 (the default) = none.
    pub n_hat: usize,
    /// Inverse frequencies of the retained start positions, pre-filled with the unscaled `b^(-2i/d)`.
    pub retained_inv_freq: &'a mut [f64],
    /// Attention factor of the retained start positions; 1.0 unless set.
    pub retained_attn_factor: f64,
}

/// A position-scaling method implemented outside the workspace, seen through ABI 1.0.
///
/// The host calls [`ScalingPlugin::new`] once per configuration (to validate it and learn the resolved
/// parameters) and again for every table request, so keep it cheap and deterministic: the plugin holds no
/// state between calls.
pub trait ScalingPlugin: Sized {
    /// Parse and validate `params` (a UTF-8 JSON object of the user's fields, without `method`; `{}` when the
    /// user gave none) against the model/extension shape in `ctx` and resolve every default.
    fn new(ctx: &RopeContext, params: &str) -> Result<Self, String>;

    /// The resolved parameters as a JSON object (shown by `longrope rope` and written into reports).
    fn resolved_params(&self) -> String;

    /// Whether the tables depend on `ctx.seq_len` (dynamic methods).
    fn depends_on_seq_len(&self) -> bool {
        false
    }

    /// Whether the tables differ between layers.
    fn per_layer(&self) -> bool {
        false
    }

    /// Fill the tables for `ctx` (its `seq_len` and `layer` are set).
    fn tables(&self, ctx: &RopeContext, out: &mut TablesMut<'_>) -> Result<(), String>;
}

/// The unscaled RoPE inverse frequencies `1 / b^(2i/d)`, `i = 0 .. d/2` (the same formula as
/// `longrope_core::rope::base_inv_freq`, repeated here so that plugins need not depend on the core).
pub fn base_inv_freq(head_dim: usize, rope_base: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / rope_base.powf((2 * i) as f64 / head_dim as f64)).collect()
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Run an entry point's body: `Ok` -> its status, `Err` or panic -> [`STATUS_ERROR`] with the last error set.
fn guard(entry: &str, body: impl FnOnce() -> Result<i32, String>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => status,
        Ok(Err(message)) => {
            set_last_error(message);
            STATUS_ERROR
        }
        Err(payload) => {
            set_last_error(format!("{entry} panicked: {}", panic_message(payload.as_ref())));
            STATUS_ERROR
        }
    }
}

/// Read the context and the parameters of a call.
///
/// # Safety
/// `ctx` must be null or valid; `params` must be null (with `params_len == 0`) or `params_len` readable bytes.
unsafe fn inputs<'a>(
    ctx: *const RopeContext,
    params: *const u8,
    params_len: usize,
) -> Result<(RopeContext, &'a str), String> {
    let ctx = ctx.as_ref().copied().ok_or("null RopeContext pointer")?;
    let bytes: &[u8] = if params_len == 0 {
        &[]
    } else if params.is_null() {
        return Err("null params pointer with a non-zero length".to_string());
    } else {
        std::slice::from_raw_parts(params, params_len)
    };
    let text = std::str::from_utf8(bytes).map_err(|e| format!("params are not UTF-8: {e}"))?;
    Ok((ctx, if text.trim().is_empty() { "{}" } else { text }))
}

/// Body of `longrope_plugin_last_error`: copy up to `cap` bytes of this thread's last error into `buf` and
/// return its full length in bytes.
///
/// # Safety
/// `buf` must be null (with `cap == 0`) or valid for `cap` bytes of writes.
pub unsafe fn last_error(buf: *mut u8, cap: usize) -> usize {
    catch_unwind(|| {
        LAST_ERROR.with(|e| {
            let e = e.borrow();
            let n = e.len().min(cap);
            if n > 0 && !buf.is_null() {
                std::ptr::copy_nonoverlapping(e.as_ptr(), buf, n);
            }
            e.len()
        })
    })
    .unwrap_or(0)
}

/// Body of `longrope_scaling_resolve` for `P`: validate the parameters and write the resolved ones and the flags.
///
/// # Safety
/// The pointers must follow the contract of [`crate::ffi::ResolveOut`] and [`inputs`].
pub unsafe fn scaling_resolve<P: ScalingPlugin>(
    ctx: *const RopeContext,
    params: *const u8,
    params_len: usize,
    out: *mut ResolveOut,
) -> i32 {
    guard("longrope_scaling_resolve", || {
        let (ctx, params) = inputs(ctx, params, params_len)?;
        let out = out.as_mut().ok_or("null ResolveOut pointer")?;
        let plugin = P::new(&ctx, params)?;
        let json = plugin.resolved_params();
        out.flags = if plugin.depends_on_seq_len() { FLAG_DEPENDS_ON_SEQ_LEN } else { 0 }
            | if plugin.per_layer() { FLAG_PER_LAYER } else { 0 };
        out.params_len = json.len();
        if json.len() > out.params_cap || (out.params_json.is_null() && !json.is_empty()) {
            return Ok(STATUS_BUFFER_TOO_SMALL);
        }
        if !json.is_empty() {
            std::ptr::copy_nonoverlapping(json.as_ptr(), out.params_json, json.len());
        }
        Ok(STATUS_OK)
    })
}

/// Body of `longrope_scaling_tables` for `P`: fill the caller's buffers for one layer and sequence length.
///
/// # Safety
/// The pointers must follow the contract of [`crate::ffi::TablesOut`] and [`inputs`].
pub unsafe fn scaling_tables<P: ScalingPlugin>(
    ctx: *const RopeContext,
    params: *const u8,
    params_len: usize,
    out: *mut TablesOut,
) -> i32 {
    guard("longrope_scaling_tables", || {
        let (ctx, params) = inputs(ctx, params, params_len)?;
        let out = out.as_mut().ok_or("null TablesOut pointer")?;
        let half = ctx.head_dim / 2;
        if out.inv_freq.is_null() || out.retained_inv_freq.is_null() {
            return Err("null table buffer".to_string());
        }
        if out.inv_freq_len != half || out.retained_inv_freq_len != half {
            return Err(format!(
                "table buffers hold {} and {} values, expected head_dim/2 = {half}",
                out.inv_freq_len, out.retained_inv_freq_len
            ));
        }
        let plugin = P::new(&ctx, params)?;
        let base = base_inv_freq(ctx.head_dim, ctx.rope_base);
        let inv_freq = std::slice::from_raw_parts_mut(out.inv_freq, half);
        let retained_inv_freq = std::slice::from_raw_parts_mut(out.retained_inv_freq, half);
        inv_freq.copy_from_slice(&base);
        retained_inv_freq.copy_from_slice(&base);
        let mut tables =
            TablesMut { inv_freq, attn_factor: 1.0, n_hat: 0, retained_inv_freq, retained_attn_factor: 1.0 };
        plugin.tables(&ctx, &mut tables)?;
        out.attn_factor = tables.attn_factor;
        out.n_hat = tables.n_hat;
        out.retained_attn_factor = tables.retained_attn_factor;
        Ok(STATUS_OK)
    })
}

/// Export a [`ScalingPlugin`] as a dynamic plugin: `export_scaling_plugin!(PowerLaw, "powerlaw", "summary");`.
///
/// Invoke it once, at the root of a `cdylib` crate. It emits `longrope_plugin_abi_version`,
/// `longrope_plugin_descriptor`, `longrope_plugin_last_error`, `longrope_scaling_resolve` and
/// `longrope_scaling_tables`; every one runs inside `catch_unwind`. `name` and `summary` are string literals.
#[macro_export]
macro_rules! export_scaling_plugin {
    ($plugin:ty, $name:literal, $summary:literal) => {
        /// ABI entry point: the ABI version this plugin was built against (`major << 16 | minor`).
        #[no_mangle]
        pub extern "C" fn longrope_plugin_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// ABI entry point: the plugin's static descriptor.
        #[no_mangle]
        pub extern "C" fn longrope_plugin_descriptor() -> *const $crate::ffi::PluginDescriptor {
            static DESCRIPTOR: $crate::ffi::PluginDescriptor = $crate::ffi::PluginDescriptor {
                name: concat!($name, "\0").as_ptr() as *const ::std::os::raw::c_char,
                kind: $crate::ffi::KIND_SCALING,
                summary: concat!($summary, "\0").as_ptr() as *const ::std::os::raw::c_char,
            };
            &DESCRIPTOR
        }

        /// ABI entry point: copy this thread's last error message.
        ///
        /// # Safety
        /// `buf` must be valid for `cap` bytes of writes.
        #[no_mangle]
        pub unsafe extern "C" fn longrope_plugin_last_error(buf: *mut u8, cap: usize) -> usize {
            $crate::plugin::last_error(buf, cap)
        }

        /// ABI entry point: validate parameters and report the resolved ones.
        ///
        /// # Safety
        /// See `longrope_plugin_abi::ffi::ResolveOut`.
        #[no_mangle]
        pub unsafe extern "C" fn longrope_scaling_resolve(
            ctx: *const $crate::ffi::RopeContext,
            params: *const u8,
            params_len: usize,
            out: *mut $crate::ffi::ResolveOut,
        ) -> i32 {
            $crate::plugin::scaling_resolve::<$plugin>(ctx, params, params_len, out)
        }

        /// ABI entry point: fill the tables of one layer for one sequence length.
        ///
        /// # Safety
        /// See `longrope_plugin_abi::ffi::TablesOut`.
        #[no_mangle]
        pub unsafe extern "C" fn longrope_scaling_tables(
            ctx: *const $crate::ffi::RopeContext,
            params: *const u8,
            params_len: usize,
            out: *mut $crate::ffi::TablesOut,
        ) -> i32 {
            $crate::plugin::scaling_tables::<$plugin>(ctx, params, params_len, out)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Doubles every wavelength; panics on `{"panic": true}`; errors on `{"fail": true}`.
    struct Halve(bool);

    impl ScalingPlugin for Halve {
        fn new(_ctx: &RopeContext, params: &str) -> Result<Self, String> {
            if params.contains("fail") {
                return Err("asked to fail".into());
            }
            Ok(Halve(params.contains("panic")))
        }
        fn resolved_params(&self) -> String {
            r#"{"halve":true}"#.into()
        }
        fn per_layer(&self) -> bool {
            true
        }
        fn tables(&self, _ctx: &RopeContext, out: &mut TablesMut<'_>) -> Result<(), String> {
            assert!(!self.0, "boom");
            out.inv_freq.iter_mut().for_each(|f| *f /= 2.0);
            out.attn_factor = 1.5;
            out.n_hat = 3;
            Ok(())
        }
    }

    fn ctx() -> RopeContext {
        RopeContext {
            head_dim: 4,
            rope_base: 100.0,
            original_max_position_embeddings: 10,
            max_position_embeddings: 20,
            num_layers: 2,
            seq_len: 5,
            layer: 1,
        }
    }

    fn last() -> String {
        let n = unsafe { last_error(std::ptr::null_mut(), 0) };
        let mut buf = vec![0u8; n];
        assert_eq!(unsafe { last_error(buf.as_mut_ptr(), n) }, n);
        String::from_utf8(buf).unwrap()
    }

    fn tables(params: &str, inv: &mut [f64], ret: &mut [f64]) -> (i32, TablesOut) {
        let mut out = TablesOut {
            inv_freq: inv.as_mut_ptr(),
            inv_freq_len: inv.len(),
            attn_factor: 0.0,
            n_hat: 0,
            retained_inv_freq: ret.as_mut_ptr(),
            retained_inv_freq_len: ret.len(),
            retained_attn_factor: 0.0,
        };
        let status = unsafe { scaling_tables::<Halve>(&ctx(), params.as_ptr(), params.len(), &mut out) };
        (status, out)
    }

    #[test]
    fn tables_fill_caller_buffers() {
        let (mut inv, mut ret) = ([0.0; 2], [0.0; 2]);
        let (status, out) = tables("{}", &mut inv, &mut ret);
        assert_eq!(status, STATUS_OK);
        // base 100, d = 4: [1, 100^(-1/2)] halved; retained keeps the unscaled values.
        assert_eq!(inv, [0.5, 0.05]);
        assert_eq!(ret, [1.0, 0.1]);
        assert_eq!((out.attn_factor, out.n_hat, out.retained_attn_factor), (1.5, 3, 1.0));
    }

    #[test]
    fn errors_and_panics_become_last_error() {
        let (mut inv, mut ret) = ([0.0; 2], [0.0; 2]);
        assert_eq!(tables(r#"{"fail":1}"#, &mut inv, &mut ret).0, STATUS_ERROR);
        assert_eq!(last(), "asked to fail");
        assert_eq!(tables(r#"{"panic":1}"#, &mut inv, &mut ret).0, STATUS_ERROR);
        assert_eq!(last(), "longrope_scaling_tables panicked: boom");
        let (mut short, mut ret) = ([0.0; 1], [0.0; 2]);
        assert_eq!(tables("{}", &mut short, &mut ret).0, STATUS_ERROR);
        assert_eq!(last(), "table buffers hold 1 and 2 values, expected head_dim/2 = 2");
    }

    #[test]
    fn resolve_reports_size_then_copies() {
        let mut out = ResolveOut { params_json: std::ptr::null_mut(), params_cap: 0, params_len: 0, flags: 0 };
        let status = unsafe { scaling_resolve::<Halve>(&ctx(), std::ptr::null(), 0, &mut out) };
        assert_eq!((status, out.params_len, out.flags), (STATUS_BUFFER_TOO_SMALL, 14, FLAG_PER_LAYER));
        let mut buf = vec![0u8; out.params_len];
        out.params_json = buf.as_mut_ptr();
        out.params_cap = buf.len();
        assert_eq!(unsafe { scaling_resolve::<Halve>(&ctx(), std::ptr::null(), 0, &mut out) }, STATUS_OK);
        assert_eq!(buf, br#"{"halve":true}"#);
    }
}
