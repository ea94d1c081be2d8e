//! `ntk`: NTK-aware scaling (bloc97; YaRN paper arXiv 2309.00071 section 3.1), a change of the RoPE base.
//!
//! `b' = b * s^(d/(d-2))`, `inv_freq[i] = b'^(-2i/d)`, i.e. `lambda_i = s^(2i/(d-2))`: `lambda_0 = 1` (the
//! highest frequency is kept) and `lambda_(d/2-1) = s`. Attention factor 1. For Llama-2 (d=128, b=1e4):
//! `b' = 40890.3` at s=4 and `82684.7` at s=8. HF has no static NTK type; its `dynamic` type is [`crate::dynamic_ntk`].

use std::sync::Arc;

use longrope_core::rope::base_inv_freq;
use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::error::ScalingError;

/// Config of `ntk` (TOML `method = "ntk"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtkConfig {
    /// The scale `s`; defaults to `L'/L`. Must be >= 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

/// The NTK-aware base `b * x^(d/(d-2))` for a base `b`, head dimension `d` and stretch `x` (`x = s` for static
/// NTK; HF's dynamic form passes `x = s*l/L - (s-1)`). Shared by `ntk` and `dynamic-ntk`.
pub fn ntk_base(rope_base: f64, head_dim: usize, x: f64) -> f64 {
    let d = head_dim as f64;
    rope_base * x.powf(d / (d - 2.0))
}

/// NTK needs `d > 2` (the exponent `d/(d-2)`).
pub(crate) fn check_head_dim(method: &str, shape: &RopeShape) -> crate::error::Result<()> {
    if shape.head_dim <= 2 {
        return Err(ScalingError::invalid(
            format!("{method} head_dim"),
            format!("NTK scaling needs head_dim > 2 (exponent d/(d-2)), got {}", shape.head_dim),
        ));
    }
    Ok(())
}

longrope_core::plugin! {
    kind: Scaling,
    name: "ntk",
    summary: "NTK-aware: RoPE base raised to b*s^(d/(d-2))",
    impl ScalingConfig for NtkConfig {
        fn validate(&self) -> longrope_core::Result<()> {
            Ok(checks::factor_opt("ntk", self.factor)?)
        }

        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            self.validate()?;
            checks::shape(shape)?;
            check_head_dim("ntk", shape)?;
            let factor = checks::scale("ntk", self.factor, shape)?;
            Ok(Arc::new(Ntk { factor }))
        }
    }
}

/// The built `ntk` method.
#[derive(Debug, Clone, PartialEq)]
pub struct Ntk {
    /// The resolved scale `s`.
    pub factor: f64,
}

impl PositionScaling for Ntk {
    fn name(&self) -> &str {
        NtkConfig::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        let base = ntk_base(ctx.shape.rope_base, ctx.shape.head_dim, self.factor);
        Ok(RopeTables::new(base_inv_freq(ctx.shape.head_dim, base), 1.0))
    }

    fn params(&self) -> serde_json::Value {
        serde_json::json!({ "factor": self.factor })
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn llama2(target: usize) -> RopeShape {
        RopeShape {
            head_dim: 128,
            rope_base: 10_000.0,
            original_max_position_embeddings: 4096,
            max_position_embeddings: target,
            num_layers: 1,
        }
    }

    /// Field survey 4(a): NTK base for Llama-2 is 40890.3 at s=4 and 82684.7 at s=8.
    #[test]
    fn llama2_ntk_base_anchors() {
        assert!((ntk_base(10_000.0, 128, 4.0) - 40_890.3).abs() < 0.5, "{}", ntk_base(10_000.0, 128, 4.0));
        assert!((ntk_base(10_000.0, 128, 8.0) - 82_684.7).abs() < 0.5, "{}", ntk_base(10_000.0, 128, 8.0));
        let m = NtkConfig::default().build(&llama2(4 * 4096)).unwrap();
        let t = m.tables(&llama2(4 * 4096).at(100, 0)).unwrap();
        // lambda_0 = 1 and lambda_(d/2-1) = s.
        assert_eq!(t.inv_freq[0], 1.0);
        let last = llama2(1).base_inv_freq()[63] / t.inv_freq[63];
        assert!((last - 4.0).abs() < 1e-12, "{last}");
        assert_eq!(t.attn_factor, 1.0);
    }

    #[test]
    fn head_dim_two_is_rejected() {
        let shape = RopeShape { head_dim: 2, ..llama2(8192) };
        let err = NtkConfig::default().build(&shape).unwrap_err().to_string();
        assert!(err.contains("head_dim > 2"), "{err}");
    }
}
