//! `longrope export gguf`: a copy of a GGUF model with a scaling method written the way llama.cpp reads it
//! (llama.cpp `src/llama-model.cpp` `load_hparams` and `get_rope_factors`, `src/models/llama.cpp` and
//! `src/models/phi3.cpp` `load_arch_tensors`; the convention of Llama 3.1's GGUF files for one factor list).
//!
//! The method is first expressed as per-dimension factors (`longrope_core::scaling::hf::hf_rope_scaling`: the
//! factors `lambda_i = theta_i / theta'_i` for `l <= L` and for `l > L`, one attention factor), which any
//! method whose tables switch at most once, at `L`, has exactly. Then:
//! - one factor list (short = long: PI, NTK, YaRN, Llama 3, LongRoPE without short factors): the F32 tensor
//!   `rope_freqs.weight` (`ggml_rope_ext`'s `freq_factors`: `theta / ff[i]`), no `rope.scaling.type` and no
//!   `rope.scaling.factor` (llama.cpp's default `linear` at scale 1, as Llama 3.1 files have it). Architectures
//!   whose llama.cpp loader reads `rope_freqs` only (`llama`, `mistral`);
//! - short and long lists (Phi-3-style LongRoPE): `rope.scaling.type = "longrope"` and the F32 tensors
//!   `rope_factors_short.weight` / `rope_factors_long.weight`, which llama.cpp switches by its context size
//!   against `rope.scaling.original_context_length` (`llama` with a llama.cpp that has LongRoPE for it, as the
//!   one checked here; `phi3`);
//! - always `rope.scaling.attn_factor = m` (llama.cpp multiplies cos and sin by it),
//!   `rope.scaling.original_context_length = L` and `context_length = L'` (llama.cpp's default `-c`).
//!
//! Every tensor of the source is copied byte for byte ([`GgufFile::rewrite`]); factor tensors and scaling keys
//! of the source are replaced. Methods HF cannot express (dynamic, `n_hat`, per-layer) are refused with the
//! reason, as for the HF export; so are architectures whose llama.cpp loader reads no factor tensors (`qwen2`).
//!
//! Status: library code only. No `longrope export gguf` subcommand calls it yet, and neither it nor
//! [`GgufFile::rewrite`] has been run against llama.cpp (issue 14, items 4-5, open).

use std::path::Path;

use longrope_core::scaling::hf::{hf_rope_scaling, is_identity};
use longrope_core::scaling::RopeSchedule;

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, NewValue};
use crate::gguf_rope::FACTOR_TENSORS;
use crate::llama::{arch_spec, GgufFactors};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GgufExport {
    /// `rope_freqs` (one factor list), `longrope` (short and long lists) or `none` (an identity method).
    pub layout: String,
    /// The factor tensors added.
    pub tensors: Vec<String>,
    /// The attention factor written.
    pub attn_factor: f64,
    /// `L` (`rope.scaling.original_context_length`).
    pub original_context_length: usize,
    /// `L'` (`context_length`).
    pub context_length: usize,
    /// Bytes written.
    pub bytes: usize,
}

/// The metadata keys of `arch` an export replaces (every RoPE scaling key llama.cpp knows).
fn scaling_keys(arch: &str) -> Vec<String> {
    ["scale_linear", "scaling.type", "scaling.factor", "scaling.attn_factor", "scaling.original_context_length",
     "scaling.finetuned", "scaling.yarn_log_multiplier", "scaling.yarn_ext_factor", "scaling.yarn_attn_factor",
     "scaling.yarn_beta_fast", "scaling.yarn_beta_slow"]
        .iter()
        .map(|k| format!("{arch}.rope.{k}"))
        .collect()
}

/// Write `out`: `src` with `schedule`'s method (bound to the model's `L` and the target `L'`) as llama.cpp reads
/// it. `out` is written whole to a temporary file and renamed.
pub fn export_gguf(src: &Path, schedule: &RopeSchedule, out: &Path) -> Result<GgufExport> {
    let g = GgufFile::open(src)?;
    let arch = g.get_str("general.architecture")?.to_string();
    let spec = arch_spec(&arch).ok_or_else(|| ModelError::config(src, "general.architecture", format!("`{arch}` has no known GGUF layout")))?;
    let shape = &schedule.shape;
    let method = schedule.method.as_ref();
    let invalid = |m: String| ModelError::invalid(format!("--scaling {} for {}", method.name(), src.display()), m);
    let half = shape.head_dim / 2;
    let (original, target) = (shape.original_max_position_embeddings, shape.max_position_embeddings.max(shape.original_max_position_embeddings));
    let key = |k: &str| format!("{arch}.{k}");
    let mut set: Vec<(String, NewValue)> = vec![
        (key("context_length"), NewValue::U32(target as u32)),
        (key("rope.scaling.original_context_length"), NewValue::U32(original as u32)),
    ];
    let mut add: Vec<(&str, Vec<f32>)> = Vec::new();
    let (layout, attn_factor) = if is_identity(method, shape).map_err(|e| invalid(e.to_string()))? {
        ("none", 1.0)
    } else {
        let block = hf_rope_scaling(method, shape).map_err(|e| invalid(e.to_string()))?;
        let list = |k: &str| -> Vec<f32> {
            block[k].as_array().map(|a| a.iter().filter_map(|v| v.as_f64()).map(|v| v as f32).collect()).unwrap_or_default()
        };
        let (short, long) = (list("short_factor"), list("long_factor"));
        if short.len() != half || long.len() != half {
            return Err(invalid(format!("expected {half} factors, got {} short and {} long", short.len(), long.len())));
        }
        let m = block["attention_factor"].as_f64().unwrap_or(1.0);
        set.push((key("rope.scaling.attn_factor"), NewValue::F32(m as f32)));
        let switches = short != long;
        match (spec.gguf_factors, switches) {
            (GgufFactors::Nothing, _) => {
                return Err(invalid(format!("llama.cpp's `{arch}` reads no RoPE factor tensors, so a per-dimension method cannot be written for it")))
            }
            (GgufFactors::FreqsOrLongShort, false) => {
                add.push((FACTOR_TENSORS[0], long));
                ("rope_freqs", m)
            }
            (_, _) => {
                set.push((key("rope.scaling.type"), NewValue::Str("longrope".into())));
                add.push((FACTOR_TENSORS[1], long));
                add.push((FACTOR_TENSORS[2], short));
                ("longrope", m)
            }
        }
    };
    let remove_keys = scaling_keys(&arch);
    let remove: Vec<&str> = remove_keys.iter().map(String::as_str).collect();
    let set_ref: Vec<(&str, NewValue)> = set.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let bytes = g.rewrite(&remove, &set_ref, &FACTOR_TENSORS, &add);
    let len = bytes.len();
    longrope_core::files::write_atomic(out, &bytes).map_err(|e| ModelError::corrupt(out, e.to_string()))?;
    Ok(GgufExport {
        layout: layout.to_string(),
        tensors: add.iter().map(|(n, _)| n.to_string()).collect(),
        attn_factor,
        original_context_length: original,
        context_length: target,
        bytes: len,
    })
}
