//! HF `rope_scaling` export: any method whose tables switch at most once, at the original context `L`, as
//! HF transformers' `longrope` block (`short_factor`, `long_factor`, `attention_factor`,
//! `original_max_position_embeddings`), which HF and vLLM compute exactly (`_compute_longrope_parameters`,
//! `Phi3LongRoPEScaledRotaryEmbedding`). Per-dimension factors are LongRoPE's `lambda_i = theta_i / theta'_i`
//! (arXiv 2402.13753, Eq. 2). Used by `longrope rope --hf-config`, search outputs and the fine-tune exporter.

use super::PositionScaling;
use crate::rope::{RopeShape, RopeTables};
use crate::{Error, Result};

/// The factors `lambda_i = theta_i / theta'_i` of tables for a shape (the base frequencies over the scaled ones).
pub fn factors_of(tables: &RopeTables, shape: &RopeShape) -> Vec<f64> {
    shape.base_inv_freq().iter().zip(&tables.inv_freq).map(|(theta, scaled)| theta / scaled).collect()
}

/// The HF `rope_scaling` block (`rope_type = "longrope"`) that reproduces a built method in HF transformers
/// and vLLM: `short_factor` = the factors at `l = L`, `long_factor` = those at `l = L'`, `attention_factor` = the
/// method's attention factor (also written as vLLM's `short_mscale`/`long_mscale`),
/// `original_max_position_embeddings = L` and `factor = L'/L` (HF's recommended field; with `attention_factor`
/// set it changes nothing). The model's `config.json` must also say `max_position_embeddings = L'`
/// (see [`hf_config_update`]).
///
/// HF switches on `l > L` only, so a method is exportable when its tables are the same for every `l <= L` and
/// for every `l > L` (checked at `l = 1, L, L+1, L', 2L'`), it is not per-layer, it keeps no start tokens, and
/// its attention factor does not change with `l`. Anything else is [`Error::NotExportable`].
pub fn hf_rope_scaling(method: &dyn PositionScaling, shape: &RopeShape) -> Result<serde_json::Value> {
    let not = |reason: String| Error::NotExportable { method: method.name().to_string(), reason };
    if method.per_layer() {
        return Err(not("its factors differ per layer; HF has one factor list for all layers".into()));
    }
    let original = shape.original_max_position_embeddings;
    let target = shape.max_position_embeddings.max(original);
    let at = |l: usize| method.tables(&shape.at(l, 0));
    let short = at(original)?;
    let long = at(target.max(original + 1))?;
    for (l, reference, what) in [(1, &short, "short"), (original + 1, &long, "long"), (2 * target, &long, "long")] {
        let t = at(l)?;
        if t.retained.is_some() {
            return Err(not("it keeps the original tables for the first n_hat positions; HF has no such rule".into()));
        }
        if t.inv_freq != reference.inv_freq {
            return Err(not(format!(
                "its {what} tables change with the sequence length (l = {l}); HF switches only once, at l > {original}"
            )));
        }
        if t.attn_factor != short.attn_factor {
            return Err(not("its attention factor changes with the sequence length; HF's is fixed".into()));
        }
    }
    if short.retained.is_some() || long.retained.is_some() {
        return Err(not("it keeps the original tables for the first n_hat positions; HF has no such rule".into()));
    }
    let m = short.attn_factor;
    Ok(serde_json::json!({
        "type": "longrope",
        "rope_type": "longrope",
        "short_factor": factors_of(&short, shape),
        "long_factor": factors_of(&long, shape),
        "original_max_position_embeddings": original,
        "factor": shape.scale(),
        "attention_factor": m,
        "short_mscale": m,
        "long_mscale": m,
    }))
}

/// Put an exported `rope_scaling` block into an HF `config.json` document: sets `rope_scaling`,
/// `max_position_embeddings = L'` and `original_max_position_embeddings = L` (HF prefers a top-level
/// `original_max_position_embeddings` when present, so both are written), leaving every other key as it is.
pub fn hf_config_update(
    config: &mut serde_json::Map<String, serde_json::Value>,
    block: serde_json::Value,
    shape: &RopeShape,
) {
    config.insert("rope_scaling".into(), block);
    config.insert("max_position_embeddings".into(), shape.max_position_embeddings.into());
    config.insert("original_max_position_embeddings".into(), shape.original_max_position_embeddings.into());
}


/// Whether a method leaves RoPE as the model has it at every length up to `2 L'` (factors 1, attention
/// factor 1, no start-token rule): such a method exports as no `rope_scaling` block at all.
pub fn is_identity(method: &dyn PositionScaling, shape: &RopeShape) -> Result<bool> {
    let original = RopeTables::original(shape);
    let target = shape.max_position_embeddings.max(shape.original_max_position_embeddings);
    for l in [1, shape.original_max_position_embeddings, shape.original_max_position_embeddings + 1, target, 2 * target] {
        for layer in 0..if method.per_layer() { shape.num_layers } else { 1 } {
            if method.tables(&shape.at(l, layer))? != original {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
