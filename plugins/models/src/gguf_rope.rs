//! RoPE scaling in a GGUF file, read as llama.cpp applies it (llama.cpp `src/llama-model.cpp`
//! `load_hparams`, `get_rope_factors`; `src/llama-context.cpp` (cparams: `rope_freq_scale`,
//! `yarn_ext_factor`, `yarn_attn_factor`); `ggml/src/ggml-cpu/ops.cpp` `rope_yarn`, `ggml_rope_cache_init`;
//! `src/models/{llama,phi3,qwen2}.cpp` for which factor tensors each architecture loads).
//!
//! What llama.cpp computes for position `p` and frequency `i`: `theta = p * base^(-2i/d) / ff[i]` (`ff` the
//! architecture's factor tensor, 1 without), then `theta * freq_scale` with `freq_scale = 1 / factor` (types
//! `linear`, `yarn`, `longrope`; 1 for `none`), YaRN's ramp for type `yarn` (`beta_fast = 32`, `beta_slow = 1`:
//! llama.cpp reads no YaRN keys for these architectures), and cos/sin times the attention factor
//! (`rope.scaling.attn_factor`, times YaRN's `0.1 ln s + 1` for type `yarn`). The factor tensors:
//! `rope_freqs.weight` (Llama 3.1's, or ours) and, for type `longrope` (Phi-3 always),
//! `rope_factors_short.weight` while the context is at most `rope.scaling.original_context_length` and
//! `rope_factors_long.weight` beyond.
//!
//! Metadata keys: `{arch}.rope.scaling.type` (default `linear`), `.factor` (or the old `{arch}.rope.scale_linear`;
//! 0 or absent = 1), `.attn_factor` (default 1), `.original_context_length` (default `context_length`).
//! This is written as an HF rope block (`linear`, `yarn`, or `longrope` with the per-dimension factors
//! `ff * factor` and the attention factor) and read by the scaling plugins like any `config.json`, so a
//! GGUF checkpoint's method is one of ours. Difference kept: llama.cpp picks short or long factors by its
//! context size (`-c`), HF and we by the sequence length (`l > L`); with llama-perplexity's full chunks of
//! `-c` tokens the two agree.
//!
//! Checked against llama.cpp itself (`tests/gguf_export.rs`, with its `llama-perplexity`): SmolLM2 with
//! `rope.scaling.type = yarn` / `linear` keys scores as our `yarn` / `pi` (to 1e-6) and as llama.cpp's own
//! scaling (within the Q4_1 tolerance); `rope_freqs.weight`, `rope.scaling.attn_factor` and the
//! `rope_factors_short/long.weight` switch at `original_context_length` are read as llama.cpp applies them.
//! Qwen2 and Phi-3 GGUF files are read by the same code but no such file was available to test.

use longrope_core::model::CheckpointScaling;
use longrope_core::scaling::hf::{read_hf_rope, HfRopeBlock};
use serde_json::{json, Map, Value as Json};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::llama::{ArchSpec, GgufFactors};

/// llama.cpp's per-dimension RoPE factor tensors.
pub const FACTOR_TENSORS: [&str; 3] = ["rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"];

/// The scaling types llama.cpp knows (`LLAMA_ROPE_SCALING_TYPES`).
pub const TYPES: [&str; 4] = ["none", "linear", "yarn", "longrope"];

/// A factor tensor's values (`rotary_dim / 2` of them), if the file has it.
fn factors(g: &GgufFile, name: &str, half: usize) -> Result<Option<Vec<f64>>> {
    let Some(t) = g.tensor(name) else { return Ok(None) };
    if t.numel() != half {
        return Err(ModelError::corrupt(&g.path, format!("tensor `{name}` has {} values, expected {half} (rotary dimensions / 2)", t.numel())));
    }
    Ok(Some(g.dequantize(t)?.into_iter().map(f64::from).collect()))
}

/// The RoPE scaling of a GGUF file of architecture `spec` (`context` = `{arch}.context_length`,
/// `rotary_dim` = `{arch}.rope.dimension_count`), or `None` when llama.cpp would run it unscaled.
pub fn read(g: &GgufFile, spec: &ArchSpec, context: usize, rotary_dim: usize) -> Result<Option<CheckpointScaling>> {
    let arch = g.get_str("general.architecture")?.to_string();
    let key = |k: &str| format!("{arch}.rope.{k}");
    let number = |k: &str| -> Result<Option<f64>> {
        match g.get(&key(k)) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| ModelError::config(&g.path, key(k), "expected a number")),
        }
    };
    let kind = match g.get(&key("scaling.type")) {
        None => "linear".to_string(),
        Some(v) => v.as_str().ok_or_else(|| ModelError::config(&g.path, key("scaling.type"), "expected a string"))?.to_string(),
    };
    if !TYPES.contains(&kind.as_str()) {
        return Err(ModelError::config(&g.path, key("scaling.type"), format!("`{kind}` is not a llama.cpp scaling type ({})", TYPES.join(", "))));
    }
    let factor = number("scaling.factor")?.or(number("scale_linear")?).filter(|f| *f != 0.0);
    let s = if kind == "none" { 1.0 } else { factor.unwrap_or(1.0) };
    let m = number("scaling.attn_factor")?.unwrap_or(1.0);
    let original = match g.get(&key("scaling.original_context_length")) {
        None => context,
        Some(v) => v.as_u64().ok_or_else(|| ModelError::config(&g.path, key("scaling.original_context_length"), "expected an unsigned integer"))? as usize,
    };
    let half = rotary_dim / 2;
    let long_short = match spec.gguf_factors {
        GgufFactors::Nothing => false,
        GgufFactors::FreqsOrLongShort => kind == "longrope",
        GgufFactors::LongShort => true,
    };
    let reads: &[&str] = match (spec.gguf_factors, long_short) {
        (GgufFactors::Nothing, _) => &[],
        (_, true) => &FACTOR_TENSORS[1..],
        (_, false) => &FACTOR_TENSORS[..1],
    };
    for name in FACTOR_TENSORS {
        if g.tensor(name).is_some() && !reads.contains(&name) {
            return Err(ModelError::corrupt(
                &g.path,
                format!("tensor `{name}` is not read by llama.cpp's `{arch}` with {} = `{kind}` (it refuses such a file)", key("scaling.type")),
            ));
        }
    }
    let freqs = if reads.contains(&FACTOR_TENSORS[0]) { factors(g, FACTOR_TENSORS[0], half)? } else { None };
    let (long, short) = if long_short {
        (factors(g, FACTOR_TENSORS[1], half)?, factors(g, FACTOR_TENSORS[2], half)?)
    } else {
        (None, None)
    };
    let scaled = |f: Option<Vec<f64>>| -> Json { json!(f.unwrap_or_else(|| vec![1.0; half]).iter().map(|x| x * s).collect::<Vec<f64>>()) };
    let mut block = Map::new();
    if kind == "yarn" {
        if freqs.is_some() {
            return Err(ModelError::corrupt(&g.path, "rope_freqs.weight with YaRN scaling is not supported (llama.cpp interpolates the factored frequencies; no scaling method here does)"));
        }
        let yarn_mscale = if s > 1.0 { 0.1 * s.ln() + 1.0 } else { 1.0 };
        block.insert("rope_type".into(), "yarn".into());
        block.insert("factor".into(), s.into());
        block.insert("beta_fast".into(), 32.0.into());
        block.insert("beta_slow".into(), 1.0.into());
        block.insert("original_max_position_embeddings".into(), original.into());
        if m != 1.0 {
            block.insert("attention_factor".into(), (yarn_mscale * m).into());
        }
    } else if long.is_some() || short.is_some() || freqs.is_some() || m != 1.0 {
        let (long, short) = if freqs.is_some() { (freqs.clone(), freqs) } else { (long, short) };
        block.insert("rope_type".into(), "longrope".into());
        block.insert("long_factor".into(), scaled(long));
        block.insert("short_factor".into(), scaled(short));
        block.insert("factor".into(), 1.0.into());
        block.insert("attention_factor".into(), m.into());
        block.insert("original_max_position_embeddings".into(), original.into());
    } else if s != 1.0 {
        block.insert("rope_type".into(), "linear".into());
        block.insert("factor".into(), s.into());
    } else {
        return Ok(None);
    }
    let tensors: Vec<&str> = FACTOR_TENSORS.iter().copied().filter(|n| reads.contains(n) && g.tensor(n).is_some()).collect();
    let origin = if tensors.is_empty() {
        format!("{} {arch}.rope.scaling.*", g.path.display())
    } else {
        format!("{} {arch}.rope.scaling.* + {}", g.path.display(), tensors.join(", "))
    };
    let rope_type = block["rope_type"].as_str().unwrap_or_default().to_string();
    let hb = HfRopeBlock { rope_type: &rope_type, fields: &block, max_position_embeddings: context, original_max_position_embeddings: original, origin: &origin };
    let mut cs = read_hf_rope(&hb).map_err(|e| ModelError::corrupt(&g.path, e.to_string()))?;
    if let Some(cs) = &mut cs {
        cs.kind = kind;
        // HF's `linear` takes `L` from `max_position_embeddings`; a GGUF that states its original context
        // (llama.cpp's `n_ctx_orig_yarn`, as our exports do) is extended from that one.
        if g.get(&key("scaling.original_context_length")).is_some() {
            cs.original_max_position_embeddings = original;
        }
    }
    Ok(cs)
}
