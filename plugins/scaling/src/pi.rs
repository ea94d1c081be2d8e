//! `pi`: Position Interpolation (Chen et al., arXiv 2306.15595; kaiokendev), HF `rope_type = "linear"`.
//!
//! Every frequency is divided by the scale: `inv_freq[i] = b^(-2i/d) / s` (LongRoPE's `lambda_i = s`),
//! attention factor 1. `s` defaults to `L'/L`; `factor` overrides it.

use std::sync::Arc;

use longrope_core::scaling::hf::{HfImport, HfRopeBlock};
use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;

/// Config of `pi` (TOML `method = "pi"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiConfig {
    /// The scale `s` (HF `factor`); defaults to `L'/L`. Must be >= 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

/// HF `linear` (`_compute_linear_scaling_rope_parameters`): `factor` (required). The original context is the
/// checkpoint's `max_position_embeddings` (HF's `linear` has none of its own).
fn read_hf(b: &HfRopeBlock) -> longrope_core::Result<HfImport> {
    let config = PiConfig { factor: Some(b.required_number("factor")?) };
    Ok(HfImport { config: Box::new(config), original_max_position_embeddings: b.max_position_embeddings })
}

longrope_core::plugin! {
    kind: Scaling,
    name: "pi",
    summary: "Position Interpolation: every frequency divided by s (HF `linear`)",
    hf: { types: ["linear"], read: read_hf },
    impl ScalingConfig for PiConfig {
        fn validate(&self) -> longrope_core::Result<()> {
            Ok(checks::factor_opt("pi", self.factor)?)
        }

        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            self.validate()?;
            checks::shape(shape)?;
            let factor = checks::scale("pi", self.factor, shape)?;
            Ok(Arc::new(Pi { factor }))
        }
    }
}

/// The built `pi` method.
#[derive(Debug, Clone, PartialEq)]
pub struct Pi {
    /// The resolved scale `s`.
    pub factor: f64,
}

impl PositionScaling for Pi {
    fn name(&self) -> &str {
        PiConfig::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        let inv_freq = ctx.shape.base_inv_freq().into_iter().map(|f| f / self.factor).collect();
        Ok(RopeTables::new(inv_freq, 1.0))
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "factor": self.factor })
    }
}

