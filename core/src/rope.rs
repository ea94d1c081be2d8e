//! Rotary position embedding (RoPE) tables: the plain data that flows from a scaling method to a model.
//!
//! RoPE (Su et al., arXiv 2104.09864) rotates each pair of query/key channels `i` at position `n` by the angle
//! `n * inv_freq[i]`, with `inv_freq[i] = base^(-2i/d)` for `i = 0 .. d/2`. Every context-extension method of
//! the field (PI, NTK, YaRN, Llama-3, LongRoPE ...) is a rule that rescales `inv_freq` (LongRoPE's
//! `theta_i / lambda_i`), optionally multiplies cos/sin by an attention factor `m` (so the attention logits
//! scale by `m^2`), and, for LongRoPE (arXiv 2402.13753, Eq. 3), keeps the original tables for the first
//! `n_hat` positions. A method never touches model tensors; a model never knows which method is in use.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What is fixed about a model and an extension: the inputs every scaling method validates against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeShape {
    /// Dimension of one attention head `d`; tables hold `d/2` frequencies.
    pub head_dim: usize,
    /// RoPE base `b` (HF `rope_theta`).
    pub rope_base: f64,
    /// The context the model was trained on, `L` (HF `original_max_position_embeddings`).
    pub original_max_position_embeddings: usize,
    /// The target context `L'` (HF `max_position_embeddings` of the extended model).
    pub max_position_embeddings: usize,
    /// Number of transformer layers (for per-layer factors).
    pub num_layers: usize,
}

impl RopeShape {
    /// The extension ratio `s = L' / L`.
    pub fn scale(&self) -> f64 {
        self.max_position_embeddings as f64 / self.original_max_position_embeddings as f64
    }

    /// The unscaled inverse frequencies `b^(-2i/d)`, `i = 0 .. d/2`.
    pub fn base_inv_freq(&self) -> Vec<f64> {
        base_inv_freq(self.head_dim, self.rope_base)
    }

    /// Check the shape itself against [`crate::limits`]: an even head_dim in `[2, MAX_HEAD_DIM]`, a base in
    /// `(1, MAX_ROPE_BASE]`, contexts in `[1, MAX_CONTEXT]` with `L'/L <= MAX_SCALE`, layers in
    /// `[1, MAX_LAYERS]`. Nothing is allocated from a shape before it passes.
    pub fn validate(&self) -> Result<()> {
        use crate::limits;
        limits::int_in("head_dim", self.head_dim, 2, limits::MAX_HEAD_DIM, "the dimension of one attention head")?;
        if self.head_dim % 2 != 0 {
            return Err(Error::invalid("head_dim", format!("must be even, got {}", self.head_dim)));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0 && self.rope_base <= limits::MAX_ROPE_BASE) {
            return Err(Error::invalid(
                "rope_base",
                format!("{} is outside (1, {:e}] (the RoPE base, HF rope_theta)", limits::show(self.rope_base), limits::MAX_ROPE_BASE),
            ));
        }
        limits::context("original_max_position_embeddings", self.original_max_position_embeddings, 1)?;
        limits::context("max_position_embeddings (target context)", self.max_position_embeddings, 1)?;
        if self.scale() > limits::MAX_SCALE {
            return Err(Error::invalid(
                "max_position_embeddings (target context)",
                format!(
                    "{} is {}x the original context {}, more than the largest scale {}",
                    self.max_position_embeddings,
                    self.scale(),
                    self.original_max_position_embeddings,
                    limits::MAX_SCALE
                ),
            ));
        }
        limits::int_in("num_layers", self.num_layers, 1, limits::MAX_LAYERS, "the number of transformer layers")?;
        Ok(())
    }

    /// The context of one forward: this shape at sequence length `seq_len` and layer `layer`.
    pub fn at(&self, seq_len: usize, layer: usize) -> RopeContext {
        RopeContext { shape: self.clone(), seq_len, layer }
    }
}

/// The unscaled RoPE inverse frequencies `1 / base^(2i/d)` for `i = 0 .. d/2`, computed in f64 (HF's form).
pub fn base_inv_freq(head_dim: usize, rope_base: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / rope_base.powf((2 * i) as f64 / head_dim as f64)).collect()
}

/// The full context of one table request: the shape plus the current sequence length and the layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeContext {
    /// Model and extension shape.
    #[serde(flatten)]
    pub shape: RopeShape,
    /// Current sequence length `l` (largest position + 1) of the forward being run.
    pub seq_len: usize,
    /// Layer index, `0 .. num_layers`.
    pub layer: usize,
}

/// Positions `< n_hat` keep these tables (LongRoPE's retained start tokens, the reference's `mixed` mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainedStart {
    /// Number of retained start positions `n_hat`.
    pub n_hat: usize,
    /// The inverse frequencies used for those positions (the original ones).
    pub inv_freq: Vec<f64>,
    /// The attention factor used for those positions (1.0 in the reference).
    pub attn_factor: f64,
}

/// The tables one layer uses for one forward: what a scaling method produces and a model consumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeTables {
    /// Inverse frequencies, `d/2` values (rad per position).
    pub inv_freq: Vec<f64>,
    /// Multiplier `m` applied to cos and sin (attention logits scale by `m^2`).
    pub attn_factor: f64,
    /// Optional start-token rule: the first `n_hat` positions use other (original) tables.
    pub retained: Option<RetainedStart>,
}

impl RopeTables {
    /// Tables with the given inverse frequencies and attention factor and no start-token rule.
    pub fn new(inv_freq: Vec<f64>, attn_factor: f64) -> Self {
        RopeTables { inv_freq, attn_factor, retained: None }
    }

    /// The model's own RoPE for a shape: unscaled frequencies, factor 1.
    pub fn original(shape: &RopeShape) -> Self {
        RopeTables::new(shape.base_inv_freq(), 1.0)
    }

    /// Cos and sin for the positions `positions` as row-major `[positions.len(), d/2]` f32 arrays,
    /// including the attention factor and the start-token rule. Angles are computed in f64 and rounded once.
    /// This is the slow host-side reference of what a model computes on its device.
    pub fn cos_sin(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            let (freqs, m) = match &self.retained {
                Some(r) if p < r.n_hat => (&r.inv_freq, r.attn_factor),
                _ => (&self.inv_freq, self.attn_factor),
            };
            for f in freqs {
                let a = p as f64 * f;
                cos.push((a.cos() * m) as f32);
                sin.push((a.sin() * m) as f32);
            }
        }
        (cos, sin)
    }

    /// Check that the tables fit a shape: `d/2` inverse frequencies in `[MIN_INV_FREQ, MAX_INV_FREQ]` (so none
    /// is lost to 0 in the model's `f32` tables) and an attention factor in `(0, MAX_ATTN_FACTOR]`.
    pub fn validate(&self, shape: &RopeShape) -> Result<()> {
        use crate::limits::{MAX_ATTN_FACTOR, MAX_INV_FREQ, MIN_INV_FREQ};
        let half = shape.head_dim / 2;
        let check = |what: &str, inv: &[f64], m: f64| -> Result<()> {
            if inv.len() != half {
                return Err(Error::invalid(what, format!("expected {half} inverse frequencies, got {}", inv.len())));
            }
            if let Some(i) = inv.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(Error::invalid(what, format!("inv_freq[{i}] = {} is not finite and positive", inv[i])));
            }
            if let Some(i) = inv.iter().position(|v| !(MIN_INV_FREQ..=MAX_INV_FREQ).contains(v)) {
                return Err(Error::invalid(
                    what,
                    format!(
                        "inv_freq[{i}] = {:e} is outside [{MIN_INV_FREQ:e}, {MAX_INV_FREQ}] (the model computes angles in f32: \
                         this dimension would stop rotating or alias); the scaling factors are out of range",
                        inv[i]
                    ),
                ));
            }
            if !(m.is_finite() && m > 0.0 && m <= MAX_ATTN_FACTOR) {
                return Err(Error::invalid(what, format!("attn_factor {m} is outside (0, {MAX_ATTN_FACTOR}]")));
            }
            Ok(())
        };
        check("rope tables", &self.inv_freq, self.attn_factor)?;
        if let Some(r) = &self.retained {
            check("retained start tables", &r.inv_freq, r.attn_factor)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> RopeShape {
        RopeShape {
            head_dim: 64,
            rope_base: 100_000.0,
            original_max_position_embeddings: 8192,
            max_position_embeddings: 16384,
            num_layers: 30,
        }
    }

    #[test]
    fn base_inv_freq_matches_formula() {
        let f = smollm2().base_inv_freq();
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        // b^(-2*31/64) = 1e5^(-0.96875)
        assert!((f[31] - 100_000f64.powf(-0.96875)).abs() < 1e-18);
        assert_eq!(smollm2().scale(), 2.0);
    }

    #[test]
    fn cos_sin_applies_factor_and_retained_start() {
        let shape = RopeShape { head_dim: 4, rope_base: 10_000.0, ..smollm2() };
        let mut t = RopeTables::new(vec![0.5, 0.25], 2.0);
        t.retained = Some(RetainedStart { n_hat: 1, inv_freq: vec![1.0, 0.01], attn_factor: 1.0 });
        t.validate(&shape).unwrap();
        let (c, s) = t.cos_sin(&[0, 2]);
        assert_eq!(c, vec![1.0, 1.0, (1.0f64.cos() * 2.0) as f32, (0.5f64.cos() * 2.0) as f32]);
        assert_eq!(s[0], 0.0);
        assert_eq!(s[2], (1.0f64.sin() * 2.0) as f32);
    }

    #[test]
    fn validate_rejects_bad_tables() {
        let shape = smollm2();
        assert!(RopeTables::new(vec![1.0; 31], 1.0).validate(&shape).is_err());
        assert!(RopeTables::new(vec![f64::NAN; 32], 1.0).validate(&shape).is_err());
        assert!(RopeTables::new(vec![1.0; 32], 0.0).validate(&shape).is_err());
        assert!(RopeTables::original(&shape).validate(&shape).is_ok());
        // Positive and finite in f64 but 0 in the model's f32 tables (a factor of 1e308).
        let err = RopeTables::new(vec![1e-308; 32], 1.0).validate(&shape).unwrap_err().to_string();
        assert!(err.contains("inv_freq[0] = 1e-308 is outside"), "{err}");
        assert!(RopeTables::new(vec![1.0; 32], 1e9).validate(&shape).is_err());
    }

    #[test]
    fn absurd_shapes_are_refused_before_anything_is_allocated() {
        let ok = smollm2();
        ok.validate().unwrap();
        let err = RopeShape { head_dim: 100_000_000_000, ..ok.clone() }.validate().unwrap_err().to_string();
        assert!(err.starts_with("invalid head_dim: 100000000000 is outside [2, 8192]"), "{err}");
        assert!(RopeShape { head_dim: 63, ..ok.clone() }.validate().is_err());
        assert!(RopeShape { rope_base: 1e300, ..ok.clone() }.validate().unwrap_err().to_string().contains("rope_base"));
        assert!(RopeShape { max_position_embeddings: 0, ..ok.clone() }.validate().is_err());
        assert!(RopeShape { max_position_embeddings: 1 << 30, ..ok.clone() }.validate().is_err());
        assert!(RopeShape { original_max_position_embeddings: 1, max_position_embeddings: 1 << 20, ..ok.clone() }.validate().is_err());
        assert!(RopeShape { num_layers: 1 << 20, ..ok }.validate().is_err());
    }
}
