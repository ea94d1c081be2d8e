//! Validation helpers shared by every method: finite numbers, lower and upper bounds (the upper ones from
//! `longrope_core::limits`), and the scale `s` with its default.

use longrope_core::limits::MAX_SCALE;
use longrope_core::RopeShape;

use crate::error::{Result, ScalingError};

/// `value` if it is finite, else [`ScalingError::NonFinite`] naming `field`.
pub(crate) fn finite(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ScalingError::NonFinite { field: field.to_string(), value })
    }
}

/// `value` if it is finite and `>= min`, else a typed error naming `field` and `why` the method needs it.
pub(crate) fn at_least(field: &str, value: f64, min: f64, why: &str) -> Result<f64> {
    finite(field, value)?;
    if value < min {
        return Err(ScalingError::BelowMinimum { field: field.to_string(), value, min, why: why.to_string() });
    }
    Ok(value)
}

/// `value` if it is `<= max`, else an error naming `field`, the bound and `why`.
pub(crate) fn at_most(field: &str, value: f64, max: f64, why: &str) -> Result<f64> {
    if value > max {
        let (value, max) = (longrope_core::limits::show(value), longrope_core::limits::show(max));
        return Err(ScalingError::invalid(field, format!("{value} is above the maximum {max} ({why})")));
    }
    Ok(value)
}

/// `value` if it is finite and `> 0`.
pub(crate) fn positive(field: &str, value: f64) -> Result<f64> {
    finite(field, value)?;
    if value <= 0.0 {
        return Err(ScalingError::invalid(field, format!("{value} must be > 0")));
    }
    Ok(value)
}

/// `value` if it is finite, `> 0` and `<= max`.
pub(crate) fn positive_at_most(field: &str, value: f64, max: f64, why: &str) -> Result<f64> {
    positive(field, value)?;
    at_most(field, value, max, why)
}

/// An explicit scale `factor`: finite, `>= 1`, `<= MAX_SCALE` (larger ones underflow the model's f32 tables).
pub(crate) fn factor(field: &str, value: f64) -> Result<f64> {
    at_least(field, value, 1.0, "a scale below 1 would shrink the context")?;
    at_most(field, value, MAX_SCALE, "larger scales underflow the model's f32 frequencies to 0")
}

/// An optional explicit `factor` of `method` (see [`factor`]).
pub(crate) fn factor_opt(method: &str, value: Option<f64>) -> Result<()> {
    if let Some(f) = value {
        factor(&format!("{method}.factor"), f)?;
    }
    Ok(())
}

/// Check the shape itself (even head_dim, base > 1 ...) before a method uses it.
pub(crate) fn shape(shape: &RopeShape) -> Result<()> {
    shape.validate()?;
    Ok(())
}

/// The scale `s` of a method: the explicit `factor` (checked `>= 1`), else `L'/L` from the shape (which must
/// then be `>= 1`).
pub(crate) fn scale(method: &str, factor: Option<f64>, shape: &RopeShape) -> Result<f64> {
    match factor {
        Some(f) => self::factor(&format!("{method}.factor"), f),
        None => {
            let s = shape.scale();
            if s < 1.0 {
                return Err(ScalingError::ScaleBelowOne {
                    method: method.to_string(),
                    target: shape.max_position_embeddings,
                    original: shape.original_max_position_embeddings,
                    scale: s,
                });
            }
            Ok(s)
        }
    }
}
