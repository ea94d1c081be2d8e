//! `yarn`: YaRN (Peng et al., arXiv 2309.00071), HF `rope_type = "yarn"` (`_compute_yarn_parameters`).
//!
//! NTK-by-parts frequencies, in the code form of jquesnelle/yarn and HF:
//! - correction dimension `D(rho) = d * ln(L / (2 pi rho)) / (2 ln b)`;
//! - ramp bounds `lo = floor(D(beta_fast))`, `hi = ceil(D(beta_slow))` (no floor/ceil when `truncate = false`),
//!   clamped to `[0, d-1]`; if `lo == hi`, `hi += 0.001`;
//! - `gamma_i = clamp((i - lo) / (hi - lo), 0, 1)` for `i = 0 .. d/2`;
//! - `inv_freq[i] = theta_i / s * gamma_i + theta_i * (1 - gamma_i)`: high frequencies (small `i`) are
//!   extrapolated (kept), low ones interpolated (divided by `s`).
//!
//! `blend = "factor"` (not YaRN's own rule; LongRoPE's `evolution/search.py:166-171`, microsoft/LongRoPE@c9e56aa,
//! which seeds its search this way) blends the rescale factors linearly instead of the inverse frequencies:
//! `lambda_i = 1 + (s - 1) gamma_i`, `inv_freq[i] = theta_i / lambda_i`. Both agree at `gamma = 0` and `1`; in
//! the ramp the factor blend interpolates more (at `gamma = 1/2`, `s = 4`: 2.5 against YaRN's 1.6).
//!
//! Attention factor (HF order of precedence): `attention_factor` if set; else, when both `mscale` and
//! `mscale_all_dim` are set, `get(s, mscale) / get(s, mscale_all_dim)` (DeepSeek form); else `get(s, 1)`, with
//! `get(s, m) = 0.1 * m * ln s + 1` for `s > 1` and 1 otherwise. Defaults: `beta_fast = 32`, `beta_slow = 1`,
//! `truncate = true`, `factor = L'/L`. For Llama-2 (d=128, b=1e4, L=4096) the ramp is dims `[20, 46]`.
//! The ramp and attention formulas here are shared with [`crate::dynamic_yarn`].

use std::f64::consts::PI;
use std::sync::Arc;

use longrope_core::scaling::hf::{HfImport, HfRopeBlock};
use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::error::{Result, ScalingError};

fn default_beta_fast() -> f64 {
    32.0
}

fn default_beta_slow() -> f64 {
    1.0
}

fn default_truncate() -> bool {
    true
}

/// How `yarn` mixes the interpolated and extrapolated parts of its ramp (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum YarnBlend {
    /// YaRN / HF: `inv_freq = theta / s * gamma + theta * (1 - gamma)`.
    #[default]
    InvFreq,
    /// LongRoPE's search seed: `lambda = 1 + (s - 1) gamma`, `inv_freq = theta / lambda`.
    Factor,
}

impl YarnBlend {
    fn is_default(&self) -> bool {
        *self == YarnBlend::InvFreq
    }
}

/// Config of `yarn` (TOML `method = "yarn"`); field names follow HF's `rope_scaling` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YarnConfig {
    /// The scale `s` (HF `factor`); defaults to `L'/L`. Must be >= 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Rotations bounding the extrapolated (kept) dimensions; default 32.
    #[serde(default = "default_beta_fast")]
    pub beta_fast: f64,
    /// Rotations bounding the interpolated dimensions; default 1.
    #[serde(default = "default_beta_slow")]
    pub beta_slow: f64,
    /// Floor/ceil the ramp bounds (HF `truncate`, default true).
    #[serde(default = "default_truncate")]
    pub truncate: bool,
    /// A fixed attention factor, overriding `0.1 ln s + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// DeepSeek's numerator coefficient (used only together with `mscale_all_dim`, as HF does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    /// DeepSeek's denominator coefficient (used only together with `mscale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    /// `inv_freq` (default, YaRN) or `factor` (LongRoPE's search seed, see the module doc).
    #[serde(default, skip_serializing_if = "YarnBlend::is_default")]
    pub blend: YarnBlend,
}

impl Default for YarnConfig {
    fn default() -> Self {
        YarnConfig {
            factor: None,
            beta_fast: default_beta_fast(),
            beta_slow: default_beta_slow(),
            truncate: default_truncate(),
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            blend: YarnBlend::default(),
        }
    }
}

/// The YaRN parameters other than the scale, validated (shared by `yarn` and `dynamic-yarn`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct YarnRamp {
    /// Rotations bounding the extrapolated dimensions.
    pub beta_fast: f64,
    /// Rotations bounding the interpolated dimensions.
    pub beta_slow: f64,
    /// Floor/ceil the ramp bounds.
    pub truncate: bool,
    /// Fixed attention factor, if any.
    pub attention_factor: Option<f64>,
    /// DeepSeek numerator coefficient.
    pub mscale: Option<f64>,
    /// DeepSeek denominator coefficient.
    pub mscale_all_dim: Option<f64>,
}

impl YarnRamp {
    /// Validate: betas finite and > 0 with `beta_fast >= beta_slow`; factors finite and > 0.
    pub(crate) fn validated(
        method: &str,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
        attention_factor: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
    ) -> Result<Self> {
        let rotations = "a number of rotations over the context; more than the longest context means nothing";
        let max_rotations = longrope_core::limits::MAX_CONTEXT as f64;
        checks::positive_at_most(&format!("{method}.beta_fast"), beta_fast, max_rotations, rotations)?;
        checks::positive_at_most(&format!("{method}.beta_slow"), beta_slow, max_rotations, rotations)?;
        if beta_fast < beta_slow {
            return Err(ScalingError::invalid(
                format!("{method}.beta_fast/beta_slow"),
                format!("beta_fast ({beta_fast}) must be >= beta_slow ({beta_slow})"),
            ));
        }
        for (name, v) in
            [("attention_factor", attention_factor), ("mscale", mscale), ("mscale_all_dim", mscale_all_dim)]
        {
            if let Some(v) = v {
                let max = longrope_core::limits::MAX_ATTN_FACTOR;
                checks::positive_at_most(&format!("{method}.{name}"), v, max, "an attention scale multiplying cos and sin")?;
            }
        }
        Ok(YarnRamp { beta_fast, beta_slow, truncate, attention_factor, mscale, mscale_all_dim })
    }

    /// The ramp `gamma_i` of a shape (0: extrapolated, 1: interpolated).
    pub fn gamma(&self, shape: &RopeShape) -> Vec<f64> {
        let (lo, hi) = correction_range(
            self.beta_fast,
            self.beta_slow,
            shape.head_dim,
            shape.rope_base,
            shape.original_max_position_embeddings,
            self.truncate,
        );
        linear_ramp(lo, hi, shape.head_dim / 2)
    }

    /// YaRN inverse frequencies for a shape at scale `s` (exactly the original ones at `s = 1`).
    pub fn inv_freq(&self, shape: &RopeShape, scale: f64) -> Vec<f64> {
        self.blended_inv_freq(shape, scale, YarnBlend::InvFreq)
    }

    /// The inverse frequencies at scale `s` with either blend (exactly the original ones at `s = 1`).
    pub fn blended_inv_freq(&self, shape: &RopeShape, scale: f64, blend: YarnBlend) -> Vec<f64> {
        let base = shape.base_inv_freq();
        if scale == 1.0 {
            return base;
        }
        let gamma = self.gamma(shape);
        match blend {
            YarnBlend::InvFreq => base.iter().zip(gamma).map(|(theta, g)| theta / scale * g + theta * (1.0 - g)).collect(),
            YarnBlend::Factor => base.iter().zip(gamma).map(|(theta, g)| theta / (1.0 + (scale - 1.0) * g)).collect(),
        }
    }

    /// The attention factor at scale `s` (see the module docs for the precedence).
    pub fn attn_factor(&self, scale: f64) -> f64 {
        if let Some(m) = self.attention_factor {
            return m;
        }
        match (self.mscale, self.mscale_all_dim) {
            (Some(m), Some(m_all)) => yarn_mscale(scale, m) / yarn_mscale(scale, m_all),
            _ => yarn_mscale(scale, 1.0),
        }
    }
}

/// The dimension (in `0..d`, fractional) whose wavelength makes `num_rotations` turns over `original` positions:
/// `d * ln(L / (2 pi rho)) / (2 ln b)`.
pub fn correction_dim(num_rotations: f64, head_dim: usize, rope_base: f64, original: usize) -> f64 {
    head_dim as f64 * (original as f64 / (num_rotations * 2.0 * PI)).ln() / (2.0 * rope_base.ln())
}

/// The ramp bounds `(lo, hi)`: `D(beta_fast)` and `D(beta_slow)`, floored/ceiled when `truncate`, clamped to
/// `[0, d-1]`.
pub fn correction_range(
    beta_fast: f64,
    beta_slow: f64,
    head_dim: usize,
    rope_base: f64,
    original: usize,
    truncate: bool,
) -> (f64, f64) {
    let mut lo = correction_dim(beta_fast, head_dim, rope_base, original);
    let mut hi = correction_dim(beta_slow, head_dim, rope_base, original);
    if truncate {
        lo = lo.floor();
        hi = hi.ceil();
    }
    (lo.max(0.0), hi.min(head_dim as f64 - 1.0))
}

/// `gamma_i = clamp((i - lo) / (hi - lo), 0, 1)` for `i = 0 .. n` (HF's `linear_ramp_factor`; `hi += 0.001`
/// when `lo == hi`).
pub fn linear_ramp(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let hi = if lo == hi { hi + 0.001 } else { hi };
    (0..n).map(|i| ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0)).collect()
}

/// YaRN's magnitude scale `0.1 * mscale * ln s + 1` for `s > 1`, else 1 (HF `get_mscale`).
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// HF `yarn` (`_compute_yarn_parameters`), read as HF resolves it: `factor` (absent: `L'/L`), `beta_fast`
/// and `beta_slow` (absent or 0: 32 and 1), `truncate` (default true), `attention_factor`, and `mscale` with
/// `mscale_all_dim` only when both are non-zero; `L` = HF's `original_max_position_embeddings`.
fn read_hf(b: &HfRopeBlock) -> longrope_core::Result<HfImport> {
    let or_default = |v: Option<f64>, d: f64| v.filter(|x| *x != 0.0).unwrap_or(d);
    let (mscale, mscale_all_dim) = match (b.number("mscale")?, b.number("mscale_all_dim")?) {
        (Some(m), Some(a)) if m != 0.0 && a != 0.0 => (Some(m), Some(a)),
        _ => (None, None),
    };
    let config = YarnConfig {
        factor: b.number("factor")?,
        beta_fast: or_default(b.number("beta_fast")?, default_beta_fast()),
        beta_slow: or_default(b.number("beta_slow")?, default_beta_slow()),
        truncate: b.boolean("truncate")?.unwrap_or(true),
        attention_factor: b.number("attention_factor")?,
        mscale,
        mscale_all_dim,
        blend: YarnBlend::InvFreq,
    };
    Ok(HfImport { config: Box::new(config), original_max_position_embeddings: b.original_max_position_embeddings })
}

impl YarnConfig {
    /// The validated ramp and attention scaling of this config (field errors name `yarn.FIELD`).
    fn ramp(&self) -> longrope_core::Result<YarnRamp> {
        Ok(YarnRamp::validated(
            "yarn",
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
    name: "yarn",
    summary: "YaRN: NTK-by-parts ramp (beta_fast/beta_slow) + attention 0.1 ln s + 1",
    hf: { types: ["yarn"], read: read_hf },
    impl ScalingConfig for YarnConfig {
        fn validate(&self) -> longrope_core::Result<()> {
            checks::factor_opt("yarn", self.factor)?;
            self.ramp().map(|_| ())
        }

        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            checks::factor_opt("yarn", self.factor)?;
            let ramp = self.ramp()?;
            checks::shape(shape)?;
            let factor = checks::scale("yarn", self.factor, shape)?;
            Ok(Arc::new(Yarn { factor, ramp, blend: self.blend }))
        }
    }
}

/// The built `yarn` method.
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    /// The resolved scale `s`.
    pub factor: f64,
    /// Ramp and attention parameters.
    pub ramp: YarnRamp,
    /// How the ramp mixes the two parts.
    pub blend: YarnBlend,
}

impl PositionScaling for Yarn {
    fn name(&self) -> &str {
        YarnConfig::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        Ok(RopeTables::new(self.ramp.blended_inv_freq(&ctx.shape, self.factor, self.blend), self.ramp.attn_factor(self.factor)))
    }

    fn params(&self) -> serde_json::Value {
        let mut p = serde_json::to_value(&self.ramp).unwrap_or_default();
        p["factor"] = self.factor.into();
        if self.blend != YarnBlend::InvFreq {
            p["blend"] = serde_json::to_value(self.blend).unwrap_or_default();
        }
        p["resolved_attention_factor"] = self.ramp.attn_factor(self.factor).into();
        p
    }
}


#[cfg(test)]
#[allow(clippy::needless_range_loop)] // the tests index dimensions by number, as the formulas do
mod tests {
    use super::*;

    /// Field survey 4(a): ramp dims for Llama-2, Llama-3 and d=64/L=2048 with beta 32/1.
    #[test]
    fn ramp_dims_anchors() {
        assert_eq!(correction_range(32.0, 1.0, 128, 10_000.0, 4096, true), (20.0, 46.0));
        assert_eq!(correction_range(32.0, 1.0, 128, 500_000.0, 8192, true), (18.0, 35.0));
        assert_eq!(correction_range(32.0, 1.0, 64, 10_000.0, 2048, true), (8.0, 21.0));
    }

    /// Field survey 4(a): m = 0.1 ln s + 1 for s = 2/4/8/16/32, to four decimals.
    #[test]
    fn attention_factor_anchors() {
        let expected = [(2.0, 1.0693), (4.0, 1.1386), (8.0, 1.2079), (16.0, 1.2773), (32.0, 1.3466)];
        for (s, m) in expected {
            assert!((yarn_mscale(s, 1.0) - m).abs() < 5e-5, "s={s}: {}", yarn_mscale(s, 1.0));
        }
        assert_eq!(yarn_mscale(1.0, 1.0), 1.0);
    }

    #[test]
    fn ramp_keeps_high_and_divides_low_frequencies() {
        let shape = RopeShape {
            head_dim: 128,
            rope_base: 10_000.0,
            original_max_position_embeddings: 4096,
            max_position_embeddings: 8 * 4096,
            num_layers: 1,
        };
        let m = YarnConfig::default().build(&shape).unwrap();
        let t = m.tables(&shape.at(1, 0)).unwrap();
        let base = shape.base_inv_freq();
        for i in 0..=20 {
            assert_eq!(t.inv_freq[i], base[i], "dim {i} is extrapolated");
        }
        for i in 46..64 {
            assert!((t.inv_freq[i] - base[i] / 8.0).abs() <= 1e-15 * base[i], "dim {i} is interpolated");
        }
        // halfway through the ramp: gamma = (33 - 20)/26 = 0.5
        assert!((t.inv_freq[33] - (base[33] / 8.0 * 0.5 + base[33] * 0.5)).abs() < 1e-18);
        assert_eq!(t.attn_factor, 0.1 * 8f64.ln() + 1.0);
    }

    #[test]
    fn factor_blend_is_linear_in_the_factors() {
        let shape = RopeShape {
            head_dim: 128,
            rope_base: 10_000.0,
            original_max_position_embeddings: 4096,
            max_position_embeddings: 4 * 4096,
            num_layers: 1,
        };
        let yarn = YarnConfig::default().build(&shape).unwrap().tables(&shape.at(1, 0)).unwrap();
        let linear = YarnConfig { blend: YarnBlend::Factor, ..YarnConfig::default() }.build(&shape).unwrap();
        let t = linear.tables(&shape.at(1, 0)).unwrap();
        let base = shape.base_inv_freq();
        // gamma = 1/2 at dim 33 (ramp [20, 46]): factor 1 + 3/2 = 2.5 (YaRN's inverse-frequency blend: 1.6).
        assert!((base[33] / t.inv_freq[33] - 2.5).abs() < 1e-12);
        assert!((base[33] / yarn.inv_freq[33] - 1.6).abs() < 1e-12);
        // Both keep the ends and YaRN's attention factor.
        assert_eq!(t.inv_freq[..=20], base[..=20]);
        assert!((base[50] / t.inv_freq[50] - 4.0).abs() < 1e-12);
        assert_eq!(t.attn_factor, yarn.attn_factor);
        assert_eq!(linear.params()["blend"], "factor");
        let text = "method = \"yarn\"\nblend = \"factor\"\n";
        assert!(longrope_core::scaling::parse_scaling_toml(text, "t").is_ok());
    }

    #[test]
    fn betas_are_checked() {
        let shape = RopeShape {
            head_dim: 64,
            rope_base: 1e5,
            original_max_position_embeddings: 8192,
            max_position_embeddings: 16384,
            num_layers: 1,
        };
        let bad = YarnConfig { beta_fast: 1.0, beta_slow: 32.0, ..YarnConfig::default() };
        assert!(bad.build(&shape).unwrap_err().to_string().contains("beta_fast (1) must be >= beta_slow (32)"));
        let bad = YarnConfig { beta_slow: f64::NAN, ..YarnConfig::default() };
        assert!(bad.build(&shape).unwrap_err().to_string().contains("yarn.beta_slow: NaN is not a finite number"));
    }
}
