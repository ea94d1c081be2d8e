//! The typed error of `longrope-scaling`: what can be wrong with a scaling config, a factor file or an export.
//!
//! Every variant names the field (`yarn.beta_fast`, `longrope.factors[3]`) or the file and line at fault.
//! [`ScalingError`] converts into [`longrope_core::Error`] (the error type of the core traits) keeping its
//! message, so `ScalingConfig::build` callers see the same text.

use std::path::PathBuf;

/// Result alias of the scaling crate.
pub type Result<T, E = ScalingError> = std::result::Result<T, E>;

/// Everything that can go wrong when building a scaling method or reading/writing its factors.
#[derive(Debug, thiserror::Error)]
pub enum ScalingError {
    /// A number that must be finite is NaN or infinite.
    #[error("{field}: {value} is not a finite number")]
    NonFinite {
        /// The field (`pi.factor`, `longrope.factors[3]` ...).
        field: String,
        /// The offending value.
        value: f64,
    },
    /// A number below the smallest value the method allows (`factor` < 1, a LongRoPE factor < 1 ...).
    #[error("{field}: {value} is below the minimum {min} ({why})")]
    BelowMinimum {
        /// The field.
        field: String,
        /// The offending value.
        value: f64,
        /// The smallest value allowed.
        min: f64,
        /// Why the method forbids it.
        why: String,
    },
    /// The extension ratio `s = L'/L` taken from the shape is below 1 (a target shorter than the original).
    #[error("{method}: the target context {target} is shorter than the original context {original} (s = {scale} < 1); set a longer target or an explicit `factor`")]
    ScaleBelowOne {
        /// The method.
        method: String,
        /// `L'`.
        target: usize,
        /// `L`.
        original: usize,
        /// `L'/L`.
        scale: f64,
    },
    /// A list of factors with the wrong length or the wrong number of rows.
    #[error("{field}: expected {expected} {unit}, got {got}")]
    WrongCount {
        /// The field or file (`longrope.factors`, `longrope.factors[2]`, a CSV path).
        field: String,
        /// How many were expected.
        expected: usize,
        /// How many there are.
        got: usize,
        /// What is counted (`factors (head_dim/2)`, `rows (one per layer)`).
        unit: String,
    },
    /// A required field is absent.
    #[error("{method}: missing field `{field}` ({hint})")]
    MissingField {
        /// The method.
        method: String,
        /// The missing field.
        field: String,
        /// What to write instead.
        hint: String,
    },
    /// Fields that contradict each other, or a value the method cannot use.
    #[error("{field}: {message}")]
    Invalid {
        /// The field(s).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A LongRoPE factor CSV that does not parse.
    #[error("{path}:{line}: {message}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong on that line.
        message: String,
    },
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error of the core (shape validation, tables).
    #[error(transparent)]
    Core(#[from] longrope_core::Error),
}

impl ScalingError {
    /// Shorthand for [`ScalingError::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ScalingError::Invalid { field: field.into(), message: message.into() }
    }

    /// Shorthand for [`ScalingError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ScalingError::Io { path: path.into(), source }
    }
}

impl From<ScalingError> for longrope_core::Error {
    /// Core errors and I/O errors keep their variant; the rest become [`longrope_core::Error::Invalid`]
    /// (`invalid scaling config: <this error's message>`).
    fn from(e: ScalingError) -> Self {
        match e {
            ScalingError::Core(e) => e,
            ScalingError::Io { path, source } => longrope_core::Error::Io { path, source },
            other => longrope_core::Error::invalid("scaling config", other.to_string()),
        }
    }
}
