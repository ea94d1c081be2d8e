//! Validation helpers shared by every method: finite numbers, lower bounds, and the scale `s` with its default.

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

/// `value` if it is finite and `> 0`.
pub(crate) fn positive(field: &str, value: f64) -> Result<f64> {
    finite(field, value)?;
    if value <= 0.0 {
        return Err(ScalingError::invalid(field, format!("{value} must be > 0")));
    }
    Ok(value)
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
        Some(f) => at_least(&format!("{method}.factor"), f, 1.0, "a scale below 1 would shrink the context"),
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
