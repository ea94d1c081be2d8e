//! `dynamic-ntk`: dynamic NTK scaling (emozilla), HF `rope_type = "dynamic"` (`_compute_dynamic_ntk_parameters`).
//!
//! At sequence length `l`, with `l <- max(l, L)`: `b'(l) = b * (s*l/L - (s-1))^(d/(d-2))` and
//! `inv_freq[i] = b'^(-2i/d)`; attention factor 1. Up to `L` the tables are the original ones; at any `l` they
//! equal static [`crate::ntk`] at the stretch `x = s*l/L - (s-1)` (so `x = s^2 - s + 1` at `l = L'`, not `s`:
//! HF's form grows faster than `l/L`). Even at `s = 1` the tables keep changing past `L` (`x = l/L`). `L` is HF's `max_position_embeddings` of the *unextended* model (our
//! `original_max_position_embeddings`). HF caches the largest length seen and resets below `L`; here the
//! tables are a pure function of the current `l` (identical within one forward).

use std::sync::Arc;

use longrope_core::rope::base_inv_freq;
use longrope_core::scaling::hf::{HfImport, HfRopeBlock};
use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::ntk::{check_head_dim, ntk_base};

/// Config of `dynamic-ntk` (TOML `method = "dynamic-ntk"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicNtkConfig {
    /// The scale `s` (HF `factor`); defaults to `L'/L`. Must be >= 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

/// HF `dynamic` (`_compute_dynamic_ntk_parameters`): `factor` (required); HF's `L` is the checkpoint's
/// `max_position_embeddings`, whatever `original_max_position_embeddings` says.
fn read_hf(b: &HfRopeBlock) -> longrope_core::Result<HfImport> {
    let config = DynamicNtkConfig { factor: Some(b.required_number("factor")?) };
    Ok(HfImport { config: Box::new(config), original_max_position_embeddings: b.max_position_embeddings })
}

longrope_core::plugin! {
    kind: Scaling,
    name: "dynamic-ntk",
    summary: "dynamic NTK: base grows with the current length (HF `dynamic`)",
    hf: { types: ["dynamic"], read: read_hf },
    impl ScalingConfig for DynamicNtkConfig {
        fn validate(&self) -> longrope_core::Result<()> {
            Ok(checks::factor_opt("dynamic-ntk", self.factor)?)
        }

        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            self.validate()?;
            checks::shape(shape)?;
            check_head_dim("dynamic-ntk", shape)?;
            let factor = checks::scale("dynamic-ntk", self.factor, shape)?;
            Ok(Arc::new(DynamicNtk { factor }))
        }
    }
}

/// The built `dynamic-ntk` method.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicNtk {
    /// The resolved scale `s`.
    pub factor: f64,
}

impl DynamicNtk {
    /// The base used at sequence length `seq_len` for a shape.
    pub fn base_at(&self, shape: &RopeShape, seq_len: usize) -> f64 {
        let original = shape.original_max_position_embeddings as f64;
        let l = (seq_len as f64).max(original);
        let s = self.factor;
        ntk_base(shape.rope_base, shape.head_dim, s * l / original - (s - 1.0))
    }
}

impl PositionScaling for DynamicNtk {
    fn name(&self) -> &str {
        DynamicNtkConfig::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        let base = self.base_at(&ctx.shape, ctx.seq_len);
        Ok(RopeTables::new(base_inv_freq(ctx.shape.head_dim, base), 1.0))
    }

    fn depends_on_seq_len(&self) -> bool {
        true
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "factor": self.factor })
    }
}

