//! `powerlaw`: an example third-party scaling method, shipped as a shared library (`cdylib`).
//!
//! A per-dimension schedule between the two extremes of the field: dimension pair `i` of `d/2` has its
//! wavelength stretched by
//!
//! `lambda_i = 1 + (s - 1) * (i / (d/2 - 1))^p`,   `inv_freq_i = b^(-2i/d) / lambda_i`,
//!
//! so the fastest rotation (`i = 0`) is untouched, the slowest (`i = d/2 - 1`) is interpolated by the full
//! factor `s` (as in Position Interpolation, arXiv 2306.15595), and the exponent `p` sets how fast the
//! stretch grows in between (`p = 1` is linear in the dimension index; larger `p` keeps more high-frequency
//! dimensions close to the original, the intuition behind NTK-by-parts and LongRoPE's monotone factors,
//! arXiv 2402.13753 Sec. 3.2). No built-in method has this schedule. Cos and sin are multiplied by
//! `attn_factor` (default 1).
//!
//! Parameters (TOML, beside `method = "powerlaw"`; unknown fields are refused):
//! - `factor` (default `L'/L`): the stretch `s >= 1` of the slowest dimension;
//! - `p` (default 2): the exponent, finite and `> 0`;
//! - `attn_factor` (default 1): finite and `> 0`.

use longrope_plugin_abi::ffi::RopeContext;
use longrope_plugin_abi::{export_scaling_plugin, ScalingPlugin, TablesMut};
use serde::{Deserialize, Serialize};

/// The parameters as the user writes them (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    factor: Option<f64>,
    p: Option<f64>,
    attn_factor: Option<f64>,
}

/// The power-law schedule with every default resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerLaw {
    /// The stretch `s` of the slowest dimension.
    pub factor: f64,
    /// The exponent `p`.
    pub p: f64,
    /// The attention factor applied to cos and sin.
    pub attn_factor: f64,
}

impl PowerLaw {
    /// The rescale factors `lambda_i`, `i = 0 .. head_dim/2`.
    pub fn lambdas(&self, head_dim: usize) -> Vec<f64> {
        let half = head_dim / 2;
        let last = half.saturating_sub(1).max(1) as f64;
        (0..half).map(|i| 1.0 + (self.factor - 1.0) * (i as f64 / last).powf(self.p)).collect()
    }
}

impl ScalingPlugin for PowerLaw {
    fn new(ctx: &RopeContext, params: &str) -> Result<Self, String> {
        let params: Params = serde_json::from_str(params).map_err(|e| format!("powerlaw parameters: {e}"))?;
        if ctx.original_max_position_embeddings == 0 {
            return Err("powerlaw: original_max_position_embeddings must be positive".into());
        }
        let default_factor = ctx.max_position_embeddings as f64 / ctx.original_max_position_embeddings as f64;
        let method = PowerLaw {
            factor: params.factor.unwrap_or(default_factor),
            p: params.p.unwrap_or(2.0),
            attn_factor: params.attn_factor.unwrap_or(1.0),
        };
        if !(method.factor.is_finite() && method.factor >= 1.0) {
            return Err(format!("powerlaw.factor must be finite and >= 1, got {}", method.factor));
        }
        if !(method.p.is_finite() && method.p > 0.0) {
            return Err(format!("powerlaw.p must be finite and > 0, got {}", method.p));
        }
        if !(method.attn_factor.is_finite() && method.attn_factor > 0.0) {
            return Err(format!("powerlaw.attn_factor must be finite and > 0, got {}", method.attn_factor));
        }
        Ok(method)
    }

    fn resolved_params(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    fn tables(&self, ctx: &RopeContext, out: &mut TablesMut<'_>) -> Result<(), String> {
        // `out.inv_freq` arrives holding the unscaled b^(-2i/d).
        for (f, lambda) in out.inv_freq.iter_mut().zip(self.lambdas(ctx.head_dim)) {
            *f /= lambda;
        }
        out.attn_factor = self.attn_factor;
        Ok(())
    }
}

export_scaling_plugin!(
    PowerLaw,
    "powerlaw",
    "Power-law per-dimension stretch 1+(s-1)(i/(d/2-1))^p (example dynamic plugin)"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> RopeContext {
        RopeContext {
            head_dim: 8,
            rope_base: 10_000.0,
            original_max_position_embeddings: 4096,
            max_position_embeddings: 16384,
            num_layers: 2,
            seq_len: 0,
            layer: 0,
        }
    }

    #[test]
    fn defaults_resolve_from_the_shape() {
        let m = PowerLaw::new(&ctx(), "{}").unwrap();
        assert_eq!(m, PowerLaw { factor: 4.0, p: 2.0, attn_factor: 1.0 });
        assert_eq!(m.resolved_params(), r#"{"factor":4.0,"p":2.0,"attn_factor":1.0}"#);
    }

    #[test]
    fn lambdas_follow_the_power_law() {
        // d/2 = 4, s = 4, p = 2: 1 + 3 * (i/3)^2 = 1, 4/3, 7/3, 4.
        let m = PowerLaw::new(&ctx(), "{}").unwrap();
        let l = m.lambdas(8);
        assert_eq!(l[0], 1.0);
        assert!((l[1] - 4.0 / 3.0).abs() < 1e-15 && (l[2] - 7.0 / 3.0).abs() < 1e-15, "{l:?}");
        assert_eq!(l[3], 4.0);
        // p = 1 is linear: 1, 2, 3, 4.
        assert_eq!(PowerLaw { p: 1.0, ..m }.lambdas(8), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(PowerLaw::new(&ctx(), r#"{"p": -1}"#).unwrap_err(), "powerlaw.p must be finite and > 0, got -1");
        assert!(PowerLaw::new(&ctx(), r#"{"factor": 0.5}"#).unwrap_err().contains("powerlaw.factor"));
        assert!(PowerLaw::new(&ctx(), r#"{"q": 1}"#).unwrap_err().contains("unknown field `q`"));
    }
}
