//! The host side: load a plugin library, check its ABI version, and register it like a static plugin.
//!
//! [`load_plugin`] checks the file ([`crate::elf`]: a complete shared library for this machine; a truncated one
//! would crash `dlopen` with SIGBUS), opens the library with `libloading`, reads `longrope_plugin_abi_version` before calling
//! anything else (same major, plugin minor <= host minor, see [`check_version`]), reads the descriptor,
//! resolves every entry point of its kind, then registers the plugin in `longrope_core::registry` (so
//! `longrope plugins` lists it with its library) and as a dynamic scaling method (so a TOML
//! `method = "NAME"` builds it). The built method is a [`DynamicScaling`]: it forwards the user's fields as
//! JSON, fills host-owned buffers through the C ABI and validates the result with `RopeTables::validate`.
//! Libraries are never unloaded: their code must stay mapped while any method built from them is alive.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libloading::Library;
use longrope_core::registry::{self, PluginEntry, PluginKind};
use longrope_core::rope::{RetainedStart, RopeContext, RopeShape, RopeTables};
use longrope_core::scaling::{register_dynamic_scaling, PositionScaling};

use crate::ffi::{self, PluginDescriptor, ResolveOut, TablesOut};
use crate::{decode_version, ABI_MAJOR, ABI_MINOR};

/// Everything that can go wrong while loading or calling a dynamic plugin; every variant names the library.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file does not exist or cannot be read.
    #[error("plugin {path}: {source}")]
    Io {
        /// The library path as given.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a complete shared library for this machine (checked before the dynamic loader sees it:
    /// a truncated library would crash the process with SIGBUS inside `dlopen`).
    #[error("plugin {path}: {message}; refused before loading")]
    NotALibrary {
        /// The library path.
        path: PathBuf,
        /// What is wrong with the file.
        message: String,
    },
    /// The dynamic loader refused the file (not a shared library, wrong architecture, missing dependency).
    #[error("plugin {path}: cannot be loaded as a shared library: {source}")]
    Open {
        /// The library path.
        path: PathBuf,
        /// The loader's error.
        source: libloading::Error,
    },
    /// A required exported function is absent: not a longrope plugin, or a different kind.
    #[error("plugin {path}: not a longrope plugin: missing symbol `{symbol}`")]
    MissingSymbol {
        /// The library path.
        path: PathBuf,
        /// The symbol looked up.
        symbol: &'static str,
    },
    /// The library was built against an incompatible ABI version.
    #[error(
        "plugin {path}: built for plugin ABI {plugin_major}.{plugin_minor}, this host supports {host_major}.0 to \
         {host_major}.{host_minor}: {reason}"
    )]
    Version {
        /// The library path.
        path: PathBuf,
        /// The plugin's major version.
        plugin_major: u16,
        /// The plugin's minor version.
        plugin_minor: u16,
        /// The host's major version.
        host_major: u16,
        /// The host's minor version.
        host_minor: u16,
        /// What to do about it.
        reason: &'static str,
    },
    /// The descriptor is null, not UTF-8, has an empty or blank name, or names a kind this host cannot load.
    #[error("plugin {path}: bad descriptor: {message}")]
    Descriptor {
        /// The library path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An entry point returned an error (or panicked, caught on the plugin side) or broke the ABI contract.
    #[error("plugin `{plugin}` ({path}): {entry}: {message}")]
    Call {
        /// The library path.
        path: PathBuf,
        /// The plugin's name.
        plugin: String,
        /// The entry point.
        entry: &'static str,
        /// The plugin's last error, or the contract violation.
        message: String,
    },
    /// Registering the plugin failed (a plugin of that kind and name already exists).
    #[error(transparent)]
    Core(#[from] longrope_core::Error),
}

impl From<PluginError> for longrope_core::Error {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::Core(e) => e,
            other => longrope_core::Error::Plugin(Box::new(other)),
        }
    }
}

/// What was loaded: the descriptor of a plugin library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPlugin {
    /// The library's canonical path.
    pub path: PathBuf,
    /// The plugin's name.
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Its one-line summary.
    pub summary: String,
    /// The `(major, minor)` ABI version it was built against.
    pub abi_version: (u16, u16),
}

/// Check a plugin's encoded ABI version against this host's: same major, and a minor no newer than ours.
pub fn check_version(path: &Path, version: u32) -> Result<(), PluginError> {
    let (plugin_major, plugin_minor) = decode_version(version);
    let reason = if plugin_major != ABI_MAJOR {
        "the major version differs; rebuild the plugin against this longrope-plugin-abi"
    } else if plugin_minor > ABI_MINOR {
        "the plugin is newer than this host; upgrade longrope"
    } else {
        return Ok(());
    };
    Err(PluginError::Version {
        path: path.to_path_buf(),
        plugin_major,
        plugin_minor,
        host_major: ABI_MAJOR,
        host_minor: ABI_MINOR,
        reason,
    })
}

/// Libraries loaded so far (by canonical path), so loading the same file twice is a no-op.
static LOADED: Mutex<Vec<LoadedPlugin>> = Mutex::new(Vec::new());

/// Load every library in `paths`, in order; the first failure is returned and the rest are not loaded.
pub fn load_plugins(paths: &[PathBuf]) -> Result<Vec<LoadedPlugin>, PluginError> {
    paths.iter().map(|p| load_plugin(p)).collect()
}

/// Load one plugin library and register it. Loading a file that is already loaded returns its descriptor.
pub fn load_plugin(path: &Path) -> Result<LoadedPlugin, PluginError> {
    let canonical = std::fs::canonicalize(path).map_err(|source| PluginError::Io { path: path.into(), source })?;
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = loaded.iter().find(|p| p.path == canonical) {
        return Ok(p.clone());
    }
    crate::elf::check_shared_library(&canonical).map_err(|message| PluginError::NotALibrary { path: canonical.clone(), message })?;
    // SAFETY: loading runs the library's initialisers; a plugin is trusted code the user asked for. Its file
    // was checked above to be a complete ELF shared object for this machine.
    let library =
        unsafe { Library::new(&canonical) }.map_err(|source| PluginError::Open { path: canonical.clone(), source })?;
    // Never unloaded: methods built from it hold its function pointers for the life of the process.
    let library: &'static Library = Box::leak(Box::new(library));
    let path = canonical;

    // The version, before any other call.
    let version_fn: unsafe extern "C" fn() -> u32 = symbol(library, &path, ffi::SYMBOL_ABI_VERSION)?;
    // SAFETY: the symbol has this signature in every ABI version (it is what makes versions checkable).
    let version = unsafe { version_fn() };
    check_version(&path, version)?;

    let descriptor_fn: unsafe extern "C" fn() -> *const PluginDescriptor =
        symbol(library, &path, ffi::SYMBOL_DESCRIPTOR)?;
    let last_error: LastErrorFn = symbol(library, &path, ffi::SYMBOL_LAST_ERROR)?;
    // SAFETY: ABI 1.x signature; the descriptor is static data of the (never unloaded) library.
    let descriptor = unsafe { descriptor_fn().as_ref() }.ok_or_else(|| PluginError::Descriptor {
        path: path.clone(),
        message: "longrope_plugin_descriptor returned null".into(),
    })?;
    let name = descriptor_str(&path, "name", descriptor.name)?;
    let summary = descriptor_str(&path, "summary", descriptor.summary)?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PluginError::Descriptor { path, message: format!("invalid plugin name {name:?}") });
    }
    if descriptor.kind != ffi::KIND_SCALING {
        return Err(PluginError::Descriptor {
            path,
            message: format!("plugin kind {} is not one this host loads (0 = scaling)", descriptor.kind),
        });
    }
    let library_fns = Arc::new(ScalingLibrary {
        path: path.clone(),
        name: name.clone(),
        last_error,
        resolve: symbol(library, &path, ffi::SYMBOL_SCALING_RESOLVE)?,
        tables: symbol(library, &path, ffi::SYMBOL_SCALING_TABLES)?,
    });

    registry::register_dynamic(PluginEntry {
        kind: PluginKind::Scaling,
        name: name.clone(),
        summary: summary.clone(),
        library: Some(path.display().to_string()),
    })?;
    register_dynamic_scaling(
        &name,
        Arc::new(move |params, shape| {
            let method = DynamicScaling::new(library_fns.clone(), params, shape)?;
            Ok(Arc::new(method) as Arc<dyn PositionScaling>)
        }),
    )?;
    let plugin = LoadedPlugin { path, name, kind: PluginKind::Scaling, summary, abi_version: decode_version(version) };
    tracing::debug!(?plugin, "loaded dynamic plugin");
    loaded.push(plugin.clone());
    Ok(plugin)
}

/// Look up a function symbol and copy it out (valid forever, as the library is never unloaded).
fn symbol<T: Copy>(library: &'static Library, path: &Path, name: &'static str) -> Result<T, PluginError> {
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    // SAFETY: the caller names the type of the symbol as ABI 1.x defines it.
    unsafe { library.get::<T>(&cname) }
        .map(|s| *s)
        .map_err(|_| PluginError::MissingSymbol { path: path.to_path_buf(), symbol: name })
}

fn descriptor_str(path: &Path, field: &str, ptr: *const std::os::raw::c_char) -> Result<String, PluginError> {
    if ptr.is_null() {
        return Err(PluginError::Descriptor { path: path.into(), message: format!("{field} is null") });
    }
    // SAFETY: the ABI requires a NUL-terminated static string.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map(str::to_string)
        .map_err(|e| PluginError::Descriptor { path: path.into(), message: format!("{field} is not UTF-8: {e}") })
}

type LastErrorFn = unsafe extern "C" fn(*mut u8, usize) -> usize;
type ResolveFn = unsafe extern "C" fn(*const ffi::RopeContext, *const u8, usize, *mut ResolveOut) -> i32;
type TablesFn = unsafe extern "C" fn(*const ffi::RopeContext, *const u8, usize, *mut TablesOut) -> i32;

/// The entry points of one loaded scaling library.
struct ScalingLibrary {
    path: PathBuf,
    name: String,
    last_error: LastErrorFn,
    resolve: ResolveFn,
    tables: TablesFn,
}

impl std::fmt::Debug for ScalingLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalingLibrary").field("path", &self.path).field("name", &self.name).finish()
    }
}

impl ScalingLibrary {
    /// The plugin's last error on this thread (read right after a failed call).
    fn last_error(&self) -> String {
        // SAFETY: ABI 1.x signature; a null buffer with capacity 0 only asks for the length.
        let n = unsafe { (self.last_error)(std::ptr::null_mut(), 0) };
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` holds `n` bytes.
        let written = unsafe { (self.last_error)(buf.as_mut_ptr(), n) };
        buf.truncate(written.min(n));
        let message = String::from_utf8_lossy(&buf).into_owned();
        if message.is_empty() {
            "failed without an error message".into()
        } else {
            message
        }
    }

    fn error(&self, entry: &'static str, message: String) -> PluginError {
        PluginError::Call { path: self.path.clone(), plugin: self.name.clone(), entry, message }
    }
}

fn ffi_context(ctx: &RopeContext) -> ffi::RopeContext {
    ffi::RopeContext {
        head_dim: ctx.shape.head_dim,
        rope_base: ctx.shape.rope_base,
        original_max_position_embeddings: ctx.shape.original_max_position_embeddings,
        max_position_embeddings: ctx.shape.max_position_embeddings,
        num_layers: ctx.shape.num_layers,
        seq_len: ctx.seq_len,
        layer: ctx.layer,
    }
}

/// A scaling method served by a loaded library: the `PositionScaling` every dynamic plugin builds into.
#[derive(Debug)]
pub struct DynamicScaling {
    library: Arc<ScalingLibrary>,
    /// The user's parameters as JSON text, passed to every call.
    params_json: String,
    /// The parameters with defaults resolved, as the plugin reported them.
    resolved: serde_json::Value,
    flags: u32,
}

impl DynamicScaling {
    /// Validate `params` against `shape` through the library and learn the resolved parameters and flags.
    fn new(
        library: Arc<ScalingLibrary>,
        params: &serde_json::Map<String, serde_json::Value>,
        shape: &RopeShape,
    ) -> Result<Self, PluginError> {
        const ENTRY: &str = ffi::SYMBOL_SCALING_RESOLVE;
        shape.validate()?;
        let params_json = serde_json::Value::Object(params.clone()).to_string();
        let ctx = ffi_context(&shape.at(0, 0));
        let mut buf = vec![0u8; 256];
        let mut out = ResolveOut { params_json: buf.as_mut_ptr(), params_cap: buf.len(), params_len: 0, flags: 0 };
        for attempt in 0..2 {
            // SAFETY: ABI 1.x signature; every pointer is valid for the duration of the call.
            let status = unsafe { (library.resolve)(&ctx, params_json.as_ptr(), params_json.len(), &mut out) };
            match status {
                ffi::STATUS_OK if out.params_len <= buf.len() => break,
                ffi::STATUS_BUFFER_TOO_SMALL if attempt == 0 => {
                    buf = vec![0u8; out.params_len];
                    out = ResolveOut { params_json: buf.as_mut_ptr(), params_cap: buf.len(), params_len: 0, flags: 0 };
                }
                ffi::STATUS_ERROR => return Err(library.error(ENTRY, library.last_error())),
                other => {
                    return Err(
                        library.error(ENTRY, format!("unexpected status {other} (params_len {})", out.params_len))
                    )
                }
            }
        }
        buf.truncate(out.params_len);
        let resolved = serde_json::from_slice(&buf)
            .map_err(|e| library.error(ENTRY, format!("resolved parameters are not JSON: {e}")))?;
        Ok(DynamicScaling { library, params_json, resolved, flags: out.flags })
    }
}

impl PositionScaling for DynamicScaling {
    fn name(&self) -> &str {
        &self.library.name
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        const ENTRY: &str = ffi::SYMBOL_SCALING_TABLES;
        ctx.shape.validate()?;
        let half = ctx.shape.head_dim / 2;
        let mut inv_freq = vec![0.0f64; half];
        let mut retained_inv_freq = vec![0.0f64; half];
        let mut out = TablesOut {
            inv_freq: inv_freq.as_mut_ptr(),
            inv_freq_len: half,
            attn_factor: 1.0,
            n_hat: 0,
            retained_inv_freq: retained_inv_freq.as_mut_ptr(),
            retained_inv_freq_len: half,
            retained_attn_factor: 1.0,
        };
        let lib = &self.library;
        // SAFETY: ABI 1.x signature; the buffers hold `half` values each and outlive the call.
        let status =
            unsafe { (lib.tables)(&ffi_context(ctx), self.params_json.as_ptr(), self.params_json.len(), &mut out) };
        match status {
            ffi::STATUS_OK => {}
            ffi::STATUS_ERROR => return Err(lib.error(ENTRY, lib.last_error()).into()),
            other => return Err(lib.error(ENTRY, format!("unexpected status {other}")).into()),
        }
        let mut tables = RopeTables::new(inv_freq, out.attn_factor);
        if out.n_hat > 0 {
            tables.retained = Some(RetainedStart {
                n_hat: out.n_hat,
                inv_freq: retained_inv_freq,
                attn_factor: out.retained_attn_factor,
            });
        }
        tables.validate(&ctx.shape).map_err(|e| lib.error(ENTRY, format!("returned invalid tables: {e}")))?;
        Ok(tables)
    }

    fn depends_on_seq_len(&self) -> bool {
        self.flags & ffi::FLAG_DEPENDS_ON_SEQ_LEN != 0
    }

    fn per_layer(&self) -> bool {
        self.flags & ffi::FLAG_PER_LAYER != 0
    }

    fn params(&self) -> serde_json::Value {
        self.resolved.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_version;

    #[test]
    fn version_policy() {
        let p = Path::new("libx.so");
        assert!(check_version(p, encode_version(ABI_MAJOR, 0)).is_ok());
        assert!(check_version(p, encode_version(ABI_MAJOR, ABI_MINOR)).is_ok());
        let newer = check_version(p, encode_version(ABI_MAJOR, ABI_MINOR + 1)).unwrap_err().to_string();
        assert_eq!(
            newer,
            format!(
                "plugin libx.so: built for plugin ABI 1.{}, this host supports 1.0 to 1.{}: the plugin is newer than \
                 this host; upgrade longrope",
                ABI_MINOR + 1,
                ABI_MINOR
            )
        );
        let major = check_version(p, encode_version(ABI_MAJOR + 1, 0)).unwrap_err().to_string();
        assert!(major.contains("built for plugin ABI 2.0") && major.contains("major version differs"), "{major}");
        assert!(check_version(p, 0).is_err());
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_plugin(Path::new("/nonexistent/libnope.so")).unwrap_err().to_string();
        assert!(err.starts_with("plugin /nonexistent/libnope.so: "), "{err}");
    }
}
