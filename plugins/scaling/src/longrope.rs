//! `longrope`: LongRoPE (Ding et al., arXiv 2402.13753), per-dimension rescale factors found by search.
//!
//! Frequencies (Eq. 2): `inv_freq[i] = theta_i / lambda_i` with `theta_i = b^(-2i/d)`; `lambda` is `d/2` values
//! shared by all layers, or one row per layer (`layers x d/2`, per-layer search), given inline (`factors`) or
//! as LongRoPE's CSV (`factors_file`). Every `lambda_i >= 1`.
//!
//! Attention factor `m` (cos and sin are multiplied by `m`), by `attention_policy` with `s` the scale:
//! `su` (default) `sqrt(1 + ln s / ln L)`, `yarn` `0.1 ln s + 1`, `none` 1 (all 1 when `s <= 1`); a set
//! `attention_factor` overrides the policy. At `L = 4096, s = 8`, `su` gives 1.1180.
//!
//! Variants, each as in its reference:
//! - Phi-3 / HF short and long factors (`_compute_longrope_parameters` and `longrope_frequency_update`): when
//!   `short_factors` is set, `lambda = short_factors` while `l <= L` and `factors` (HF `long_factor`) when
//!   `l > L`; the attention factor is the same for both (HF computes it once);
//! - retained start tokens (Eq. 3, the reference's `longrope_mixed`): positions `< n_hat` use the original
//!   `theta_i` with attention factor 1 ([`RopeTables::retained`]);
//! - `dynamic` (the reference's `DynamicLongRoPEScaledRotaryEmbedding`):
//!   `lambda'_i = 1 + (lambda_i - 1) (l/L - 1) / (s - 1)`, so `lambda' = lambda` at `l = L'`; for `l <= L` we use
//!   the original frequencies (`lambda' = 1`, where the reference would go below 1). The attention factor stays
//!   the one of `s`, as in the reference. With `short_factors`, `dynamic` applies to the long factors only.
//!
//! `s` is `factor` if set (HF `factor`), else `L'/L`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use longrope_core::rope::RetainedStart;
use longrope_core::scaling::hf::{HfImport, HfRopeBlock};
use longrope_core::{PositionScaling, RopeContext, RopeShape, RopeTables, ScalingConfig};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::error::{Result, ScalingError};
use crate::factors::{read_csv, FactorTable};
use crate::yarn::yarn_mscale;

/// How LongRoPE sets the attention factor from the scale `s` and the original context `L`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionPolicy {
    /// `sqrt(1 + ln s / ln L)` (LongRoPE and Phi-3, HF's default for `longrope`).
    #[default]
    Su,
    /// `0.1 ln s + 1` (YaRN's).
    Yarn,
    /// 1 (no attention scaling).
    None,
}

impl AttentionPolicy {
    /// The attention factor for scale `s` and original context `L` (1 when `s <= 1`).
    pub fn attn_factor(self, scale: f64, original: usize) -> f64 {
        if scale <= 1.0 {
            return 1.0;
        }
        match self {
            AttentionPolicy::Su => (1.0 + scale.ln() / (original as f64).ln()).sqrt(),
            AttentionPolicy::Yarn => yarn_mscale(scale, 1.0),
            AttentionPolicy::None => 1.0,
        }
    }
}

/// Config of `longrope` (TOML `method = "longrope"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongRopeConfig {
    /// The factors `lambda` (HF `long_factor`): `d/2` numbers, or `num_layers` lists of `d/2` numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factors: Option<FactorTable>,
    /// A LongRoPE CSV holding the factors (instead of `factors`); relative to the TOML file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factors_file: Option<PathBuf>,
    /// Phi-3/HF short factors, used while `l <= L` (then `factors` are used for `l > L`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_factors: Option<FactorTable>,
    /// How the attention factor follows `s` (`su`, `yarn`, `none`); default `su`.
    #[serde(default)]
    pub attention_policy: AttentionPolicy,
    /// A fixed attention factor, overriding `attention_policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// Retained start tokens: positions `< n_hat` keep the original tables (attention factor 1); default 0.
    #[serde(default)]
    pub n_hat: usize,
    /// Scale the factors with the current length (`lambda' = 1 + (lambda - 1)(l/L - 1)/(s - 1)`); default false.
    #[serde(default)]
    pub dynamic: bool,
    /// The scale `s` (HF `factor`); defaults to `L'/L`. Sets the attention factor and the dynamic rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

impl LongRopeConfig {
    /// Validate against a shape and return the built method (reads `factors_file` if given).
    pub fn build_longrope(&self, shape: &RopeShape) -> Result<LongRope> {
        checks::shape(shape)?;
        let half = shape.head_dim / 2;
        let factors = match (&self.factors, &self.factors_file) {
            (Some(_), Some(path)) => {
                return Err(ScalingError::invalid(
                    "longrope.factors/factors_file",
                    format!("give either `factors` or `factors_file` ({}), not both", path.display()),
                ))
            }
            (Some(f), None) => {
                f.validate("longrope.factors", half, shape.num_layers, 1.0)?;
                f.clone()
            }
            (None, Some(path)) => {
                let f = read_csv(path)?;
                f.validate(&path.display().to_string(), half, shape.num_layers, 1.0)?;
                f
            }
            (None, None) => {
                return Err(ScalingError::MissingField {
                    method: "longrope".into(),
                    field: "factors".into(),
                    hint: format!(
                        "give `factors` ({half} numbers, or one list per layer) or `factors_file` (a LongRoPE CSV)"
                    ),
                })
            }
        };
        if let Some(short) = &self.short_factors {
            short.validate("longrope.short_factors", half, shape.num_layers, 1.0)?;
        }
        let scale = checks::scale("longrope", self.factor, shape)?;
        if let Some(m) = self.attention_factor {
            checks::positive("longrope.attention_factor", m)?;
        }
        if self.dynamic && scale <= 1.0 {
            return Err(ScalingError::invalid(
                "longrope.dynamic",
                format!("the dynamic rule divides by s - 1 and needs s > 1, got s = {scale}"),
            ));
        }
        let attn_factor = self
            .attention_factor
            .unwrap_or_else(|| self.attention_policy.attn_factor(scale, shape.original_max_position_embeddings));
        Ok(LongRope {
            factors,
            short_factors: self.short_factors.clone(),
            scale,
            attention_policy: self.attention_policy,
            attn_factor,
            n_hat: self.n_hat,
            dynamic: self.dynamic,
        })
    }
}

/// HF `longrope` and its old name `su` (`_compute_longrope_parameters`, `longrope_frequency_update`):
/// `long_factor` -> `factors`, `short_factor` -> `short_factors` (switching at `l > L`), `factor` (absent:
/// `L'/L`) and `attention_factor` (absent: `sqrt(1 + ln s / ln L)`, 1 when `s <= 1`: our `su` policy);
/// `L` = HF's `original_max_position_embeddings`.
fn read_hf(b: &HfRopeBlock) -> longrope_core::Result<HfImport> {
    let config = LongRopeConfig {
        factors: Some(FactorTable::Shared(b.required_list("long_factor")?)),
        short_factors: Some(FactorTable::Shared(b.required_list("short_factor")?)),
        attention_factor: b.number("attention_factor")?,
        factor: b.number("factor")?,
        ..LongRopeConfig::default()
    };
    Ok(HfImport { config: Box::new(config), original_max_position_embeddings: b.original_max_position_embeddings })
}

longrope_core::plugin! {
    kind: Scaling,
    name: "longrope",
    summary: "LongRoPE: searched per-dimension factors, n_hat, short/long, su attention",
    hf: { types: ["longrope", "su"], read: read_hf },
    impl ScalingConfig for LongRopeConfig {
        fn validate(&self) -> longrope_core::Result<()> {
            checks::factor_opt("longrope", self.factor)?;
            if let Some(f) = &self.factors {
                f.check_values("longrope.factors", 1.0)?;
            }
            if let Some(f) = &self.short_factors {
                f.check_values("longrope.short_factors", 1.0)?;
            }
            longrope_core::limits::int_in("longrope.n_hat", self.n_hat, 0, longrope_core::limits::MAX_CONTEXT, "retained start tokens")?;
            if let Some(m) = self.attention_factor {
                let max = longrope_core::limits::MAX_ATTN_FACTOR;
                checks::positive_at_most("longrope.attention_factor", m, max, "an attention scale multiplying cos and sin")?;
            }
            Ok(())
        }

        fn build(&self, shape: &RopeShape) -> longrope_core::Result<Arc<dyn PositionScaling>> {
            self.validate()?;
            Ok(Arc::new(self.build_longrope(shape)?))
        }

        fn resolve_relative_paths(&mut self, base_dir: &Path) {
            if let Some(p) = &self.factors_file {
                if p.is_relative() {
                    self.factors_file = Some(base_dir.join(p));
                }
            }
        }
    }
}

/// The built `longrope` method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LongRope {
    /// The (long) factors.
    pub factors: FactorTable,
    /// The short factors, if short/long switching is on.
    pub short_factors: Option<FactorTable>,
    /// The resolved scale `s`.
    pub scale: f64,
    /// The attention policy (informative when `attention_factor` was set).
    pub attention_policy: AttentionPolicy,
    /// The resolved attention factor `m`.
    pub attn_factor: f64,
    /// Retained start tokens.
    pub n_hat: usize,
    /// Whether the dynamic rule is on.
    pub dynamic: bool,
}

impl LongRope {
    /// The factors used at sequence length `l` for layer `layer` (after short/long choice and the dynamic rule).
    pub fn factors_at(&self, shape: &RopeShape, seq_len: usize, layer: usize) -> Result<Vec<f64>> {
        let original = shape.original_max_position_embeddings;
        let row = |table: &FactorTable, field: &str| -> Result<Vec<f64>> {
            table.row(layer).map(<[f64]>::to_vec).ok_or_else(|| {
                ScalingError::invalid(field, format!("no row for layer {layer} (the table has per-layer rows)"))
            })
        };
        if let (Some(short), true) = (&self.short_factors, seq_len <= original) {
            return row(short, "longrope.short_factors");
        }
        let long = row(&self.factors, "longrope.factors")?;
        if !self.dynamic {
            return Ok(long);
        }
        let stretch = (seq_len as f64 / original as f64 - 1.0).max(0.0) / (self.scale - 1.0);
        Ok(long.into_iter().map(|lambda| 1.0 + (lambda - 1.0) * stretch).collect())
    }
}

impl PositionScaling for LongRope {
    fn name(&self) -> &str {
        LongRopeConfig::NAME
    }

    fn tables(&self, ctx: &RopeContext) -> longrope_core::Result<RopeTables> {
        let lambda = self.factors_at(&ctx.shape, ctx.seq_len, ctx.layer)?;
        let base = ctx.shape.base_inv_freq();
        if lambda.len() != base.len() {
            return Err(ScalingError::WrongCount {
                field: "longrope.factors".into(),
                expected: base.len(),
                got: lambda.len(),
                unit: "factors (head_dim/2)".into(),
            }
            .into());
        }
        let inv_freq = base.iter().zip(&lambda).map(|(theta, l)| theta / l).collect();
        let mut tables = RopeTables::new(inv_freq, self.attn_factor);
        if self.n_hat > 0 {
            tables.retained = Some(RetainedStart { n_hat: self.n_hat, inv_freq: base, attn_factor: 1.0 });
        }
        Ok(tables)
    }

    fn depends_on_seq_len(&self) -> bool {
        self.short_factors.is_some() || self.dynamic
    }

    fn per_layer(&self) -> bool {
        self.factors.is_per_layer() || self.short_factors.as_ref().is_some_and(FactorTable::is_per_layer)
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn shape(head_dim: usize, original: usize, scale: usize, layers: usize) -> RopeShape {
        RopeShape {
            head_dim,
            rope_base: 10_000.0,
            original_max_position_embeddings: original,
            max_position_embeddings: original * scale,
            num_layers: layers,
        }
    }

    /// Field survey 4(a): su attention factor at L=4096 for s = 4/8/32.
    #[test]
    fn su_factor_anchors() {
        let su = |s| AttentionPolicy::Su.attn_factor(s, 4096);
        assert!((su(4.0) - 1.0801).abs() < 5e-5, "{}", su(4.0));
        assert!((su(8.0) - 1.1180).abs() < 5e-5, "{}", su(8.0));
        assert!((su(32.0) - 1.1902).abs() < 5e-5, "{}", su(32.0));
        assert_eq!(AttentionPolicy::Yarn.attn_factor(8.0, 4096), 0.1 * 8f64.ln() + 1.0);
        assert_eq!(AttentionPolicy::None.attn_factor(8.0, 4096), 1.0);
        assert_eq!(AttentionPolicy::Su.attn_factor(1.0, 4096), 1.0);
    }

    #[test]
    fn dynamic_rule_matches_reference_formula() {
        let sh = shape(8, 1000, 4, 1);
        let lambda = vec![1.0, 2.0, 3.0, 4.0];
        let c =
            LongRopeConfig { factors: Some(FactorTable::Shared(lambda.clone())), dynamic: true, ..Default::default() };
        let m = c.build_longrope(&sh).unwrap();
        // l <= L: the original frequencies
        assert_eq!(m.factors_at(&sh, 1000, 0).unwrap(), vec![1.0; 4]);
        assert_eq!(m.factors_at(&sh, 10, 0).unwrap(), vec![1.0; 4]);
        // l = L': the searched factors
        assert_eq!(m.factors_at(&sh, 4000, 0).unwrap(), lambda);
        // l = 2L: lambda' = 1 + (lambda - 1)(2 - 1)/(4 - 1)
        let got = m.factors_at(&sh, 2000, 0).unwrap();
        for (g, l) in got.iter().zip(&lambda) {
            assert!((g - (1.0 + (l - 1.0) / 3.0)).abs() < 1e-15);
        }
        assert!(m.depends_on_seq_len());
        // the attention factor stays the one of s = 4
        assert_eq!(m.tables(&sh.at(2000, 0)).unwrap().attn_factor, AttentionPolicy::Su.attn_factor(4.0, 1000));
    }

    #[test]
    fn short_long_switch_at_original_length() {
        let sh = shape(4, 100, 8, 1);
        let c = LongRopeConfig {
            factors: Some(FactorTable::Shared(vec![1.0, 8.0])),
            short_factors: Some(FactorTable::Shared(vec![1.0, 1.5])),
            ..Default::default()
        };
        let m = c.build_longrope(&sh).unwrap();
        assert_eq!(m.factors_at(&sh, 100, 0).unwrap(), vec![1.0, 1.5]);
        assert_eq!(m.factors_at(&sh, 101, 0).unwrap(), vec![1.0, 8.0]);
        let (short, long) = (m.tables(&sh.at(100, 0)).unwrap(), m.tables(&sh.at(101, 0)).unwrap());
        assert_eq!(short.attn_factor, long.attn_factor, "HF uses one attention factor for both");
        assert!(m.depends_on_seq_len());
    }

    #[test]
    fn retained_start_tokens_use_original_tables() {
        let sh = shape(4, 100, 2, 1);
        let c = LongRopeConfig { factors: Some(FactorTable::Shared(vec![1.0, 2.0])), n_hat: 4, ..Default::default() };
        let t = c.build_longrope(&sh).unwrap().tables(&sh.at(200, 0)).unwrap();
        let r = t.retained.clone().unwrap();
        assert_eq!((r.n_hat, r.attn_factor), (4, 1.0));
        assert_eq!(r.inv_freq, sh.base_inv_freq());
        let (cos, _) = t.cos_sin(&[3, 4]);
        let original = RopeTables::original(&sh).cos_sin(&[3]).0;
        assert_eq!(&cos[..2], &original[..], "position 3 < n_hat is the original embedding, factor 1");
        assert_eq!(cos[2], ((4.0 * sh.base_inv_freq()[0]).cos() * t.attn_factor) as f32);
    }

    #[test]
    fn per_layer_rows() {
        let sh = shape(4, 100, 2, 2);
        let c = LongRopeConfig {
            factors: Some(FactorTable::PerLayer(vec![vec![1.0, 2.0], vec![1.0, 3.0]])),
            ..Default::default()
        };
        let m = c.build_longrope(&sh).unwrap();
        assert!(m.per_layer());
        assert_eq!(m.tables(&sh.at(1, 1)).unwrap().inv_freq[1], sh.base_inv_freq()[1] / 3.0);
        let wrong = LongRopeConfig { factors: Some(FactorTable::PerLayer(vec![vec![1.0, 2.0]])), ..Default::default() };
        let err = wrong.build_longrope(&sh).unwrap_err().to_string();
        assert_eq!(err, "longrope.factors: expected 2 rows (one per layer), got 1");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let sh = shape(4, 100, 2, 1);
        let err = |c: LongRopeConfig| c.build_longrope(&sh).unwrap_err().to_string();
        assert_eq!(
            err(LongRopeConfig::default()),
            "longrope: missing field `factors` (give `factors` (2 numbers, or one list per layer) or `factors_file` (a LongRoPE CSV))"
        );
        let f = |v: Vec<f64>| Some(FactorTable::Shared(v));
        assert_eq!(
            err(LongRopeConfig { factors: f(vec![1.0, 2.0, 3.0]), ..Default::default() }),
            "longrope.factors: expected 2 factors (head_dim/2), got 3"
        );
        assert!(err(LongRopeConfig { factors: f(vec![1.0, 0.5]), ..Default::default() })
            .starts_with("longrope.factors[1]: 0.5 is below the minimum 1"));
        assert_eq!(
            err(LongRopeConfig { factors: f(vec![1.0, f64::INFINITY]), ..Default::default() }),
            "longrope.factors[1]: inf is not a finite number"
        );
        assert!(err(LongRopeConfig { factors: f(vec![1.0, 2.0]), factor: Some(0.5), ..Default::default() })
            .starts_with("longrope.factor: 0.5 is below the minimum 1"));
        assert!(err(LongRopeConfig {
            factors: f(vec![1.0, 2.0]),
            factors_file: Some("x.csv".into()),
            ..Default::default()
        })
        .contains("not both"));
        let short = RopeShape { max_position_embeddings: 50, ..sh.clone() };
        let e = LongRopeConfig { factors: f(vec![1.0, 2.0]), ..Default::default() }.build_longrope(&short).unwrap_err();
        assert!(e.to_string().contains("target context 50 is shorter than the original context 100"), "{e}");
    }
}
