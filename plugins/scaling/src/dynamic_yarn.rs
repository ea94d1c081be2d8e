//! `dynamic-yarn`: dynamic YaRN (jquesnelle/yarn `LlamaDynamicYaRNScaledRotaryEmbedding`, not fine-tuned).
//!
//! At sequence length `l` the YaRN tables of [`crate::yarn`] are computed with the scale
//! `s(l) = max(1, l / L)`: the original tables up to `L`, YaRN at `s` when `l = L'`. The attention factor
//! follows `s(l)` too (`0.1 ln s(l) + 1`, or the DeepSeek form), unless `attention_factor` fixes it. Same fields
//! and defaults as `yarn`, without `factor` (the scale comes from the length). HF has no dynamic YaRN type.

use std::sync::Arc;

use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::yarn::{YarnConfig, YarnRamp};

/// Config of `dynamic-yarn` (TOML `method = "dynamic-yarn"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicYarnConfig {
    /// Rotations bounding the extrapolated dimensions; default 32.
    #[serde(default = "default_beta_fast")]
    pub beta_fast: f64,
    /// Rotations bounding the interpolated dimensions; default 1.
    #[serde(default = "default_beta_slow")]
    pub beta_slow: f64,
    /// Floor/ceil the ramp bounds (default true).
    #[serde(default = "default_truncate")]
    pub truncate: bool,
    /// A fixed attention factor, overriding `0.1 ln s(l) + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// DeepSeek's numerator coefficient (with `mscale_all_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    /// DeepSeek's denominator coefficient (with `mscale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
}

fn default_beta_fast() -> f64 {
    YarnConfig::default().beta_fast
}

fn default_beta_slow() -> f64 {
    YarnConfig::default().beta_slow
}

fn default_truncate() -> bool {
    YarnConfig::default().truncate
}

impl Default for DynamicYarnConfig {
    fn default() -> Self {
        let y = YarnConfig::default();
        DynamicYarnConfig {
            beta_fast: y.beta_fast,
            beta_slow: y.beta_slow,
            truncate: y.truncate,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
        }
    }
}

impl DynamicYarnConfig {
    /// The validated ramp and attention scaling of this config (field errors name `dynamic-yarn.FIELD`).
    fn ramp(&self) -> longrope_core::Result<YarnRamp> {
        Ok(YarnRamp::validated(
            "dynamic-yarn",
            self.beta_fast,
            self.beta_slow,
            self.truncate,
            self.attention_factor,
            self.mscale,
            self.mscale_all_dim,
        )?)
    }
}

longrope_core::plugin! {
    kind: Scaling,
    name: "dynamic-yarn",
    summary: "dynamic YaRN: YaRN at s(l) = max(1, l/L) for the current length",
    impl ScalingConfig for DynamicYarnConfig {
        fn validate(&self) -> longrope_core::Result<()> {
            self.ramp().map(|_| ())
        }

        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            checks::shape(shape)?;
            let ramp = self.ramp()?;
            Ok(Arc::new(DynamicYarn { ramp }))
        }
    }
}

/// The built `dynamic-yarn` method.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicYarn {
    /// Ramp and attention parameters.
    pub ramp: YarnRamp,
}

impl DynamicYarn {
    /// The scale used at sequence length `seq_len`: `max(1, l / L)`.
    pub fn scale_at(shape: &RopeShape, seq_len: usize) -> f64 {
        (seq_len as f64 / shape.original_max_position_embeddings as f64).max(1.0)
    }
}

impl PositionScaling for DynamicYarn {
    fn name(&self) -> &str {
        DynamicYarnConfig::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        let s = Self::scale_at(&ctx.shape, ctx.seq_len);
        Ok(RopeTables::new(self.ramp.inv_freq(&ctx.shape, s), self.ramp.attn_factor(s)))
    }

    fn depends_on_seq_len(&self) -> bool {
        true
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.ramp).unwrap_or_default()
    }
}

