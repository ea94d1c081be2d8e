//! `none`: the model's own RoPE (Su et al., arXiv 2104.09864), `inv_freq[i] = b^(-2i/d)`, attention factor 1.
//! HF `rope_type = "default"`. Every other method reduces to exactly these tables where it defines identity.

use std::sync::Arc;

use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;

/// Config of `none` (TOML `method = "none"`): no fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoneConfig {}

longrope_core::plugin! {
    kind: Scaling,
    name: "none",
    summary: "the model's own RoPE, unscaled (HF `default`)",
    impl ScalingConfig for NoneConfig {
        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            checks::shape(shape)?;
            Ok(Arc::new(NoScaling))
        }
    }
}

/// The built `none` method: the original tables at every length and layer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NoScaling;

impl PositionScaling for NoScaling {
    fn name(&self) -> &str {
        NoneConfig::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        Ok(RopeTables::original(&ctx.shape))
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

