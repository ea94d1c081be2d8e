//! Bounds on numeric inputs: what is physically meaningful for a context length, a RoPE scale, a head
//! dimension ... and the checks every config, shape and table goes through.
//!
//! A value outside these bounds is refused with an error naming the field (and, through the caller, the file)
//! before anything is computed, instead of overflowing to `inf`, underflowing to 0 in the model's `f32` cos/sin
//! tables (a factor of `1e308`), or aborting the process on an allocation (a head dimension of `1e11`).
//! The bounds are generous: every published model and extension sits far inside them.

use crate::{Error, Result};

/// Longest context (tokens) a length, a target `L'` or a trained context `L` may have: 2^24 = 16,777,216
/// (LongRoPE's 2048k is 2^21).
pub const MAX_CONTEXT: usize = 1 << 24;
/// Shortest evaluation length in tokens.
pub const MIN_EVAL_LENGTH: usize = 8;
/// Largest RoPE scale `s = L'/L` or rescale factor `lambda`: 2^16. Beyond it a frequency of the lowest band
/// turns by less than 1e-9 rad per token at any base a model uses, and `f32` tables lose it.
pub const MAX_SCALE: f64 = 65536.0;
/// Largest attention head dimension: 2^13 (models use 64 to 256).
pub const MAX_HEAD_DIM: usize = 1 << 13;
/// Largest number of layers: 2^12.
pub const MAX_LAYERS: usize = 1 << 12;
/// Largest RoPE base (HF `rope_theta`): 1e12 (models use 1e4 to 1e8).
pub const MAX_ROPE_BASE: f64 = 1e12;
/// Largest attention factor `m` (cos and sin are multiplied by it; logits by `m^2`): 100.
pub const MAX_ATTN_FACTOR: f64 = 100.0;
/// Most documents or samples one evaluator entry may ask for per length: 2^20 (the per-sample results of a
/// larger count would not fit in memory; evaluations use 1 to 1000).
pub const MAX_SAMPLES: usize = 1 << 20;
/// Smallest inverse frequency a table may hold: `f32::MIN_POSITIVE` (below it the model's `f32` angles are 0
/// or subnormal and the dimension silently stops rotating).
pub const MIN_INV_FREQ: f64 = f32::MIN_POSITIVE as f64;
/// Largest inverse frequency (rad per position) a table may hold: 2^16 (the unscaled largest is 1).
pub const MAX_INV_FREQ: f64 = 65536.0;

/// A number as errors show it: plain when moderate, in exponent form when huge or tiny (`1e308`, not 309
/// digits).
pub fn show(v: f64) -> String {
    if v != 0.0 && v.is_finite() && (v.abs() >= 1e15 || v.abs() < 1e-4) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `value` if `min <= value <= max`, else [`Error::Invalid`] naming `field`, the value, the bounds and `why`.
pub fn int_in(field: &str, value: usize, min: usize, max: usize, why: &str) -> Result<usize> {
    if value < min || value > max {
        return Err(Error::invalid(field, format!("{value} is outside [{min}, {max}] ({why})")));
    }
    Ok(value)
}

/// `value` if it is finite and `min <= value <= max`, else [`Error::Invalid`] naming `field`.
pub fn float_in(field: &str, value: f64, min: f64, max: f64, why: &str) -> Result<f64> {
    if !value.is_finite() {
        return Err(Error::invalid(field, format!("{value} is not a finite number")));
    }
    if value < min || value > max {
        return Err(Error::invalid(field, format!("{} is outside [{}, {}] ({why})", show(value), show(min), show(max))));
    }
    Ok(value)
}

/// A context length (an evaluation length, a target `L'`): within `[min, MAX_CONTEXT]`.
pub fn context(field: &str, value: usize, min: usize) -> Result<usize> {
    int_in(field, value, min, MAX_CONTEXT, "a context length in tokens")
}

/// A RoPE scale or rescale factor: finite, within `[min, MAX_SCALE]`.
pub fn scale(field: &str, value: f64, min: f64) -> Result<f64> {
    float_in(field, value, min, MAX_SCALE, "a RoPE scale; larger ones underflow the model's f32 tables")
}

/// No value may appear twice in `values` (lengths, seeds): a repeat would compute and report the same row twice.
pub fn distinct<T: PartialEq + std::fmt::Display>(field: &str, values: &[T]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(Error::invalid(field, format!("{v} appears more than once; give each value once")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field_and_the_range() {
        assert_eq!(context("lengths", 512, 8).unwrap(), 512);
        let e = context("target", 0, 1).unwrap_err().to_string();
        assert_eq!(e, "invalid target: 0 is outside [1, 16777216] (a context length in tokens)");
        let e = scale("pi.factor", 1e308, 1.0).unwrap_err().to_string();
        assert!(e.starts_with("invalid pi.factor: 1e308 is outside [1, 65536]"), "{e}");
        assert!(scale("f", f64::NAN, 1.0).unwrap_err().to_string().contains("not a finite number"));
        let e = distinct("lengths", &[64, 128, 64]).unwrap_err().to_string();
        assert_eq!(e, "invalid lengths: 64 appears more than once; give each value once");
        assert!(distinct("seeds", &[1u64, 2]).is_ok());
    }
}
