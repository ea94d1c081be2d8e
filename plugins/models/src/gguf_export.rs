//! `longrope export gguf`: a copy of a GGUF model with a scaling method written the way llama.cpp reads it
//! (checked against llama.cpp's source as shipped in `node-llama-cpp@3.22.1`, commit 0ad4a86:
//! `src/llama-model.cpp` `load_hparams` and `get_rope_factors`, `src/llama-context.cpp` (`yarn_attn_factor *=
//! rope_attn_factor`), `src/models/llama.cpp` / `phi3.cpp` / `qwen2.cpp` `load_arch_tensors`, and
//! `ggml_rope_ext`'s `freq_factors`: `theta = p * base^(-2i/d) / ff[i]`).
//!
//! The method is first expressed as per-dimension factors
//! ([`longrope_core::scaling::hf::hf_rope_scaling`]: `lambda_i = theta_i / theta'_i` for `l <= L` and for
//! `l > L`, one attention factor), which any method whose tables switch at most once, at `L`, has exactly. Then,
//! by what the architecture's llama.cpp loader reads:
//! - one factor list (short = long: PI, NTK, YaRN, Llama 3, LongRoPE without short factors) on `llama` /
//!   `mistral`: the F32 tensor `rope_freqs.weight` = the factors, no `rope.scaling.type` and no
//!   `rope.scaling.factor` (llama.cpp's default `linear` at scale 1, as Llama 3.1's files have it);
//! - short and long lists (Phi-3-style LongRoPE), or any list on `phi3`: `rope.scaling.type = "longrope"` and the
//!   F32 tensors `rope_factors_short.weight` / `rope_factors_long.weight`, which llama.cpp switches by its
//!   context size (`-c`) against `rope.scaling.original_context_length` (the llama loader reads them only under
//!   type `longrope`; without that type it would refuse the file for unknown tensors);
//! - an architecture whose loader reads no factor tensor (`qwen2`): only a uniform factor (PI) can be written,
//!   as `rope.scaling.type = "linear"` and `rope.scaling.factor = s`; anything else is refused with the reason;
//! - always `rope.scaling.attn_factor = m` (llama.cpp multiplies cos and sin by it),
//!   `rope.scaling.original_context_length = L` and `context_length = L'` (llama.cpp's default `-c`).
//!
//! Every tensor of the source is copied byte for byte ([`GgufFile::write_rewritten`], streamed: the data section
//! is never held in memory); factor tensors and scaling keys of the source are replaced. Methods HF cannot
//! express (dynamic, `n_hat`, per-layer) are refused with the reason, as for the HF export. Reading the result
//! back ([`crate::gguf_rope`]) gives the method's tables again; `tests/gguf_export.rs` checks that through our
//! evaluator and against llama.cpp's `llama-perplexity` itself.

use std::path::Path;

use longrope_core::scaling::hf::{hf_rope_scaling, is_identity};
use longrope_core::scaling::RopeSchedule;

use crate::error::ModelError;
use crate::gguf::{GgufFile, NewValue};
use crate::gguf_rope::FACTOR_TENSORS;
use crate::llama::{arch_spec, GgufFactors};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GgufExport {
    /// How the method is written: `rope_freqs` (one factor list), `longrope` (short and long lists), `linear`
    /// (a uniform factor as metadata) or `none` (an identity method: no scaling keys at all).
    pub layout: String,
    /// The factor tensors added.
    pub tensors: Vec<String>,
    /// The metadata keys set.
    pub keys: Vec<String>,
    /// The attention factor written (`rope.scaling.attn_factor`).
    pub attn_factor: f64,
    /// `L` (`rope.scaling.original_context_length`).
    pub original_context_length: usize,
    /// `L'` (`context_length`).
    pub context_length: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// The metadata keys of `arch` an export replaces (every RoPE scaling key llama.cpp knows).
fn scaling_keys(arch: &str) -> Vec<String> {
    ["scale_linear", "scaling.type", "scaling.factor", "scaling.alpha", "scaling.attn_factor",
     "scaling.original_context_length", "scaling.finetuned", "scaling.yarn_log_multiplier",
     "scaling.yarn_ext_factor", "scaling.yarn_attn_factor", "scaling.yarn_beta_fast", "scaling.yarn_beta_slow"]
        .iter()
        .map(|k| format!("{arch}.rope.{k}"))
        .collect()
}

/// Write `out`: `src` with `schedule`'s method (bound to the model's `L` and the target `L'`) as llama.cpp reads
/// it. `out` is written to a temporary file beside it and renamed, so a failure leaves no partial file; `out`
/// must not be `src`.
pub fn export_gguf(src: &Path, schedule: &RopeSchedule, out: &Path) -> longrope_core::Result<GgufExport> {
    let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
    if same(src, out) {
        return Err(ModelError::invalid(format!("--out {}", out.display()), "is the source file; write the export to a new path").into());
    }
    let g = GgufFile::open(src)?;
    let arch = g.get_str("general.architecture")?.to_string();
    let spec = arch_spec(&arch)
        .ok_or_else(|| ModelError::config(src, "general.architecture", format!("`{arch}` has no known GGUF layout")))?;
    let shape = &schedule.shape;
    let method = schedule.method.as_ref();
    let invalid = |m: String| ModelError::invalid(format!("--scaling {} for {}", method.name(), src.display()), m);
    let rotary = g.get(&format!("{arch}.rope.dimension_count")).and_then(|v| v.as_u64()).map(|v| v as usize);
    if let Some(r) = rotary.filter(|r| *r != shape.head_dim) {
        return Err(invalid(format!("the schedule is for {} rotary dimensions, the file has {r}", shape.head_dim)).into());
    }
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
            return Err(invalid(format!("expected {half} factors, got {} short and {} long", short.len(), long.len())).into());
        }
        let m = block["attention_factor"].as_f64().unwrap_or(1.0);
        set.push((key("rope.scaling.attn_factor"), NewValue::F32(m as f32)));
        let switches = short != long;
        match (spec.gguf_factors, switches) {
            (GgufFactors::Nothing, false) if long.iter().all(|f| *f == long[0]) => {
                set.push((key("rope.scaling.type"), NewValue::Str("linear".into())));
                set.push((key("rope.scaling.factor"), NewValue::F32(long[0])));
                ("linear", m)
            }
            (GgufFactors::Nothing, _) => {
                return Err(invalid(format!(
                    "llama.cpp's `{arch}` reads no RoPE factor tensors, so only a uniform factor (PI) can be written for it"
                ))
                .into())
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
    let mut bytes = 0;
    longrope_core::files::write_atomic_stream(out, |w| {
        bytes = g.write_rewritten(w, &remove, &set_ref, &FACTOR_TENSORS, &add)?;
        Ok(())
    })?;
    Ok(GgufExport {
        layout: layout.to_string(),
        tensors: add.iter().map(|(n, _)| n.to_string()).collect(),
        keys: set.iter().map(|(k, _)| k.clone()).collect(),
        attn_factor,
        original_context_length: original,
        context_length: target,
        bytes,
    })
}
