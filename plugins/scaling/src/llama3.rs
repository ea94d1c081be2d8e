//! `llama3`: Llama 3.1 frequency scaling (Meta `apply_scaling`), HF `rope_type = "llama3"`.
//!
//! With wavelength `W_i = 2 pi / theta_i`, `alpha = low_freq_factor`, `beta = high_freq_factor`:
//! - `W_i < L / beta`: `theta'_i = theta_i` (high frequencies kept);
//! - `W_i > L / alpha`: `theta'_i = theta_i / s` (low frequencies interpolated);
//! - otherwise `theta'_i = (1 - sigma) theta_i / s + sigma theta_i`, `sigma = (L / W_i - alpha) / (beta - alpha)`.
//!
//! Attention factor 1. Defaults as HF takes them for Llama 3.1: `low_freq_factor = 1`, `high_freq_factor = 4`,
//! `factor = L'/L` (8 for Llama 3.1, with `L = 8192`).

use std::f64::consts::PI;
use std::sync::Arc;

use longrope_core::scaling::hf::{HfImport, HfRopeBlock};
use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;
use longrope_core::limits::MAX_SCALE;
use crate::error::ScalingError;

fn default_low_freq_factor() -> f64 {
    1.0
}

fn default_high_freq_factor() -> f64 {
    4.0
}

/// Config of `llama3` (TOML `method = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Llama3Config {
    /// The scale `s` (HF `factor`); defaults to `L'/L`. Must be >= 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// `alpha`: wavelengths above `L / alpha` are divided by `s`; default 1.
    #[serde(default = "default_low_freq_factor")]
    pub low_freq_factor: f64,
    /// `beta`: wavelengths below `L / beta` are kept; default 4.
    #[serde(default = "default_high_freq_factor")]
    pub high_freq_factor: f64,
}

impl Default for Llama3Config {
    fn default() -> Self {
        Llama3Config {
            factor: None,
            low_freq_factor: default_low_freq_factor(),
            high_freq_factor: default_high_freq_factor(),
        }
    }
}

/// HF `llama3` (`_compute_llama3_parameters`): `factor`, `low_freq_factor` and `high_freq_factor` (all
/// required, as HF indexes them); `L` = HF's `original_max_position_embeddings`.
fn read_hf(b: &HfRopeBlock) -> longrope_core::Result<HfImport> {
    let config = Llama3Config {
        factor: Some(b.required_number("factor")?),
        low_freq_factor: b.required_number("low_freq_factor")?,
        high_freq_factor: b.required_number("high_freq_factor")?,
    };
    Ok(HfImport { config: Box::new(config), original_max_position_embeddings: b.original_max_position_embeddings })
}

longrope_core::plugin! {
    kind: Scaling,
    name: "llama3",
    summary: "Llama 3.1: keep high, divide low frequencies by s, smooth band between",
    hf: { types: ["llama3"], read: read_hf },
    impl ScalingConfig for Llama3Config {
        fn validate(&self) -> longrope_core::Result<()> {
            checks::factor_opt("llama3", self.factor)?;
            let why = "a wavelength ratio; larger ones put every band on one side";
            checks::positive_at_most("llama3.low_freq_factor", self.low_freq_factor, MAX_SCALE, why)?;
            checks::positive_at_most("llama3.high_freq_factor", self.high_freq_factor, MAX_SCALE, why)?;
            Ok(())
        }

        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            self.validate()?;
            checks::shape(shape)?;
            let factor = checks::scale("llama3", self.factor, shape)?;
            if self.high_freq_factor <= self.low_freq_factor {
                return Err(ScalingError::invalid(
                    "llama3.high_freq_factor",
                    format!(
                        "high_freq_factor ({}) must be greater than low_freq_factor ({})",
                        self.high_freq_factor, self.low_freq_factor
                    ),
                )
                .into());
            }
            Ok(Arc::new(Llama3 { factor, low_freq_factor: self.low_freq_factor, high_freq_factor: self.high_freq_factor }))
        }
    }
}

/// The built `llama3` method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Llama3 {
    /// The resolved scale `s`.
    pub factor: f64,
    /// `alpha`.
    pub low_freq_factor: f64,
    /// `beta`.
    pub high_freq_factor: f64,
}

impl PositionScaling for Llama3 {
    fn name(&self) -> &str {
        Llama3Config::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        let base = ctx.shape.base_inv_freq();
        if self.factor == 1.0 {
            return Ok(RopeTables::new(base, 1.0));
        }
        let l = ctx.shape.original_max_position_embeddings as f64;
        let (alpha, beta, s) = (self.low_freq_factor, self.high_freq_factor, self.factor);
        let (low_freq_wavelen, high_freq_wavelen) = (l / alpha, l / beta);
        let inv_freq = base
            .into_iter()
            .map(|theta| {
                let wavelen = 2.0 * PI / theta;
                if wavelen < high_freq_wavelen {
                    theta
                } else if wavelen > low_freq_wavelen {
                    theta / s
                } else {
                    let sigma = (l / wavelen - alpha) / (beta - alpha);
                    (1.0 - sigma) * theta / s + sigma * theta
                }
            })
            .collect();
        Ok(RopeTables::new(inv_freq, 1.0))
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}


#[cfg(test)]
#[allow(clippy::needless_range_loop)] // the tests index dimensions by number, as the formulas do
mod tests {
    use super::*;

    /// Field survey 4(a): Llama 3.1 (d=128, b=5e5, L=8192, s=8): dims 0-28 kept, 35-63 divided by 8.
    #[test]
    fn llama31_bands() {
        let shape = RopeShape {
            head_dim: 128,
            rope_base: 500_000.0,
            original_max_position_embeddings: 8192,
            max_position_embeddings: 8 * 8192,
            num_layers: 1,
        };
        let t = Llama3Config::default().build(&shape).unwrap().tables(&shape.at(1, 0)).unwrap();
        let base = shape.base_inv_freq();
        for i in 0..=28 {
            assert_eq!(t.inv_freq[i], base[i], "dim {i}");
        }
        for i in 29..35 {
            assert!(t.inv_freq[i] < base[i] && t.inv_freq[i] > base[i] / 8.0, "dim {i} is in the ramp");
        }
        for i in 35..64 {
            assert_eq!(t.inv_freq[i], base[i] / 8.0, "dim {i}");
        }
    }

    #[test]
    fn high_must_exceed_low() {
        let shape = RopeShape {
            head_dim: 64,
            rope_base: 1e5,
            original_max_position_embeddings: 8192,
            max_position_embeddings: 16384,
            num_layers: 1,
        };
        let c = Llama3Config { low_freq_factor: 4.0, high_freq_factor: 4.0, ..Llama3Config::default() };
        let err = c.build(&shape).unwrap_err().to_string();
        assert!(err.contains("high_freq_factor (4) must be greater than low_freq_factor (4)"), "{err}");
    }
}
