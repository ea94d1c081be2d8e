//! The libtorch environment: version, threads, CUDA visibility; device and dtype parsing; the dtype a model
//! computes RoPE, attention and its loss head in ([`upcast_kind`]).
//!
//! On Linux, the linker's `--as-needed` drops `libtorch_cuda.so` from a binary that never references one of
//! its symbols, so CUDA stays invisible to `tch`. [`ensure_cuda_loaded`] opens it at run time (found through
//! the binary's rpath to torch's `lib/`), which registers libtorch's CUDA backend; it is a no-op on a
//! CPU-only libtorch.

use std::sync::OnceLock;

use serde::Serialize;
use tch::{Device, Kind};

use crate::{Error, Result};

/// What `longrope env` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EnvInfo {
    /// libtorch version (from the loaded torch package's `version.py`), or `unknown`.
    pub libtorch_version: String,
    /// Directory holding the loaded `libtorch_cpu.so`.
    pub libtorch_lib: Option<String>,
    /// Intra-op threads libtorch uses.
    pub threads: i32,
    /// Whether `libtorch_cuda.so` could be loaded.
    pub cuda_library_loaded: bool,
    /// Whether a CUDA device is usable.
    pub cuda_available: bool,
    /// Number of CUDA devices.
    pub cuda_device_count: i64,
}

/// Load `libtorch_cuda.so` once (and never unload it); returns whether it is loaded.
pub fn ensure_cuda_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        #[cfg(unix)]
        {
            use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
            for name in ["libtorch_cuda.so"] {
                // SAFETY: loading libtorch's own CUDA backend runs its static initialisers, which only
                // register the CUDA hooks with the already loaded libtorch_cpu.
                if let Ok(lib) = unsafe { Library::open(Some(name), RTLD_NOW | RTLD_GLOBAL) } {
                    std::mem::forget(lib);
                    return true;
                }
            }
            false
        }
        #[cfg(not(unix))]
        {
            false
        }
    })
}

/// Directory of the loaded `libtorch_cpu` library, read from `/proc/self/maps` (Linux).
fn libtorch_lib_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libtorch_cpu"))
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()))
}

/// Collect the environment report; loads the CUDA library first.
pub fn env_info() -> EnvInfo {
    let cuda_library_loaded = ensure_cuda_loaded();
    // Touch libtorch so its libraries are mapped before we read the maps.
    let threads = tch::get_num_threads();
    let lib = libtorch_lib_dir();
    let libtorch_version = lib
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("..").join("version.py")).ok())
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("__version__"))
                .and_then(|l| l.split('\'').nth(1).or_else(|| l.split('"').nth(1)))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());
    EnvInfo {
        libtorch_version,
        libtorch_lib: lib.map(|d| d.display().to_string()),
        threads,
        cuda_library_loaded,
        cuda_available: tch::Cuda::is_available(),
        cuda_device_count: tch::Cuda::device_count(),
    }
}

/// Parse `cpu`, `cuda` or `cuda:N`; CUDA devices load the CUDA backend and must exist.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let index = if s == "cuda" {
        0
    } else if let Some(n) = s.strip_prefix("cuda:") {
        n.parse::<usize>().map_err(|_| Error::invalid("device", format!("`{s}`: expected cpu, cuda or cuda:N")))?
    } else {
        return Err(Error::invalid("device", format!("`{s}`: expected cpu, cuda or cuda:N")));
    };
    ensure_cuda_loaded();
    let count = tch::Cuda::device_count();
    if (index as i64) >= count {
        return Err(Error::invalid("device", format!("`{s}`: {count} CUDA device(s) visible")));
    }
    Ok(Device::Cuda(index))
}

/// Parse a compute dtype: `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`/`half`.
pub fn parse_dtype(s: &str) -> Result<Kind> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        other => Err(Error::invalid("dtype", format!("`{other}`: expected f32, bf16 or f16"))),
    }
}

/// The short name of a compute dtype (`f32`, `bf16`, `f16`).
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Double => "f64",
        _ => "other",
    }
}

/// The dtype a model stored in `kind` on `device` computes RoPE, attention and its loss head (LM-head logits
/// and log-softmax) in: its own, except bf16 on CPU, which computes them in f32. libtorch's CPU kernels are
/// slower in bf16 than in f32 on CPUs without AMX (measured in docs/performance.md: the flash attention kernel
/// ~1.6x at 8k-16k tokens, element-wise RoPE several times, the LM-head matmul ~1.9x), and f32 is the more
/// accurate of the two: bf16 logits carry 8 significant bits, so the target logit in the loss would be off by up
/// to ~0.03 nats at a logit of 10. The model's other linear layers stay in its dtype (their weights are stored in
/// it); the LM head's weight is cast for the duration of one loss computation. Generation's next-token logits
/// (`forward`, decoding) stay in the model's dtype, as HF's do: a per-step cast of the head would cost more than
/// the step's matrix-vector product.
pub fn upcast_kind(kind: Kind, device: Device) -> Kind {
    if kind == Kind::BFloat16 && device == Device::Cpu {
        Kind::Float
    } else {
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        assert_eq!(parse_dtype("F32").unwrap(), Kind::Float);
        assert!(parse_dtype("int8").is_err());
        assert_eq!(dtype_name(Kind::Half), "f16");
    }

    #[test]
    fn bf16_upcasts_on_cpu_only() {
        assert_eq!(upcast_kind(Kind::BFloat16, Device::Cpu), Kind::Float);
        assert_eq!(upcast_kind(Kind::BFloat16, Device::Cuda(0)), Kind::BFloat16);
        assert_eq!(upcast_kind(Kind::Half, Device::Cpu), Kind::Half);
        assert_eq!(upcast_kind(Kind::Float, Device::Cpu), Kind::Float);
    }

    #[test]
    fn env_reports_threads_and_version() {
        let info = env_info();
        assert!(info.threads >= 1);
        assert!(info.libtorch_lib.is_some(), "libtorch_cpu should be mapped");
    }
}

/// Peak resident set size of this process in MiB (`VmHWM` of `/proc/self/status`, Linux), if readable.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset the peak RSS counter (`5` into `/proc/self/clear_refs`, Linux) so the next [`peak_rss_mib`] is the
/// peak since now (best effort).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
