//! HF `rope_scaling` blocks, both ways (HF transformers `modeling_rope_utils.py`, 5.x).
//!
//! Import: a checkpoint's block (`rope_scaling`, or `rope_parameters` in transformers 5) is read by the scaling
//! plugin that declares its `rope_type` ([`crate::plugin!`] `hf: { types: [...], read: ... }`), through
//! [`HfRopeBlock`]; [`read_hf_rope`] finds the plugin and reports an unknown type with the known ones.
//!
//! Export: any method whose tables switch at most once, at the original context `L`, as HF transformers'
//! `longrope` block (`short_factor`, `long_factor`, `attention_factor`, `original_max_position_embeddings`),
//! which HF and vLLM compute exactly (`_compute_longrope_parameters`, `Phi3LongRoPEScaledRotaryEmbedding`).
//! Per-dimension factors are LongRoPE's `lambda_i = theta_i / theta'_i` (arXiv 2402.13753, Eq. 2). Used by
//! `longrope rope --hf-config`, search outputs, the fine-tune exporter and the GGUF exporter.

use serde_json::{Map, Value};

use super::{PositionScaling, ScalingConfig};
use crate::registry::{PluginKind, Provides};
use crate::rope::{RopeShape, RopeTables};
use crate::scaling::checkpoint::CheckpointScaling;
use crate::{Error, Result};

/// A scaling plugin's reader of HF blocks (declared in its [`crate::plugin!`]).
pub type HfReader = fn(&HfRopeBlock) -> Result<HfImport>;

/// An HF rope block being read: its fields, the checkpoint's contexts as HF standardises them, and where it
/// came from (named in every error).
#[derive(Debug, Clone)]
pub struct HfRopeBlock<'a> {
    /// The `rope_type` (or legacy `type`) as written (`linear`, `su` ...).
    pub rope_type: &'a str,
    /// Every field of the block.
    pub fields: &'a Map<String, Value>,
    /// `config.json` `max_position_embeddings` (`L'` of a scaled checkpoint; HF's `L` for `dynamic`).
    pub max_position_embeddings: usize,
    /// HF's original context for `llama3` / `yarn` / `longrope`: the top-level
    /// `original_max_position_embeddings`, else the block's, else `max_position_embeddings`
    /// (`standardize_rope_params`).
    pub original_max_position_embeddings: usize,
    /// Where the block is (`DIR/config.json rope_scaling`), for errors.
    pub origin: &'a str,
}

/// What a plugin reads from an HF block: its config, and the original context `L` the method is defined
/// against (HF's for that type).
#[derive(Debug)]
pub struct HfImport {
    /// The method's config, every HF default resolved the way HF resolves it.
    pub config: Box<dyn ScalingConfig>,
    /// `L`.
    pub original_max_position_embeddings: usize,
}

impl HfRopeBlock<'_> {
    /// An error naming the block and `field`.
    pub fn error(&self, field: &str, message: impl std::fmt::Display) -> Error {
        Error::config(self.origin, format!("`{field}`: {message}"))
    }

    /// A numeric field (`None` when absent or `null`); anything else is an error naming it.
    pub fn number(&self, field: &str) -> Result<Option<f64>> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.error(field, format!("expected a number, got {v}"))),
        }
    }

    /// A numeric field HF requires (its compute function indexes it).
    pub fn required_number(&self, field: &str) -> Result<f64> {
        self.number(field)?.ok_or_else(|| self.error(field, format!("missing (HF's `{}` type requires it)", self.rope_type)))
    }

    /// A boolean field.
    pub fn boolean(&self, field: &str) -> Result<Option<bool>> {
        match self.fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.error(field, format!("expected true or false, got {v}"))),
        }
    }

    /// A list of numbers HF requires (`short_factor`, `long_factor`).
    pub fn required_list(&self, field: &str) -> Result<Vec<f64>> {
        let v = self.fields.get(field).ok_or_else(|| self.error(field, format!("missing (HF's `{}` type requires it)", self.rope_type)))?;
        let list = v.as_array().ok_or_else(|| self.error(field, "expected a list of numbers"))?;
        list.iter()
            .enumerate()
            .map(|(i, x)| x.as_f64().ok_or_else(|| self.error(&format!("{field}[{i}]"), format!("expected a number, got {x}"))))
            .collect()
    }
}

/// The HF `rope_type`s the registered scaling plugins read, sorted (`default` included: no scaling).
pub fn known_hf_types() -> Vec<&'static str> {
    let mut out = vec!["default"];
    for p in crate::registry::static_infos(PluginKind::Scaling) {
        if let Provides::HfScaling { hf_types, .. } = p.provides {
            out.extend_from_slice(hf_types);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The `rope_type` of a block: `rope_type`, else the legacy `type`, else `default` (HF's rule).
pub fn block_type(block: &Value) -> Result<Option<&str>> {
    match block.get("rope_type").or_else(|| block.get("type")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(Error::invalid("rope_type", format!("expected a string, got {other}"))),
    }
}

/// Read a checkpoint's HF rope block into one of our methods: the plugin declaring its `rope_type` reads it.
/// `None` for type `default` (no scaling). An unknown type is an error naming `origin` and the known types.
pub fn read_hf_rope(block: &HfRopeBlock) -> Result<Option<CheckpointScaling>> {
    if block.rope_type == "default" {
        return Ok(None);
    }
    let reader = crate::registry::static_infos(PluginKind::Scaling).into_iter().find_map(|p| match p.provides {
        Provides::HfScaling { hf_types, read } if hf_types.contains(&block.rope_type) => Some((p.name, read)),
        _ => None,
    });
    let Some((method, read)) = reader else {
        return Err(Error::config(
            block.origin,
            format!("rope_type `{}` is not supported; known HF types: {}", block.rope_type, known_hf_types().join(", ")),
        ));
    };
    let import = read(block)?;
    import.config.validate().map_err(|e| Error::config(block.origin, e.to_string()))?;
    let config = serde_json::to_value(&import.config).map_err(|e| Error::config(block.origin, e.to_string()))?;
    Ok(Some(CheckpointScaling {
        source: block.origin.to_string(),
        kind: block.rope_type.to_string(),
        method: method.to_string(),
        config,
        original_max_position_embeddings: import.original_max_position_embeddings,
        max_position_embeddings: block.max_position_embeddings,
        block: Value::Object(block.fields.clone()),
    }))
}

/// The rope block of an HF `config.json` document as transformers 5 takes it (`convert_rope_params_to_dict`):
/// the legacy `rope_scaling` when it is a non-empty object (it wins), else `rope_parameters`. Returns the key
/// and the block; `None` when neither is an object.
pub fn rope_block(doc: &Value) -> Option<(&'static str, &Map<String, Value>)> {
    let object = |key: &str| doc.get(key).and_then(Value::as_object);
    match object("rope_scaling") {
        Some(b) if !b.is_empty() => Some(("rope_scaling", b)),
        _ => object("rope_parameters").map(|b| ("rope_parameters", b)),
    }
}

/// The RoPE base of an HF `config.json` document: the rope block's `rope_theta`, else the top-level
/// `rope_theta` (transformers 4), else 10000 (HF's default).
pub fn rope_theta(doc: &Value) -> f64 {
    rope_block(doc)
        .and_then(|(_, b)| b.get("rope_theta"))
        .or_else(|| doc.get("rope_theta"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0)
}

/// The checkpoint scaling of an HF `config.json` document (`path` names it in errors): its rope block
/// ([`rope_block`]) read by the plugin of its type ([`read_hf_rope`]), with HF's contexts: `L'` =
/// `max_position_embeddings`, `L` = the top-level `original_max_position_embeddings`, else the block's, else
/// `L'` (`standardize_rope_params`). `aliases` renames types an architecture maps (Phi-3 reads `yarn` as
/// `longrope`); the type as written is kept in [`CheckpointScaling::kind`]. `None` for type `default`.
pub fn read_hf_config(doc: &Value, path: &str, aliases: &[(&str, &str)]) -> Result<Option<CheckpointScaling>> {
    let Some((key, block)) = rope_block(doc) else { return Ok(None) };
    let origin = format!("{path} {key}");
    let written = block_type(&Value::Object(block.clone())).map_err(|e| Error::config(&origin, e.to_string()))?.unwrap_or("default").to_string();
    let rope_type = aliases.iter().find(|(from, _)| *from == written).map(|(_, to)| *to).unwrap_or(written.as_str());
    if rope_type == "default" {
        return Ok(None);
    }
    let context = |v: Option<&Value>, field: &str| -> Result<Option<usize>> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| Error::config(path, format!("`{field}`: expected a positive integer, got {v}"))),
        }
    };
    let max_position_embeddings = context(doc.get("max_position_embeddings"), "max_position_embeddings")?
        .ok_or_else(|| Error::config(path, format!("`max_position_embeddings`: missing (the `{rope_type}` scaling needs it)")))?;
    let original = context(doc.get("original_max_position_embeddings"), "original_max_position_embeddings")?
        .or(context(block.get("original_max_position_embeddings"), &format!("{key}.original_max_position_embeddings"))?)
        .unwrap_or(max_position_embeddings);
    let hb = HfRopeBlock { rope_type, fields: block, max_position_embeddings, original_max_position_embeddings: original, origin: &origin };
    let mut cs = read_hf_rope(&hb)?;
    if let Some(cs) = &mut cs {
        cs.kind = written;
    }
    Ok(cs)
}

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
